//! What a run measured: throughput and latency percentiles, as a table for
//! people and JSON for scripts.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to a minute, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub qps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// For watch-latency: events each watcher should have had, and how many
    /// fewer were delivered in all (must be 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_missing: Option<u64>,
}

impl Report {
    pub fn new(workload: &str, latencies: &Histogram<u64>, errors: u64, elapsed: Duration) -> Report {
        let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
        let requests = latencies.len();
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Report {
            workload: workload.to_string(),
            requests,
            errors,
            seconds,
            qps: requests as f64 / seconds,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: latencies.max() as f64 / 1000.0,
            events_missing: None,
        }
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{}: {} requests ({} errors) in {:.2} s: {:.0} req/s\n  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.workload,
            self.requests,
            self.errors,
            self.seconds,
            self.qps,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms
        );
        if let Some(missing) = self.events_missing {
            out.push_str(&format!("  events missing: {missing}\n"));
        }
        out
    }
}
