//! Faults any developer can run (no root): a five-member, three-city cluster on
//! loopback under concurrent reads, writes and compare-and-sets from clients
//! spread over every member, while the leader is killed or frozen. Each
//! scenario ends with:
//! - the linearizability verdict over the recorded history (testkit's checker);
//! - the acknowledged-write audit: every write whose success was returned is on
//!   every member after healing (RPO must be 0);
//! - HashKV identical on every member;
//! - RTO: time from the fault to the first acknowledged write, and to the first
//!   second in which at least 99% of the writes attempted succeeded.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, local_pairs_under, start, wait_same_revision};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use testkit::linearizability::{check, Input, Output, Recorder, Verdict};
use testkit::ClusterOptions;

const TEST_LIMIT: Duration = Duration::from_secs(150);
const WORKERS: u64 = 6;
/// Registers the history is checked on: few, so operations contend.
const REGISTERS: u64 = 4;
/// Deadline of one operation; a write past it has an unknown outcome.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const HEALTHY_BEFORE: Duration = Duration::from_secs(2);
const FAULT_LASTS: Duration = Duration::from_secs(5);
const HEALED_AFTER: Duration = Duration::from_secs(3);
const CHECK_BUDGET: Duration = Duration::from_secs(40);
/// The bar with LAN-sized timeouts (1 s election timeout): well under 5 s.
const RTO_MAX: Duration = Duration::from_secs(5);
const AUDIT_PREFIX: &str = "audit/";

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    PauseLeader,
}

struct Shared {
    stop: AtomicBool,
    recorder: Recorder,
    clients: Vec<Client>,
    /// Audit writes (unique keys) that were acknowledged.
    acked: Mutex<BTreeSet<String>>,
    /// Write attempts as (start, end, succeeded), for the RTO figures.
    writes: Mutex<Vec<(Instant, Instant, bool)>>,
    sequence: AtomicU64,
    /// Failed requests of any kind (a worker avoids the member it failed on).
    failures: AtomicU64,
}

fn register(n: u64) -> String {
    format!("reg/{n}")
}

/// How long a client first avoids a member after a request to it failed, as
/// etcd's client balancer does with an unhealthy endpoint; doubled on each
/// further failure, reset by a success.
const AVOID_FAILED_MEMBER: Duration = Duration::from_secs(2);
const AVOID_MAX: Duration = Duration::from_secs(16);

async fn worker(shared: Arc<Shared>, id: u64) {
    let mut step: u64 = 0;
    let mut last_read: Option<String> = None;
    let members = shared.clients.len();
    let mut avoid: Vec<Option<Instant>> = vec![None; members];
    let mut backoff: Vec<Duration> = vec![AVOID_FAILED_MEMBER; members];
    while !shared.stop.load(Ordering::SeqCst) {
        step += 1;
        let now = Instant::now();
        let member = (0..members)
            .map(|k| ((id + step) as usize + k) % members)
            .find(|m| avoid[*m].is_none_or(|until| now >= until))
            .unwrap_or(((id + step) as usize) % members);
        let mut client = shared.clients[member].clone();
        let mut failed = false;
        let key = register((id + step) % REGISTERS);
        let n = shared.sequence.fetch_add(1, Ordering::SeqCst);
        match step % 4 {
            0 => {
                let audit_key = format!("{AUDIT_PREFIX}{id}/{n}");
                let began = Instant::now();
                let result = tokio::time::timeout(OP_TIMEOUT, client.put(audit_key.clone(), "x", None)).await;
                let ok = matches!(result, Ok(Ok(_)));
                shared.writes.lock().unwrap().push((began, Instant::now(), ok));
                if ok {
                    shared.acked.lock().unwrap().insert(audit_key);
                } else {
                    failed = true;
                }
            }
            1 => {
                let invocation = shared.recorder.invoke(id, &key, Input::Get);
                match tokio::time::timeout(OP_TIMEOUT, client.get(key.clone(), None)).await {
                    Ok(Ok(response)) => {
                        let value =
                            response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).to_string());
                        last_read = value.clone();
                        shared.recorder.complete(invocation, Output::Value(value));
                    }
                    // A failed read changes nothing.
                    _ => {
                        shared.recorder.complete(invocation, Output::Unknown);
                        failed = true;
                    }
                }
            }
            2 => {
                let value = format!("w{id}-{n}");
                let invocation = shared.recorder.invoke(id, &key, Input::Put(value.clone()));
                let began = Instant::now();
                let result = tokio::time::timeout(OP_TIMEOUT, client.put(key.clone(), value, None)).await;
                let ok = matches!(result, Ok(Ok(_)));
                shared.writes.lock().unwrap().push((began, Instant::now(), ok));
                shared.recorder.complete(invocation, if ok { Output::Done } else { Output::Unknown });
                failed = !ok;
            }
            _ => {
                let Some(expected) = last_read.clone() else { continue };
                let new = format!("c{id}-{n}");
                let input = Input::Cas { expected: Some(expected.clone()), new: new.clone() };
                let invocation = shared.recorder.invoke(id, &key, input);
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, expected)])
                    .and_then([TxnOp::put(key.clone(), new, None)]);
                let began = Instant::now();
                let result = tokio::time::timeout(OP_TIMEOUT, client.txn(txn)).await;
                let output = match &result {
                    Ok(Ok(response)) => Output::Swapped(response.succeeded()),
                    _ => Output::Unknown,
                };
                failed = output == Output::Unknown;
                shared.writes.lock().unwrap().push((began, Instant::now(), output != Output::Unknown));
                shared.recorder.complete(invocation, output);
            }
        }
        if failed {
            shared.failures.fetch_add(1, Ordering::SeqCst);
            avoid[member] = Some(Instant::now() + backoff[member]);
            backoff[member] = (backoff[member] * 2).min(AVOID_MAX);
        } else {
            backoff[member] = AVOID_FAILED_MEMBER;
        }
    }
}

