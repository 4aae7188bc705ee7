//! The load generator behind `fivefold bench`: etcd's benchmark workloads
//! (put, range, optimistic txn-put, watch latency, mixed) against any etcd v3
//! endpoint list, so the same run measures fivefold and etcd alike.
//!
//! Talks only the etcd v3 wire API (etcd-proto's generated clients); knows
//! nothing of fivefold's internals. Every run is bounded by a request count
//! and a time limit and stops by itself.
//!
//! Modules: `keys` (key and value shapes), `report` (latency histograms and
//! output), `workload` (the workloads), `http` (a closed-loop HTTP/1.1 load
//! generator for the gateway, nginx or a backend), `registry` (push latency of
//! a registry server to many watch subscribers).

pub mod http;
pub mod keys;
pub mod registry;
pub mod report;
pub mod workload;

use std::time::Duration;

pub use report::Report;
pub use workload::{run, Workload};

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// gRPC connections, spread over the endpoints.
    pub conns: usize,
    /// Concurrent clients, spread over the connections.
    pub clients: usize,
    /// Requests in all (for watch-latency: puts).
    pub total: u64,
    /// The run stops after this long even if `total` is not reached.
    pub time_limit: Duration,
    pub key_size: usize,
    pub val_size: usize,
    /// Keys are drawn from `0..key_space_size`.
    pub key_space_size: u64,
    /// Keys in order (0, 1, 2, ...) rather than at random.
    pub sequential_keys: bool,
    /// Linearizable (`false`) or serializable (`true`) reads.
    pub serializable: bool,
    /// watch-latency: watchers, and puts per second.
    pub watchers: usize,
    pub put_rate: u64,
    /// watch-latency: gRPC streams the watchers share (0: one each).
    pub watch_streams: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            conns: 1,
            clients: 1,
            total: 10_000,
            time_limit: Duration::from_secs(60),
            key_size: 8,
            val_size: 256,
            key_space_size: 1,
            sequential_keys: false,
            serializable: false,
            watchers: 100,
            put_rate: 1_000,
            watch_streams: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("connecting to {url}: {source}")]
    Connect { url: String, source: tonic::transport::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("request failed: {0}")]
    Request(#[from] tonic::Status),
}
