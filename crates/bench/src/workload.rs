//! The workloads. Each client is a task with its own connection slot and
//! random stream; a shared counter hands out request numbers until `total` is
//! reached or the time limit passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{
    request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};

use crate::keys::{key, value, Rng};
use crate::report::{histogram, Report};
use crate::{BenchConfig, BenchError};

/// Share of reads in the mixed workload, in percent.
const MIXED_READ_PERCENT: u64 = 80;
/// Attempts an optimistic update makes before it counts as an error.
const TXN_PUT_ATTEMPTS_MAX: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Put,
    Range,
    TxnPut,
    WatchLatency,
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::TxnPut => "txn-put",
            Workload::WatchLatency => "watch-latency",
            Workload::Mixed => "mixed",
        }
    }
}

async fn connect(config: &BenchConfig) -> Result<Vec<Channel>, BenchError> {
    if config.endpoints.is_empty() || config.conns == 0 || config.clients == 0 {
        return Err(BenchError::Invalid("need at least one endpoint, connection and client".into()));
    }
    let mut channels = Vec::with_capacity(config.conns);
    for i in 0..config.conns {
        let url = &config.endpoints[i % config.endpoints.len()];
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|source| BenchError::Connect { url: url.clone(), source })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let channel =
            endpoint.connect().await.map_err(|source| BenchError::Connect { url: url.clone(), source })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs one workload and reports what it measured.
pub async fn run(workload: Workload, config: &BenchConfig) -> Result<Report, BenchError> {
    let channels = connect(config).await?;
    if workload == Workload::WatchLatency {
        return watch_latency(config, &channels).await;
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + config.time_limit;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        let kv = KvClient::new(channels[client % channels.len()].clone());
        let config = config.clone();
        let issued = issued.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut rng = Rng::new(client as u64 + 1);
            let mut kv = kv;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= config.total || Instant::now() >= deadline {
                    break;
                }
                let k = if config.sequential_keys {
                    n % config.key_space_size.max(1)
                } else {
                    rng.below(config.key_space_size)
                };
                let k = key(b"", k, config.key_size);
                let began = Instant::now();
                let ok = match workload {
                    Workload::Put => put(&mut kv, k, &config).await,
                    Workload::Range => range(&mut kv, k, &config).await,
                    Workload::TxnPut => txn_put(&mut kv, k, &config).await,
                    Workload::Mixed if rng.below(100) < MIXED_READ_PERCENT => {
                        range(&mut kv, k, &config).await
                    }
                    Workload::Mixed => put(&mut kv, k, &config).await,
                    Workload::WatchLatency => unreachable!("handled above"),
                };
                if ok {
                    let _ = latencies.record(began.elapsed().as_micros().max(1) as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut all = histogram();
    for task in tasks {
        let latencies = task.await.map_err(|e| BenchError::Invalid(e.to_string()))?;
        all.add(latencies).map_err(|e| BenchError::Invalid(e.to_string()))?;
    }
    Ok(Report::new(workload.name(), &all, errors.load(Ordering::Relaxed), started.elapsed()))
}

async fn put(kv: &mut KvClient<Channel>, key: Vec<u8>, config: &BenchConfig) -> bool {
    kv.put(PutRequest { key, value: value(config.val_size), ..Default::default() }).await.is_ok()
}

async fn range(kv: &mut KvClient<Channel>, key: Vec<u8>, config: &BenchConfig) -> bool {
    kv.range(RangeRequest { key, serializable: config.serializable, ..Default::default() }).await.is_ok()
}

/// Kubernetes' optimistic update: read the key, then write it only if its
/// mod revision is still what was read; on a conflict, read again.
async fn txn_put(kv: &mut KvClient<Channel>, key: Vec<u8>, config: &BenchConfig) -> bool {
    for _ in 0..TXN_PUT_ATTEMPTS_MAX {
        let Ok(read) = kv.range(RangeRequest { key: key.clone(), ..Default::default() }).await else {
            return false;
        };
        let seen = read.into_inner().kvs.first().map_or(0, |kv| kv.mod_revision);
        let compare = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::ModRevision(seen)),
        };
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value: value(config.val_size),
                ..Default::default()
            })),
        };
        let txn = TxnRequest { compare: vec![compare], success: vec![put], failure: Vec::new() };
        match kv.txn(txn).await {
            Ok(reply) if reply.get_ref().succeeded => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// W watchers on one prefix, one writer at a fixed rate; latency is from the
/// moment a put is sent to the moment each watcher has its event. Every
/// watcher must see every put: missing events are reported.
async fn watch_latency(config: &BenchConfig, channels: &[Channel]) -> Result<Report, BenchError> {
    const PREFIX: &[u8] = b"bench/watch/";
    let started = Instant::now();
    let deadline = started + config.time_limit;
    // Watchers share streams as etcd's clients share one per context:
    // `watch_streams` of them (0: a stream per watcher), over the connections.
    let streams =
        if config.watch_streams == 0 { config.watchers } else { config.watch_streams.min(config.watchers) };
    let mut watchers = Vec::with_capacity(streams);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(config.watchers.max(1));
    for s in 0..streams {
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        let on_stream = (config.watchers / streams + usize::from(s < config.watchers % streams)) as u64;
        let expected = config.total * on_stream;
        let ready = ready_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: PREFIX.to_vec(),
                    range_end: b"bench/watch0".to_vec(),
                    ..Default::default()
                })),
            };
            let creates = vec![create; on_stream as usize];
            let requests = tokio_stream::iter(creates).chain(tokio_stream::pending());
            let Ok(reply) = client.watch(requests).await else { return (latencies, 0u64) };
            let mut stream = reply.into_inner();
            let mut seen = 0u64;
            let mut created = 0;
            while seen < expected {
                let Ok(Ok(Some(message))) = tokio::time::timeout_at(deadline, stream.message()).await else {
                    break;
                };
                // A refused create (canceled) never counts as ready: the run
                // then fails with "watchers were not created in time".
                if message.created && !message.canceled && created < on_stream {
                    created += 1;
                    let _ = ready.send(()).await;
                }
                for event in &message.events {
                    let Some(kv) = &event.kv else { continue };
                    let sent_nanos = std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse::<u64>().ok());
                    if let Some(sent) = sent_nanos {
                        let now = started.elapsed().as_nanos() as u64;
                        let _ = latencies.record((now.saturating_sub(sent) / 1000).max(1));
                    }
                    seen += 1;
                }
            }
            (latencies, seen)
        }));
    }
    drop(ready_tx);
    for _ in 0..config.watchers {
        if tokio::time::timeout_at(deadline, ready_rx.recv()).await.is_err() {
            return Err(BenchError::Invalid("watchers were not created in time".into()));
        }
    }
    // The writer: one put per tick at the asked rate.
    let mut kv = KvClient::new(channels[0].clone());
    let period = Duration::from_nanos(1_000_000_000 / config.put_rate.max(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut errors = 0;
    for n in 0..config.total {
        ticker.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let sent = started.elapsed().as_nanos() as u64;
        let request = PutRequest {
            key: key(PREFIX, n, config.key_size),
            value: sent.to_string().into_bytes(),
            ..Default::default()
        };
        if kv.put(request).await.is_err() {
            errors += 1;
        }
    }
    let mut all = histogram();
    let mut delivered = 0;
    for watcher in watchers {
        let (latencies, seen) = watcher.await.map_err(|e| BenchError::Invalid(e.to_string()))?;
        delivered += seen;
        all.add(latencies).map_err(|e| BenchError::Invalid(e.to_string()))?;
    }
    let expected = (config.total - errors) * config.watchers as u64;
    let mut report = Report::new(Workload::WatchLatency.name(), &all, errors, started.elapsed());
    report.events_missing = Some(expected.saturating_sub(delivered));
    Ok(report)
}