/// RTO figures from the write attempts: to the first acknowledged write that
/// began after the fault, and to the start of the first second after the fault
/// with at least 99% of attempts acknowledged.
fn recovery(writes: &[(Instant, Instant, bool)], fault: Instant) -> (Duration, Duration) {
    let first_ack = writes
        .iter()
        .filter(|(began, _, ok)| *ok && *began >= fault)
        .map(|(_, ended, _)| ended.duration_since(fault))
        .min()
        .expect("a write succeeded after the fault");
    let mut second = 0u32;
    let good_second = loop {
        let from = fault + Duration::from_secs(u64::from(second));
        let to = from + Duration::from_secs(1);
        let in_window: Vec<bool> = writes
            .iter()
            .filter(|(began, _, _)| *began >= from && *began < to)
            .map(|(_, _, ok)| *ok)
            .collect();
        if !in_window.is_empty() && in_window.iter().filter(|ok| **ok).count() * 100 >= in_window.len() * 99 {
            break Duration::from_secs(u64::from(second));
        }
        second += 1;
        assert!(second < 30, "no second with 99% successful writes within 30 s of the fault");
    };
    (first_ack, good_second)
}

async fn run(fault: Fault) {
    let options = ClusterOptions::members(5).arg("--primary-city", "hangzhou");
    let mut cluster = start(options).await;
    let mut clients = Vec::new();
    for index in 0..cluster.len() {
        clients.push(cluster.client(index).await);
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        recorder: Recorder::default(),
        clients,
        acked: Mutex::new(BTreeSet::new()),
        writes: Mutex::new(Vec::new()),
        sequence: AtomicU64::new(0),
        failures: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..WORKERS).map(|id| tokio::spawn(worker(shared.clone(), id))).collect();

    tokio::time::sleep(HEALTHY_BEFORE).await;
    let leader = cluster.leader().await.expect("a leader before the fault");
    let fault_at = Instant::now();
    match fault {
        Fault::KillLeader => cluster.kill(leader).expect("kill the leader"),
        Fault::PauseLeader => cluster.pause(leader).expect("pause the leader"),
    }
    tokio::time::sleep(FAULT_LASTS).await;
    match fault {
        Fault::KillLeader => cluster.restart(leader).await.expect("restart the old leader"),
        Fault::PauseLeader => cluster.resume(leader).expect("resume the old leader"),
    }
    tokio::time::sleep(HEALED_AFTER).await;
    shared.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("worker");
    }

    let writes = shared.writes.lock().unwrap().clone();
    for second in 0..8u64 {
        let from = fault_at + Duration::from_secs(second);
        let to = from + Duration::from_secs(1);
        let window: Vec<&(Instant, Instant, bool)> =
            writes.iter().filter(|(b, _, _)| *b >= from && *b < to).collect();
        let ok = window.iter().filter(|w| w.2).count();
        println!("{fault:?}: second {second}: {ok}/{} writes acknowledged", window.len());
    }
    let (first_ack, good_second) = recovery(&writes, fault_at);
    let operations = shared.recorder.operations();
    let verdict = tokio::task::spawn_blocking(move || check(&operations, CHECK_BUDGET)).await.unwrap();

    // Audit after healing: every acknowledged write on every member.
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    let revision = wait_same_revision(&cluster, &everyone, Duration::from_secs(30)).await;
    let acked = shared.acked.lock().unwrap().clone();
    let mut hashes = Vec::new();
    for index in everyone {
        let mut client = cluster.client(index).await;
        let present = local_pairs_under(&mut client, AUDIT_PREFIX).await.expect("read the audit keys");
        let lost: Vec<&String> = acked.iter().filter(|k| !present.contains_key(*k)).collect();
        assert!(
            lost.is_empty(),
            "{fault:?}: member {index} lost {} acknowledged writes: {lost:?}",
            lost.len()
        );
        let hash = client.maintenance_client().hash_kv(revision).await.expect("hashkv").hash();
        hashes.push(hash);
    }
    let total = writes.len();
    let failed = writes.iter().filter(|(_, _, ok)| !ok).count();
    println!(
        "{fault:?}: {total} writes ({failed} failed or unknown), {} audited acknowledged writes, RPO 0 \
         (none lost); RTO: first write {:.2} s, first 99% second at {} s; linearizability: {verdict}",
        acked.len(),
        first_ack.as_secs_f64(),
        good_second.as_secs()
    );
    assert_eq!(verdict, Verdict::Linearizable, "{fault:?}: the history is not linearizable");
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{fault:?}: HashKV differs: {hashes:?}");
    assert!(first_ack < RTO_MAX, "{fault:?}: first write after {first_ack:?}, above {RTO_MAX:?}");
    assert!(good_second < RTO_MAX, "{fault:?}: writes back to 99% only after {good_second:?}");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_nothing_and_recovers_in_seconds() {
    bounded(TEST_LIMIT, run(Fault::KillLeader)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_pause_loses_nothing_and_recovers_in_seconds() {
    bounded(TEST_LIMIT, run(Fault::PauseLeader)).await;
}
