//! Prometheus counters of the HTTP API, rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Kinds of line a watch stream pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    Snapshot,
    Upsert,
    Remove,
}

/// Counters of one server.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    subscribers: AtomicI64,
    pushes: [AtomicU64; 3],
    resubscriptions: AtomicU64,
    registrations: AtomicU64,
    heartbeats: AtomicU64,
    deregistrations: AtomicU64,
    /// (method, route template, status) → count. Templates are a fixed set
    /// (unmatched paths count as "unmatched"), so this stays small.
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn subscriber_opened(&self) {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn subscriber_closed(&self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn pushed(&self, push: Push) {
        bump(&self.pushes[push as usize]);
    }

    pub fn resubscribed(&self) {
        bump(&self.resubscriptions);
    }

    pub fn registered(&self) {
        bump(&self.registrations);
    }

    pub fn heartbeat(&self) {
        bump(&self.heartbeats);
    }

    pub fn deregistered(&self) {
        bump(&self.deregistrations);
    }

    pub fn request(&self, method: &str, template: &'static str, status: u16) {
        // Methods outside the standard set are one label value, not unbounded.
        const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];
        let method = KNOWN.into_iter().find(|known| *known == method).unwrap_or("OTHER");
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((method, template, status)).or_default() += 1;
    }

    /// The Prometheus text exposition; `catalog_revision` is the store revision
    /// the catalog reflects.
    pub fn render(&self, catalog_revision: i64) -> String {
        // Each family's HELP and TYPE, then its samples.
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);

        header(&mut out, "fivefold_registry_subscribers", "gauge", "Open watch streams.");
        let _ = writeln!(out, "fivefold_registry_subscribers {}", self.subscribers.load(Ordering::Relaxed));

        header(
            &mut out,
            "fivefold_registry_pushes_total",
            "counter",
            "Lines pushed to watch streams, by type.",
        );
        for (push, label) in
            [(Push::Snapshot, "snapshot"), (Push::Upsert, "upsert"), (Push::Remove, "remove")]
        {
            let _ = writeln!(
                out,
                "fivefold_registry_pushes_total{{type=\"{label}\"}} {}",
                load(&self.pushes[push as usize])
            );
        }

        header(
            &mut out,
            "fivefold_registry_resubscriptions_total",
            "counter",
            "Watch streams that fell behind and were sent a fresh snapshot.",
        );
        let _ = writeln!(out, "fivefold_registry_resubscriptions_total {}", load(&self.resubscriptions));

        header(
            &mut out,
            "fivefold_registry_registrations_total",
            "counter",
            "Instances registered through the HTTP API.",
        );
        let _ = writeln!(out, "fivefold_registry_registrations_total {}", load(&self.registrations));

        header(
            &mut out,
            "fivefold_registry_heartbeats_total",
            "counter",
            "Lease heartbeats that renewed a lease.",
        );
        let _ = writeln!(out, "fivefold_registry_heartbeats_total {}", load(&self.heartbeats));

        header(
            &mut out,
            "fivefold_registry_deregistrations_total",
            "counter",
            "Instances deregistered through the HTTP API.",
        );
        let _ = writeln!(out, "fivefold_registry_deregistrations_total {}", load(&self.deregistrations));

        header(
            &mut out,
            "fivefold_registry_catalog_revision",
            "gauge",
            "The store revision the catalog reflects.",
        );
        let _ = writeln!(out, "fivefold_registry_catalog_revision {catalog_revision}");

        header(
            &mut out,
            "fivefold_registry_http_requests_total",
            "counter",
            "HTTP requests by method, route and status.",
        );
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((method, route, status), count) in requests.iter() {
            let _ = writeln!(
                out,
                "fivefold_registry_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let metrics = Metrics::default();
        metrics.subscriber_opened();
        metrics.subscriber_opened();
        metrics.subscriber_closed();
        metrics.pushed(Push::Snapshot);
        metrics.pushed(Push::Upsert);
        metrics.pushed(Push::Upsert);
        metrics.registered();
        metrics.request("POST", "/v1/instances", 200);
        metrics.request("POST", "/v1/instances", 200);
        metrics.request("POST", "/v1/instances", 400);
        metrics.request("BREW", "unmatched", 404);
        let text = metrics.render(42);
        for line in [
            "# TYPE fivefold_registry_subscribers gauge",
            "fivefold_registry_subscribers 1",
            "fivefold_registry_pushes_total{type=\"snapshot\"} 1",
            "fivefold_registry_pushes_total{type=\"upsert\"} 2",
            "fivefold_registry_pushes_total{type=\"remove\"} 0",
            "fivefold_registry_registrations_total 1",
            "fivefold_registry_catalog_revision 42",
            "fivefold_registry_http_requests_total{method=\"POST\",route=\"/v1/instances\",status=\"200\"} 2",
            "fivefold_registry_http_requests_total{method=\"POST\",route=\"/v1/instances\",status=\"400\"} 1",
            "fivefold_registry_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"404\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE line");
        }
    }
}
