//! Faults any developer can run (no root): a five-member, three-city cluster on
//! loopback under concurrent reads, writes and compare-and-sets from clients
//! spread over every member, while the leader is killed or frozen, a member is
//! partitioned away, or a whole city is cut off — the last with WAN delays
//! between cities, emulated by the members' fault injection (they hold what
//! they send to another city for the pair's round trip). Each scenario ends
//! with:
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

use common::{bounded, local_pairs_under, poll_until, start, wait_same_revision};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use etcd_proto::fivefoldpb::peer_client::PeerClient;
use etcd_proto::fivefoldpb::{FaultRule, FaultRules};
use testkit::linearizability::{check, Input, Output, Recorder, Verdict};
use testkit::{Cluster, ClusterOptions, Placement};

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
/// `--primary-city` of every scenario: the leader lives there while it can.
const PRIMARY_CITY: &str = "hangzhou";
/// Bound on the leader moving back to the primary city (it waits three election
/// timeouts of stable leadership, then transfers in about one).
const LEADER_HOME_LIMIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    PauseLeader,
    /// Partition one follower away from everyone.
    IsolateFollower,
    /// Cut every link between a city and the others, both ways.
    CutCity(&'static str),
    /// Kill a follower (another city's than the leader's if there is one) and
    /// delete its data dir; "healing" replaces it the way an operator does:
    /// MemberRemove of the lost member, MemberAdd of a fresh one in the same dc,
    /// which catches up from a snapshot and the log before it votes.
    WipeFollower,
}

/// Round trips between cities used for the WAN scenarios, in milliseconds:
/// 1 inside a city, 10 hangzhou–shanghai, 30 to shenzhen (one-way 0.5, 5, 15).
fn round_trip_ms(from: &str, to: &str) -> u32 {
    match (from, to) {
        (a, b) if a == b => 1,
        ("hangzhou", "shanghai") | ("shanghai", "hangzhou") => 10,
        _ => 30,
    }
}

/// Sets member `index`'s fault rules: WAN delays (if `wan`) and drops to `cut`.
async fn set_rules(cluster: &Cluster, index: usize, wan: bool, cut: &[usize]) {
    let from = cluster.placement(index).city.clone();
    let mut rules = Vec::new();
    for other in (0..cluster.len()).filter(|o| *o != index) {
        let to = &cluster.placement(other).city;
        rules.push(FaultRule {
            peer_url: cluster.peer_url(other),
            drop: cut.contains(&other),
            delay_ms: if wan { round_trip_ms(&from, to) } else { 0 },
        });
    }
    let mut peer = PeerClient::connect(cluster.peer_url(index)).await.expect("connect to the peer port");
    peer.inject_faults(FaultRules { rules }).await.expect("inject faults");
}

/// Applies a partition: `side` cannot reach anyone outside it, nor they it.
async fn partition(cluster: &Cluster, side: &[usize], wan: bool) {
    let others: Vec<usize> = (0..cluster.len()).filter(|i| !side.contains(i)).collect();
    for index in 0..cluster.len() {
        let cut: &[usize] = if side.contains(&index) { &others } else { side };
        set_rules(cluster, index, wan, cut).await;
    }
}

async fn heal(cluster: &Cluster, wan: bool) {
    for index in 0..cluster.len() {
        set_rules(cluster, index, wan, &[]).await;
    }
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
    /// Each member's city.
    cities: Vec<String>,
}

fn register(n: u64) -> String {
    format!("reg/{n}")
}

/// How long a client first avoids a member after a request to it failed, as
/// etcd's client balancer does with an unhealthy endpoint, together with the
/// other members of its city (a city that fails one request likely fails the
/// next: clients fail over to another city); doubled on each further
/// failure, reset by a success.
const AVOID_FAILED_MEMBER: Duration = Duration::from_secs(2);
const AVOID_MAX: Duration = Duration::from_secs(16);

