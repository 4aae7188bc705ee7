//! `fivefold bench`: etcd's benchmark workloads against any etcd v3 endpoints.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::store_cmd::parse_duration;

#[derive(Clone, Copy, ValueEnum)]
pub enum WorkloadArg {
    Put,
    Range,
    TxnPut,
    WatchLatency,
    Mixed,
    /// HTTP/1.1 GETs of --url over --conns connections (gateway, nginx, a backend).
    Http,
    /// A registry server's push latency: --subscribers watch streams, --changes registrations.
    RegistryPush,
    /// Root: put/get latency from each dc of a namespace WAN, fivefold against etcd.
    WanLatency,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[derive(Args)]
pub struct BenchArgs {
    /// put | range | txn-put | watch-latency | mixed | http | registry-push | wan-latency
    #[arg(value_enum)]
    pub workload: WorkloadArg,
    /// Client endpoints, comma-separated (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Requests in all (watch-latency: puts).
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// The run stops after this long even if --total is not reached.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub time_limit: Duration,
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Keys in order rather than at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Read consistency for range and mixed.
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// watch-latency: watchers on the prefix.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// watch-latency: puts per second.
    #[arg(long, default_value_t = 1_000)]
    pub put_rate: u64,
    /// watch-latency: gRPC streams the watchers share, as etcd clients share
    /// one per context (0: a stream per watcher).
    #[arg(long, default_value_t = 0)]
    pub watch_streams: usize,
    /// http: the URL to GET.
    #[arg(long, default_value = "http://127.0.0.1:8080/")]
    pub url: String,
    /// http: a request header, `name: value` (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// registry-push: the registry server (host:port).
    #[arg(long, default_value = "127.0.0.1:7379")]
    pub registry: String,
    /// registry-push: watch streams to open.
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// registry-push: registrations to push, one at a time.
    #[arg(long, default_value_t = 5)]
    pub changes: usize,
    /// wan-latency: timed operations per kind, dc and round.
    #[arg(long, default_value_t = 40)]
    pub samples: usize,
    /// wan-latency: rounds per system (alternating etcd, fivefold).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// wan-latency: the etcd server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd: std::path::PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let etcd_workload = match args.workload {
        WorkloadArg::Put => bench::Workload::Put,
        WorkloadArg::Range => bench::Workload::Range,
        WorkloadArg::TxnPut => bench::Workload::TxnPut,
        WorkloadArg::WatchLatency => bench::Workload::WatchLatency,
        WorkloadArg::Mixed => bench::Workload::Mixed,
        WorkloadArg::WanLatency => {
            let wan = crate::bench_wan::WanLatencyArgs {
                samples: args.samples,
                rounds: args.rounds,
                etcd: args.etcd,
            };
            return crate::bench_wan::run(wan).await;
        }
        WorkloadArg::RegistryPush => {
            let config = bench::registry::PushConfig {
                registry: args.registry.clone(),
                service: "bench-push".to_string(),
                subscribers: args.subscribers,
                changes: args.changes,
                time_limit: args.time_limit,
            };
            let report = bench::registry::run_push(&config).await.context("benchmark failed")?;
            return print_report(&report, args.json);
        }
        WorkloadArg::Http => {
            let mut headers = Vec::new();
            for header in &args.headers {
                let (name, value) = header
                    .split_once(':')
                    .with_context(|| format!("--header {header:?} is not `name: value`"))?;
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            let config = bench::http::HttpBenchConfig {
                url: args.url.clone(),
                headers,
                conns: args.conns,
                total: args.total,
                time_limit: args.time_limit,
            };
            let report = bench::http::run_http(&config).await.context("benchmark failed")?;
            return print_report(&report, args.json);
        }
    };
    let endpoints = args
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| if e.contains("://") { e.to_string() } else { format!("http://{e}") })
        .collect();
    let config = bench::BenchConfig {
        endpoints,
        conns: args.conns,
        clients: args.clients,
        total: args.total,
        time_limit: args.time_limit,
        key_size: args.key_size,
        val_size: args.val_size,
        key_space_size: args.key_space_size,
        sequential_keys: args.sequential_keys,
        serializable: matches!(args.consistency, Consistency::S),
        watchers: args.watchers,
        put_rate: args.put_rate,
        watch_streams: args.watch_streams,
    };
    let report = bench::run(etcd_workload, &config).await.context("benchmark failed")?;
    print_report(&report, args.json)
}

fn print_report(report: &bench::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
