//! The member's Prometheus metrics, and the plain HTTP endpoints etcd serves
//! on its client port beside gRPC: `GET /metrics`, `GET /health` and
//! `GET /version`.
//!
//! Metric names are etcd's where the meaning is the same (dashboards and
//! alerts written for etcd keep working); what etcd has no name for is
//! `fivefold_*`. Counters and histograms are atomics updated where the work
//! happens (the log writer, the state machine, the proposer, and
//! `run_leader_watch` for leader changes); gauges are read from the member's
//! state when scraped.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tonic::body::Body;

use crate::node::{on_pool, StoreNode};

/// Upper bounds of the disk latency buckets in seconds: 1 ms doubling to
/// about 8 s, etcd's buckets for the same histograms.
pub const DISK_BUCKETS: [f64; 14] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];

/// A latency histogram over [`DISK_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Not cumulative: an observation counts in the first bucket it fits
    /// (one atomic add); rendering sums them.
    buckets: [AtomicU64; DISK_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(bucket) = DISK_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in DISK_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}");
    }
}

/// What the member counts as it works.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Each `fdatasync` of the Raft log.
    pub wal_fsync: Histogram,
    /// Each durable commit of the state machine (writes and syncs the
    /// engine's pages; applies wait for it).
    pub backend_commit: Histogram,
    /// Each batch of committed entries applied, its commit included.
    pub apply: Histogram,
    /// Leaders this member has seen take over.
    pub leader_changes: AtomicU64,
    /// Proposal batches that failed or whose outcome is unknown.
    pub proposals_failed: AtomicU64,
    /// Write batches this follower sent to the leader on raft streams.
    pub forwards_on_streams: AtomicU64,
    /// Write batches this follower sent to the leader with `Peer.Propose`
    /// (a leader that does not take them on streams).
    pub forwards_on_grpc: AtomicU64,
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

impl StoreNode {
    /// The Prometheus text exposition of this member's metrics.
    pub async fn render_metrics(&self) -> String {
        let (leader, term, applied) = {
            let raft = self.raft.metrics();
            let raft = raft.borrow();
            (raft.current_leader, raft.current_term, raft.last_applied.map_or(0, |id| id.index))
        };
        let committed = self.raft.with_raft_state(|state| state.committed.map_or(0, |id| id.index)).await;
        // Both held in memory: no engine read on this async worker.
        let (revision, compacted) = (self.mvcc.revision(), self.watch_hub.compacted());
        let m = &self.metrics;
        let mut out = String::with_capacity(4096);
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether a leader exists (1) or not (0).",
            u8::from(leader.is_some()),
        );
        gauge(
            &mut out,
            "etcd_server_is_leader",
            "Whether this member is the leader (1) or not (0).",
            u8::from(leader == Some(self.member_id)),
        );
        counter(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "Leader changes this member has seen.",
            m.leader_changes.load(Ordering::Relaxed),
        );
        gauge(&mut out, "fivefold_raft_term", "The Raft term this member is in.", term);
        gauge(
            &mut out,
            "etcd_server_proposals_committed_total",
            "The index of the last committed log entry this member knows.",
            committed.unwrap_or(0),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_applied_total",
            "The index of the last log entry this member applied.",
            applied,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_pending",
            "Writes waiting for this leader's next proposal batch.",
            self.proposer.queued(),
        );
        counter(
            &mut out,
            "etcd_server_proposals_failed_total",
            "Proposal batches that failed or whose outcome is unknown.",
            m.proposals_failed.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP fivefold_forwarded_batches_total Write batches this member forwarded to the leader, by transport.\n\
             # TYPE fivefold_forwarded_batches_total counter\n\
             fivefold_forwarded_batches_total{{transport=\"stream\"}} {}\n\
             fivefold_forwarded_batches_total{{transport=\"grpc\"}} {}",
            m.forwards_on_streams.load(Ordering::Relaxed),
            m.forwards_on_grpc.load(Ordering::Relaxed),
        );
        gauge(&mut out, "etcd_debugging_mvcc_current_revision", "The store's current revision.", revision);
        gauge(
            &mut out,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction.",
            compacted,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Size of the backend database file, in bytes.",
            self.mvcc.db_size(),
        );
        m.wal_fsync.render(&mut out, "etcd_disk_wal_fsync_duration_seconds", "Raft log fdatasync latency.");
        m.backend_commit.render(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "Latency of the state machine's durable commits.",
        );
        m.apply.render(
            &mut out,
            "fivefold_apply_duration_seconds",
            "Latency of applying one batch of committed entries, its engine commit included.",
        );
        out
    }

    /// Counts leader changes as this member sees them; runs until it stops.
    pub async fn run_leader_watch(self: Arc<Self>) {
        // Server metrics: they change with the leader, not with every write.
        let mut metrics = self.raft.server_metrics();
        let mut leader = metrics.borrow_and_update().current_leader;
        while metrics.changed().await.is_ok() {
            let now = metrics.borrow_and_update().current_leader;
            if now.is_some() && now != leader {
                self.metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
            leader = now;
        }
    }

    /// etcd's `/health`: healthy when there is a leader, no alarm is raised,
    /// and a linearizable read goes through.
    async fn health(&self) -> (StatusCode, String) {
        let mvcc = self.mvcc.clone();
        let alarms = || async { on_pool(move || mvcc.alarms()).await.ok().and_then(Result::ok) };
        let reason = if self.raft.metrics().borrow().current_leader.is_none() {
            Some("RAFT NO LEADER".to_string())
        } else if let Some(alarm) = alarms().await.and_then(|alarms| alarms.into_iter().next()) {
            Some(format!("ALARM {}", alarm_name(alarm.alarm)))
        } else if let Err(status) = self.read_barrier().await {
            Some(format!("READ FAILED: {}", status.message()))
        } else {
            None
        };
        match reason {
            None => (StatusCode::OK, "{\"health\":\"true\",\"reason\":\"\"}".to_string()),
            Some(reason) => {
                let reason = reason.replace('\\', "\\\\").replace('"', "\\\"");
                (StatusCode::SERVICE_UNAVAILABLE, format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}"))
            }
        }
    }
}

fn alarm_name(alarm: i32) -> &'static str {
    etcd_proto::etcdserverpb::AlarmType::try_from(alarm).map_or("UNKNOWN", |t| t.as_str_name())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// What a plain HTTP request on a client port asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Metrics,
    Health,
    Version,
    /// Any other HTTP/1 request (gRPC needs HTTP/2).
    NotFound,
}

/// The endpoint a request names; `None` for gRPC.
fn endpoint_of<B>(request: &Request<B>) -> Option<Endpoint> {
    let http1 = request.version() < http::Version::HTTP_2;
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => Some(Endpoint::Metrics),
        (&Method::GET, "/health") => Some(Endpoint::Health),
        (&Method::GET, "/version") => Some(Endpoint::Version),
        _ if http1 => Some(Endpoint::NotFound),
        _ => None,
    }
}