async fn worker(shared: Arc<Shared>, id: u64) {
    let mut step: u64 = 0;
    let mut last_read: Option<String> = None;
    let members = shared.clients.len();
    let mut avoid: Vec<Option<Instant>> = vec![None; members];
    let mut backoff: Vec<Duration> = vec![AVOID_FAILED_MEMBER; members];
    while !shared.stop.load(Ordering::SeqCst) {
        // A request that fails at once (its member is gone) completes without
        // yielding; yield anyway, or a failing test could never shut down.
        tokio::task::yield_now().await;
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
            let until = Instant::now() + backoff[member];
            for (other, city) in shared.cities.iter().enumerate() {
                if *city == shared.cities[member] {
                    avoid[other] = Some(until);
                }
            }
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

async fn raft_term(cluster: &Cluster, index: usize) -> u64 {
    let mut client = cluster.client(index).await;
    let status = client.status().await.expect("status");
    status.raft_term()
}

/// The follower a [`Fault::WipeFollower`] destroys: one outside the leader's
/// city if there is one, so the leader's city keeps both its members.
fn wipe_victim(cluster: &Cluster, leader: usize) -> usize {
    let leader_city = &cluster.placement(leader).city;
    let followers: Vec<usize> =
        (0..cluster.len()).filter(|i| *i != leader && cluster.is_running(*i)).collect();
    followers
        .iter()
        .copied()
        .find(|i| cluster.placement(*i).city != *leader_city)
        .or_else(|| followers.first().copied())
        .expect("a follower")
}

/// Replaces wiped member `victim` as an operator would: MemberRemove, then
/// MemberAdd of a new member in the same dc, started with
/// `--initial-cluster-state existing`; waits until it serves.
async fn replace_member(cluster: &mut Cluster, leader: usize, victim: usize) {
    let mut admin = cluster.client(leader).await;
    let victim_id = cluster.member_id(victim).expect("the victim's id");
    admin.member_remove(victim_id).await.unwrap_or_else(|e| panic!("MemberRemove of the wiped member: {e}"));
    let lost = cluster.placement(victim).clone();
    let placement = Placement { name: format!("{}-new", lost.name), city: lost.city, dc: lost.dc };
    let listed: Vec<usize> = (0..cluster.len()).filter(|i| cluster.is_running(*i)).collect();
    let replacement = cluster.add_joining_member(placement, &listed).expect("prepare the replacement");
    let peer_url = cluster.peer_url(replacement);
    admin.member_add([peer_url.as_str()], None).await.unwrap_or_else(|e| panic!("MemberAdd {peer_url}: {e}"));
    cluster
        .start_joining(replacement)
        .await
        .unwrap_or_else(|e| panic!("the replacement did not start: {e:#}"));
}

/// One scenario at a time: each measures RTO, which a second five-member
/// cluster on the same two cores would distort.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one scenario alone, bounded by [`TEST_LIMIT`] from when its turn
/// comes (the wait for the others does not count against it).
async fn scenario(faults: &[Fault], wan: bool) {
    let _alone = ONE_AT_A_TIME.lock().await;
    bounded(TEST_LIMIT, run(faults, wan)).await;
}

async fn run(faults: &[Fault], wan: bool) {
    let options =
        ClusterOptions::members(5).arg("--primary-city", PRIMARY_CITY).flag("--experimental-fault-injection");
    let mut cluster = start(options).await;
    if wan {
        heal(&cluster, true).await;
    }
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
        cities: (0..cluster.len()).map(|i| cluster.placement(i).city.clone()).collect(),
    });
    let workers: Vec<_> = (0..WORKERS).map(|id| tokio::spawn(worker(shared.clone(), id))).collect();

    tokio::time::sleep(HEALTHY_BEFORE).await;
    let mut recoveries = Vec::new();
    for &fault in faults {
        if let Fault::CutCity(_) = fault {
            // The primary city gets the leader back (leader placement); wait
            // until it has. Cutting the primary city is then losing the
            // leader's city; cutting another must not touch the leader, and a
            // move home still pending from an earlier fault would land during
            // this one and read as a disruption.
            poll_until(LEADER_HOME_LIMIT, &format!("the leader in {PRIMARY_CITY}"), || async {
                let leader = cluster.leader().await.map_err(|e| e.to_string())?;
                match cluster.placement(leader).city.as_str() {
                    PRIMARY_CITY => Ok(()),
                    city => Err(format!("the leader is in {city}")),
                }
            })
            .await;
        }
        let leader = cluster.leader().await.expect("a leader before the fault");
        let term_before = raft_term(&cluster, leader).await;
        // Faults that leave the leader with a majority must not cost an
        // election, also when the cut-off members come back (pre-vote).
        let leader_untouched = match fault {
            Fault::IsolateFollower | Fault::WipeFollower => true,
            Fault::CutCity(city) => cluster.placement(leader).city != city,
            Fault::KillLeader | Fault::PauseLeader => false,
        };
        let wiped = match fault {
            Fault::WipeFollower => Some(wipe_victim(&cluster, leader)),
            _ => None,
        };
        let fault_at = Instant::now();
        match fault {
            Fault::KillLeader => cluster.kill(leader).expect("kill the leader"),
            Fault::PauseLeader => cluster.pause(leader).expect("pause the leader"),
            Fault::IsolateFollower => {
                let follower = (0..cluster.len()).find(|i| *i != leader).expect("a follower");
                partition(&cluster, &[follower], wan).await;
            }
            Fault::CutCity(city) => {
                let side: Vec<usize> =
                    (0..cluster.len()).filter(|i| cluster.placement(*i).city == city).collect();
                partition(&cluster, &side, wan).await;
            }
            Fault::WipeFollower => {
                let victim = wiped.expect("a victim");
                cluster.kill(victim).expect("kill the follower");
                cluster.wipe(victim).expect("wipe its data dir");
            }
        }
        tokio::time::sleep(FAULT_LASTS).await;
        match fault {
            Fault::KillLeader => cluster.restart(leader).await.expect("restart the old leader"),
            Fault::PauseLeader => cluster.resume(leader).expect("resume the old leader"),
            Fault::IsolateFollower | Fault::CutCity(_) => heal(&cluster, wan).await,
            Fault::WipeFollower => replace_member(&mut cluster, leader, wiped.expect("a victim")).await,
        }
        recoveries.push((fault, fault_at));
        tokio::time::sleep(HEALED_AFTER).await;
        if leader_untouched {
            let leader_after = cluster.leader().await.expect("a leader after healing");
            let term_after = raft_term(&cluster, leader_after).await;
            assert_eq!(
                (leader_after, term_after),
                (leader, term_before),
                "{fault:?}: the healthy leader was disrupted (a rejoining member forced an election)"
            );
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("worker");
    }
    let writes = shared.writes.lock().unwrap().clone();
    let mut rtos = Vec::new();
    for (fault, fault_at) in recoveries {
        let (first_ack, good_second) = recovery(&writes, fault_at);
        println!(
            "{fault:?}{}: RTO: first acknowledged write {:.2} s after the fault, first second with 99% at {} s",
            if wan { " (WAN delays)" } else { "" },
            first_ack.as_secs_f64(),
            good_second.as_secs()
        );
        rtos.push((fault, first_ack, good_second));
    }
    let fault = faults;
    let operations = shared.recorder.operations();
    let verdict = tokio::task::spawn_blocking(move || check(&operations, CHECK_BUDGET)).await.unwrap();

    // Audit after healing: every acknowledged write on every member (a
    // replacement included, a removed one excluded).
    let everyone: Vec<usize> = (0..cluster.len()).filter(|i| cluster.is_running(*i)).collect();
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
         (none lost); HashKV identical on {} members; linearizability: {verdict}",
        acked.len(),
        hashes.len()
    );
    assert_eq!(verdict, Verdict::Linearizable, "{fault:?}: the history is not linearizable");
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{fault:?}: HashKV differs: {hashes:?}");
    for (fault, first_ack, good_second) in rtos {
        assert!(first_ack < RTO_MAX, "{fault:?}: first write after {first_ack:?}, above {RTO_MAX:?}");
        assert!(good_second < RTO_MAX, "{fault:?}: writes back to 99% only after {good_second:?}");
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_nothing_and_recovers_in_seconds() {
    scenario(&[Fault::KillLeader], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_pause_loses_nothing_and_recovers_in_seconds() {
    scenario(&[Fault::PauseLeader], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_loses_nothing() {
    scenario(&[Fault::IsolateFollower], true).await;
}

/// The primary city holds the leader (`--primary-city hangzhou`); cutting it
/// off leaves shanghai and shenzhen, three of five voters, to elect a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_leaders_city_loses_nothing_and_recovers_in_seconds() {
    scenario(&[Fault::CutCity("hangzhou")], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_shenzhen_loses_nothing() {
    scenario(&[Fault::CutCity("shenzhen")], true).await;
}

/// A follower's disk is lost; it is replaced by a new, empty member that must end
/// with every acknowledged write and the same HashKV as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_is_replaced_and_catches_up() {
    scenario(&[Fault::WipeFollower], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_hangzhou_heal_then_cut_shanghai() {
    scenario(&[Fault::CutCity("hangzhou"), Fault::CutCity("shanghai")], true).await;
}
