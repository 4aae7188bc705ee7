//! The write probe behind `up`'s RPO and RTO figures: while a city is cut, a
//! client beside each member writes distinct keys through that member, one at a
//! time, and remembers which writes were acknowledged. RTO is the time from the
//! cut to the first acknowledged write that began after it; RPO is how many
//! acknowledged writes a member lacks once the cut is healed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use etcd_proto::etcdserverpb::{StatusRequest, StatusResponse};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Keys of the probe; deleted after each audit.
pub const PROBE_PREFIX: &str = "fivefold/up-probe/";
/// Deadline of one probe write: also the resolution of the RTO figure while no
/// leader answers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two writes of one probe client (keeps the key count small
/// during a long cut: 50 writes/s per member).
const WRITE_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on a member answering the audit after healing.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(30);
const AUDIT_RETRY: Duration = Duration::from_millis(100);

/// One write of the probe.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Index of the member written through.
    pub member: usize,
    pub began: Instant,
    pub ended: Instant,
    /// The key, if the write was acknowledged.
    pub acked: Option<String>,
}

pub struct Probe {
    /// This probe's own key prefix (one per cut), so keys left by an earlier
    /// cut can never stand in for this one's writes.
    pub prefix: String,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// One Status call to the member at `url`, bounded by the probe's deadline.
pub async fn status(url: &str) -> Option<StatusResponse> {
    let mut client = MaintenanceClient::new(channel(url).ok()?);
    client.status(StatusRequest {}).await.ok().map(|reply| reply.into_inner())
}

/// A lazily connecting channel with the probe's deadlines.
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad URL {url}"))?
        .connect_timeout(WRITE_TIMEOUT)
        .timeout(WRITE_TIMEOUT)
        .connect_lazy())
}

impl Probe {
    /// Starts one writer per member URL.
    pub fn start(urls: &[String]) -> anyhow::Result<Probe> {
        let nonce =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let prefix = format!("{PROBE_PREFIX}{nonce}/");
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (member, url) in urls.iter().enumerate() {
            let client = KvClient::new(channel(url)?);
            let keys = format!("{prefix}{member}/");
            tasks.push(tokio::spawn(write_loop(member, keys, client, stop.clone(), attempts.clone())));
        }
        Ok(Probe { prefix, stop, attempts, tasks })
    }

    /// The first write acknowledged through one of `members` that began at or
    /// after `at`: the member and the time from `at` to its acknowledgement.
    pub fn first_ack_after(&self, at: Instant, members: &[usize]) -> Option<(usize, Duration)> {
        let attempts = self.attempts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        attempts
            .iter()
            .filter(|a| a.acked.is_some() && a.began >= at && members.contains(&a.member))
            .map(|a| (a.member, a.ended.duration_since(at)))
            .min_by_key(|(_, after)| *after)
    }

    /// Stops the writers after their write in flight and returns every attempt.
    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
        let attempts = self.attempts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        attempts.clone()
    }
}

async fn write_loop(
    member: usize,
    keys: String,
    mut client: KvClient<Channel>,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
) {
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        sequence += 1;
        let key = format!("{keys}{sequence:08}");
        let request =
            PutRequest { key: key.clone().into_bytes(), value: b"probe".to_vec(), ..Default::default() };
        let began = Instant::now();
        let ok = matches!(tokio::time::timeout(WRITE_TIMEOUT, client.put(request)).await, Ok(Ok(_)));
        let ended = Instant::now();
        let attempt = Attempt { member, began, ended, acked: ok.then_some(key) };
        attempts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(attempt);
        tokio::time::sleep_until(began + WRITE_INTERVAL).await;
    }
}

/// Keys read per page of the audit (a long cut leaves many).
const AUDIT_PAGE: i64 = 10_000;

/// The keys under `prefix` member `url` holds, read linearizably page by page
/// (waits, bounded, until the member answers).
async fn present_keys(url: &str, prefix: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut client = KvClient::new(channel(url)?);
    let deadline = Instant::now() + AUDIT_TIMEOUT;
    let mut present = BTreeSet::new();
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let range = RangeRequest {
            key: from.clone(),
            range_end: prefix_end(prefix),
            keys_only: true,
            limit: AUDIT_PAGE,
            ..Default::default()
        };
        match client.range(range).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let Some(last) = reply.kvs.last().map(|kv| kv.key.clone()) else { return Ok(present) };
                present.extend(reply.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).to_string()));
                if !reply.more {
                    return Ok(present);
                }
                from = last;
                from.push(0);
            }
            Err(status) if Instant::now() >= deadline => {
                anyhow::bail!(
                    "{url} did not answer within {AUDIT_TIMEOUT:?} of healing: {}",
                    status.message()
                )
            }
            Err(_) => tokio::time::sleep(AUDIT_RETRY).await,
        }
    }
}

/// For each member URL, how many of the `acked` keys it lacks.
pub async fn audit(urls: &[String], prefix: &str, acked: &BTreeSet<String>) -> anyhow::Result<Vec<usize>> {
    let mut missing = Vec::new();
    for url in urls {
        let present = present_keys(url, prefix).await?;
        missing.push(acked.iter().filter(|key| !present.contains(*key)).count());
    }
    Ok(missing)
}

/// Deletes the probe's keys (best effort through the first member that answers).
pub async fn clean(urls: &[String]) {
    for url in urls {
        let Ok(channel) = channel(url) else { continue };
        let request = DeleteRangeRequest {
            key: PROBE_PREFIX.as_bytes().to_vec(),
            range_end: prefix_end(PROBE_PREFIX),
            ..Default::default()
        };
        if KvClient::new(channel).delete_range(request).await.is_ok() {
            return;
        }
    }
}

/// The end of the range of keys that start with `prefix` (its last byte + 1).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    let last = end.last_mut().expect("a non-empty prefix");
    *last += 1;
    end
}