async fn serve_endpoint(node: Arc<StoreNode>, endpoint: Endpoint) -> Response<Body> {
    match endpoint {
        Endpoint::Metrics => {
            respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", node.render_metrics().await)
        }
        Endpoint::Health => {
            let (status, body) = node.health().await;
            respond(status, "application/json", body)
        }
        Endpoint::Version => {
            let version = crate::maintenance_service::ETCD_COMPATIBLE_VERSION;
            let cluster = version.rsplit_once('.').map_or(version, |(major_minor, _)| major_minor);
            let body = format!("{{\"etcdserver\":\"{version}\",\"etcdcluster\":\"{cluster}.0\"}}");
            respond(StatusCode::OK, "application/json", body)
        }
        Endpoint::NotFound => {
            respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n".into())
        }
    }
}

/// Puts the HTTP endpoints in front of the gRPC services on a client port.
#[derive(Clone)]
pub struct HttpEndpointsLayer {
    pub node: Arc<StoreNode>,
}

impl<S> tower::Layer<S> for HttpEndpointsLayer {
    type Service = HttpEndpoints<S>;

    fn layer(&self, inner: S) -> HttpEndpoints<S> {
        HttpEndpoints { inner, node: self.node.clone() }
    }
}

/// Answers `GET /metrics`, `/health` and `/version`; passes everything else on.
#[derive(Clone)]
pub struct HttpEndpoints<S> {
    inner: S,
    node: Arc<StoreNode>,
}

type EndpointFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

impl<S> tower::Service<Request<Body>> for HttpEndpoints<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Map<EndpointFuture, fn(Response<Body>) -> Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match endpoint_of(&request) {
            None => futures::future::Either::Left(self.inner.call(request)),
            Some(endpoint) => {
                let answer: EndpointFuture = Box::pin(serve_endpoint(self.node.clone(), endpoint));
                futures::future::Either::Right(futures::FutureExt::map(answer, Ok))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(20));
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "help");
        assert!(out.contains("# TYPE x_seconds histogram"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.002\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.004\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"8.192\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert!(out.contains("x_seconds_sum 20.0035\n"), "{out}");
    }

    #[test]
    fn gets_of_the_three_paths_are_endpoints_and_other_http1_is_not_found() {
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(endpoint_of(&get("/metrics")), Some(Endpoint::Metrics));
        assert_eq!(endpoint_of(&get("/health")), Some(Endpoint::Health));
        assert_eq!(endpoint_of(&get("/version")), Some(Endpoint::Version));
        assert_eq!(endpoint_of(&get("/nope")), Some(Endpoint::NotFound));
        assert_eq!(endpoint_of(&Request::post("/metrics").body(()).unwrap()), Some(Endpoint::NotFound));
        let grpc = Request::post("/etcdserverpb.KV/Range").version(http::Version::HTTP_2).body(()).unwrap();
        assert_eq!(endpoint_of(&grpc), None, "gRPC goes to the services");
    }
}
