//! Prometheus metrics per route and unit: requests by status class, refusals,
//! and a latency histogram (time to the upstream's response head).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Default)]
struct Series {
    requests: [AtomicU64; 5],
    /// Not cumulative: a request counts in the first bucket it fits (one
    /// atomic add); the exposition sums them.
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// The gateway's counters, by route then unit (looked up by `&str`: no
/// allocation per request once a series exists).
#[derive(Default)]
pub struct Metrics {
    series: RwLock<BTreeMap<String, BTreeMap<String, Arc<Series>>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    fn series(&self, route: &str, unit: &str) -> Arc<Series> {
        if let Some(series) =
            self.series.read().unwrap_or_else(|p| p.into_inner()).get(route).and_then(|units| units.get(unit))
        {
            return series.clone();
        }
        let mut all = self.series.write().unwrap_or_else(|p| p.into_inner());
        all.entry(route.to_string()).or_default().entry(unit.to_string()).or_default().clone()
    }

    /// One request answered with `status` after `latency`.
    pub fn record(&self, route: &str, unit: &str, status: u16, latency: Duration) {
        let series = self.series(route, unit);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        series.requests[class].fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            series.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        series.count.fetch_add(1, Ordering::Relaxed);
        series.sum_micros.fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let series = self.series.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP fivefold_gateway_requests_total Requests by route, unit and status class.\n");
        out.push_str("# TYPE fivefold_gateway_requests_total counter\n");
        let flat =
            || series.iter().flat_map(|(route, units)| units.iter().map(move |(unit, s)| (route, unit, s)));
        for (route, unit, s) in flat() {
            for (class, count) in CLASSES.iter().zip(&s.requests) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "fivefold_gateway_requests_total{{route=\"{route}\",unit=\"{unit}\",status=\"{class}\"}} {count}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP fivefold_gateway_request_seconds Time to the response head, by route and unit.\n",
        );
        out.push_str("# TYPE fivefold_gateway_request_seconds histogram\n");
        for (route, unit, s) in flat() {
            let labels = format!("route=\"{route}\",unit=\"{unit}\"");
            let mut cumulative = 0;
            for (bucket, bound) in s.buckets.iter().zip(LATENCY_BUCKETS) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "fivefold_gateway_request_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = s.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "fivefold_gateway_request_seconds_bucket{{{labels},le=\"+Inf\"}} {count}");
            let sum = s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "fivefold_gateway_request_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "fivefold_gateway_request_seconds_count{{{labels}}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_class_and_bucketed() {
        let metrics = Metrics::default();
        metrics.record("pay", "rz-hz-a", 200, Duration::from_micros(800));
        metrics.record("pay", "rz-hz-a", 503, Duration::from_millis(30));
        let text = metrics.render();
        assert!(
            text.contains("fivefold_gateway_requests_total{route=\"pay\",unit=\"rz-hz-a\",status=\"2xx\"} 1")
        );
        assert!(
            text.contains("fivefold_gateway_requests_total{route=\"pay\",unit=\"rz-hz-a\",status=\"5xx\"} 1")
        );
        assert!(text.contains("le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("fivefold_gateway_request_seconds_count{route=\"pay\",unit=\"rz-hz-a\"} 2"));
    }
}
