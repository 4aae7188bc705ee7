//! Acknowledged writes survive a member's crash (SIGKILL) during a stream of writes,
//! whether the crashed member is a follower or the leader.
//!
//! Several writers put unique keys through every live member and record which puts
//! were acknowledged. A member is killed mid-stream, writing goes on, the member is
//! restarted, writing goes on. Then, on every member: every acknowledged write is
//! there; nothing is there that was not attempted; revisions are exactly 2..=last
//! with one key per revision (no gap, no duplicate apply); and all members hold the
//! same key -> (revision, value) map.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::{bounded, current_revision, header_revision, local_prefix, poll_until, start, text};
use etcd_client::Client;
use testkit::{Cluster, ClusterOptions};

const TEST_LIMIT: Duration = Duration::from_secs(240);
const WRITERS: usize = 4;
/// Bound on the writes one writer attempts.
const WRITES_PER_WRITER_MAX: usize = 20_000;
/// Deadline of one put; a put that misses it counts as not acknowledged.
const PUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed put (no leader yet, member down), so a writer does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Acknowledged writes to wait for in each phase.
const ACKS_PER_PHASE: usize = 150;
/// Bound on reaching a phase's acknowledgement count.
const PHASE_LIMIT: Duration = Duration::from_secs(60);
const PREFIX: &str = "dur/";

/// State shared by the writers and the test.
struct Shared {
    stop: AtomicBool,
    /// Members that writers may send to.
    up: Vec<AtomicBool>,
    /// One client per member, replaced after a restart.
    clients: RwLock<Vec<Client>>,
    /// Keys whose put was sent, acknowledged or not.
    attempted: Mutex<BTreeSet<String>>,
    /// Acknowledged puts: key -> revision in the answer.
    acked: Mutex<BTreeMap<String, i64>>,
    /// Acknowledged puts per member they were sent through.
    acked_via: Vec<AtomicUsize>,
}

impl Shared {
    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

fn value_of(key: &str) -> String {
    format!("value of {key}")
}

async fn writer(shared: Arc<Shared>, id: usize) {
    let members = shared.up.len();
    let mut next_member = id;
    for sequence in 0..WRITES_PER_WRITER_MAX {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(member) = (0..members)
            .map(|step| (next_member + step) % members)
            .find(|m| shared.up[*m].load(Ordering::SeqCst))
        else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        next_member = member + 1;
        let mut client = shared.clients.read().unwrap()[member].clone();
        // Every attempt uses a fresh key: a retried key could be applied twice.
        let key = format!("{PREFIX}w{id}/{sequence:06}");
        shared.attempted.lock().unwrap().insert(key.clone());
        match tokio::time::timeout(PUT_TIMEOUT, client.put(key.clone(), value_of(&key), None)).await {
            Ok(Ok(response)) => {
                let revision = response.header().map_or(0, |header| header.revision());
                shared.acked.lock().unwrap().insert(key, revision);
                shared.acked_via[member].fetch_add(1, Ordering::SeqCst);
            }
            Ok(Err(_)) | Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

async fn wait_for_acks(shared: &Shared, target: usize, phase: &str) {
    poll_until(PHASE_LIMIT, phase, || async move {
        let count = shared.acked_count();
        if count >= target {
            Ok(())
        } else {
            Err(format!("{count} of {target} writes acknowledged"))
        }
    })
    .await;
}

/// Key -> (create revision, mod revision, version, value) as one member holds it.
type Snapshot = BTreeMap<String, (i64, i64, i64, String)>;

/// Reads every member's data locally (serializable) once all members have applied
/// exactly the leader's current revision. A put whose client gave up may still be
/// committed late, so this waits for the revision to settle rather than trusting
/// one reading of it. Returns the revision and one snapshot per member.
async fn converged_snapshots(cluster: &Cluster) -> (i64, Vec<Snapshot>) {
    let leader = cluster.leader().await.expect("a leader after the faults");
    let leader_client = cluster.client(leader).await;
    let mut clients = Vec::new();
    for index in 0..cluster.len() {
        clients.push(cluster.client(index).await);
    }
    let clients = &clients;
    poll_until(Duration::from_secs(30), "every member applies the leader's revision", || {
        let mut leader_client = leader_client.clone();
        async move {
            let last = current_revision(&mut leader_client).await;
            let mut snapshots = Vec::new();
            let mut revisions = Vec::new();
            for client in clients {
                let response = local_prefix(&mut client.clone(), PREFIX).await.map_err(|e| e.to_string())?;
                revisions.push(header_revision(&response));
                snapshots.push(
                    response
                        .kvs()
                        .iter()
                        .map(|kv| {
                            let fields =
                                (kv.create_revision(), kv.mod_revision(), kv.version(), text(kv.value()));
                            (text(kv.key()), fields)
                        })
                        .collect::<Snapshot>(),
                );
            }
            if revisions.iter().all(|revision| *revision == last) {
                Ok((last, snapshots))
            } else {
                Err(format!("leader at {last}, members at {revisions:?}"))
            }
        }
    })
    .await
}

/// Checks every member against the recorded history.
async fn audit(cluster: &Cluster, shared: &Shared) {
    let (last, snapshots) = converged_snapshots(cluster).await;
    let acked = shared.acked.lock().unwrap().clone();
    let attempted = shared.attempted.lock().unwrap().clone();
    assert!(acked.len() >= 3 * ACKS_PER_PHASE, "only {} acknowledged writes", acked.len());
    eprintln!(
        "audit: {} writes acknowledged of {} attempted; {} members hold revisions 2..={last}",
        acked.len(),
        attempted.len(),
        snapshots.len()
    );

    for (index, snapshot) in snapshots.iter().enumerate() {
        for (key, revision) in &acked {
            let Some((_, mod_revision, _, value)) = snapshot.get(key) else {
                panic!("member {index} lost acknowledged write {key} (acknowledged at revision {revision})");
            };
            assert_eq!(value, &value_of(key), "member {index}: value of {key}");
            assert_eq!(
                mod_revision, revision,
                "member {index}: {key} is at another revision than acknowledged"
            );
        }
        for (key, (create, modified, version, _)) in snapshot {
            assert!(attempted.contains(key), "member {index} holds {key}, which no writer sent");
            assert_eq!((version, create), (&1, modified), "member {index}: {key} was written more than once");
        }
        let mut revisions: Vec<i64> = snapshot.values().map(|(_, modified, _, _)| *modified).collect();
        revisions.sort_unstable();
        let expected: Vec<i64> = (2..=last).collect();
        if revisions != expected {
            let present: BTreeSet<i64> = revisions.iter().copied().collect();
            let missing: Vec<i64> =
                expected.iter().filter(|r| !present.contains(r)).take(10).copied().collect();
            let duplicated = revisions.len() - present.len();
            panic!(
                "member {index}: revisions are not exactly 2..={last}: {} keys, \
                 {duplicated} duplicated revisions, first missing {missing:?}",
                revisions.len()
            );
        }
    }
    for index in 1..snapshots.len() {
        if snapshots[index] != snapshots[0] {
            let differing: Vec<&String> = snapshots[0]
                .keys()
                .chain(snapshots[index].keys())
                .filter(|key| snapshots[0].get(*key) != snapshots[index].get(*key))
                .take(10)
                .collect();
            panic!("member {index} differs from member 0, e.g. at {differing:?}");
        }
    }
}

async fn assert_writable_everywhere(cluster: &Cluster) {
    for index in 0..cluster.len() {
        let mut client = cluster.client(index).await;
        let key = format!("after/{index}");
        client
            .put(key.clone(), "after", None)
            .await
            .unwrap_or_else(|e| panic!("put through member {index} after the faults: {e}"));
        let read = client.get(key.clone(), None).await.unwrap();
        assert_eq!(read.kvs().len(), 1, "member {index} reads its own write");
    }
}

/// Crashes the members chosen by `victims` (given the leader's index) mid-stream,
/// restarts them, and audits.
async fn crash_during_writes(options: ClusterOptions, victims: fn(usize, usize) -> Vec<usize>) {
    let mut cluster = start(options).await;
    let count = cluster.len();
    let mut clients = Vec::new();
    for index in 0..count {
        clients.push(cluster.client(index).await);
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        up: (0..count).map(|_| AtomicBool::new(true)).collect(),
        clients: RwLock::new(clients),
        attempted: Mutex::new(BTreeSet::new()),
        acked: Mutex::new(BTreeMap::new()),
        acked_via: (0..count).map(|_| AtomicUsize::new(0)).collect(),
    });
    let writers: Vec<_> = (0..WRITERS).map(|id| tokio::spawn(writer(shared.clone(), id))).collect();

    wait_for_acks(&shared, ACKS_PER_PHASE, "writes before the crash").await;
    let leader = cluster.leader().await.unwrap();
    let victims = victims(leader, count);
    for victim in &victims {
        shared.up[*victim].store(false, Ordering::SeqCst);
        cluster.kill(*victim).unwrap();
    }
    let before = shared.acked_count();
    wait_for_acks(&shared, before + ACKS_PER_PHASE, "writes while crashed members are down").await;

    let mut via_before = Vec::new();
    for victim in &victims {
        cluster.restart(*victim).await.unwrap_or_else(|e| panic!("restart of member {victim}: {e:#}"));
        shared.clients.write().unwrap()[*victim] = cluster.client(*victim).await;
        via_before.push(shared.acked_via[*victim].load(Ordering::SeqCst));
        shared.up[*victim].store(true, Ordering::SeqCst);
    }
    let before = shared.acked_count();
    wait_for_acks(&shared, before + ACKS_PER_PHASE, "writes after the restart").await;
    for (victim, before) in victims.iter().zip(via_before) {
        let shared = &shared;
        poll_until(PHASE_LIMIT, &format!("writes through restarted member {victim}"), || async move {
            let now = shared.acked_via[*victim].load(Ordering::SeqCst);
            if now >= before + 10 {
                Ok(())
            } else {
                Err(format!("{} acknowledged through it since the restart", now - before))
            }
        })
        .await;
    }

    shared.stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer task");
    }
    audit(&cluster, &shared).await;
    assert_writable_everywhere(&cluster).await;
}

fn a_follower(leader: usize, count: usize) -> Vec<usize> {
    vec![(leader + 1) % count]
}

fn the_leader(leader: usize, _count: usize) -> Vec<usize> {
    vec![leader]
}

fn the_leader_and_a_follower(leader: usize, count: usize) -> Vec<usize> {
    vec![leader, (leader + 1) % count]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_crash_loses_no_acknowledged_write() {
    bounded(TEST_LIMIT, crash_during_writes(ClusterOptions::default(), a_follower)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_loses_no_acknowledged_write() {
    bounded(TEST_LIMIT, crash_during_writes(ClusterOptions::default(), the_leader)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_survive_leader_and_follower_crash() {
    bounded(TEST_LIMIT, crash_during_writes(ClusterOptions::members(5), the_leader_and_a_follower)).await;
}

/// Writes `count` keys `dur/clean/<phase>/NNN` through member `index`.
async fn write_keys(cluster: &Cluster, index: usize, phase: &str, count: usize) {
    let mut client = cluster.client(index).await;
    for n in 0..count {
        let key = format!("{PREFIX}clean/{phase}/{n:03}");
        client
            .put(key.clone(), value_of(&key), None)
            .await
            .unwrap_or_else(|e| panic!("put {key} via {index}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_members_cleanly_and_restart_keeps_data() {
    bounded(TEST_LIMIT, async {
        let mut cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let follower = (leader + 1) % cluster.len();
        write_keys(&cluster, leader, "a", 50).await;

        let status = cluster.stop(follower).await.unwrap();
        assert!(status.success(), "follower exit after SIGTERM: {status}\n{}", cluster.log_tails(20));
        write_keys(&cluster, leader, "b", 50).await;
        cluster.restart(follower).await.unwrap();

        let status = cluster.stop(leader).await.unwrap();
        assert!(status.success(), "leader exit after SIGTERM: {status}\n{}", cluster.log_tails(20));
        let new_leader = cluster.leader().await.expect("a new leader after the old one stopped");
        assert_ne!(new_leader, leader);
        write_keys(&cluster, follower, "c", 50).await;
        cluster.restart(leader).await.unwrap();

        let (last, snapshots) = converged_snapshots(&cluster).await;
        assert_eq!(last, 151, "150 puts on an empty store");
        for (index, snapshot) in snapshots.iter().enumerate() {
            assert_eq!(snapshot.len(), 150, "member {index} holds every key");
            let mut revisions: Vec<i64> = snapshot.values().map(|(_, modified, _, _)| *modified).collect();
            revisions.sort_unstable();
            assert_eq!(revisions, (2..=151).collect::<Vec<i64>>(), "member {index}: one key per revision");
            assert!(
                snapshot.iter().all(|(key, (_, _, _, value))| value == &value_of(key)),
                "member {index} values"
            );
            assert_eq!(snapshot, &snapshots[0], "member {index} equals member 0");
        }
        assert_writable_everywhere(&cluster).await;
    })
    .await;
}
