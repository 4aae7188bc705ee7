//! etcd's Lease API against real 3-member clusters: Grant (ids, TTL bounds, etcd's
//! errors), Revoke, KeepAlive, TimeToLive, Leases; expiry deleting a lease's keys in
//! one revision; keep-alives across a leader crash; leases across restarts; and
//! Debian's `etcdctl` 3.4 lease commands.
//!
//! Every test starts its own cluster with the default timing (election timeout
//! 1000 ms, so the smallest TTL is 2 s). Waiting for a TTL to pass is the point of
//! several tests; every such wait is bounded and polls for the condition.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_status, bounded, current_revision, keys, poll_until, start, text};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    Txn, TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use etcd_proto::etcdserverpb::lease_client::LeaseClient as RawLeaseClient;
use etcd_proto::etcdserverpb::LeaseKeepAliveRequest;
use testkit::{Cluster, ClusterOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

const TEST_LIMIT: Duration = Duration::from_secs(120);
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const LEASE_EXISTS: &str = "etcdserver: lease already exists";
const TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
/// etcd's `MaxLeaseTTL`.
const LEASE_TTL_MAX: i64 = 9_000_000_000;
/// The members' `--election-timeout` (the default).
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);
/// 1.5 x the election timeout, rounded up to whole seconds.
const TTL_MIN: i64 = 2;
/// How often the keep-alive loops renew.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(500);
/// Expiry comes at most this long after TTL + election timeout: the leader's 250 ms
/// check, one Raft round for the revoke, the test's polling, a loaded machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(3);
/// Expiry may be observed a little before TTL after the last renewal the client
/// saw answered (the renewal happened shortly before its answer arrived).
const EARLY_TOLERANCE: Duration = Duration::from_millis(100);
/// Bound on one watch message or one keep-alive stream open.
const MESSAGE_LIMIT: Duration = Duration::from_secs(15);

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl as u64)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// The leader's index and the followers' indexes.
async fn roles(cluster: &Cluster) -> (usize, Vec<usize>) {
    let leader = cluster.leader().await.expect("a leader");
    let followers =
        (0..cluster.len()).filter(|index| *index != leader && cluster.is_running(*index)).collect();
    (leader, followers)
}

async fn put_leased(client: &mut Client, key: &str, lease: i64) {
    let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
    client.put(key, "v", options).await.unwrap_or_else(|e| panic!("put {key} with lease {lease:x}: {e}"));
}

/// `(ttl, granted_ttl, sorted keys)` from TimeToLive with keys.
async fn time_to_live(client: &mut Client, id: i64) -> (i64, i64, Vec<String>) {
    let response = client
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap_or_else(|e| panic!("TimeToLive {id:x}: {e}"));
    assert_eq!(response.id(), id, "TimeToLive answers for the lease asked");
    let mut keys: Vec<String> = response.keys().iter().map(|key| text(key)).collect();
    keys.sort();
    (response.ttl(), response.granted_ttl(), keys)
}

/// Asserts that TimeToLive of `id` answers -1 (no such lease), as it must once the
/// lease's keys were seen deleted. If it does not, polls a little longer to tell a
/// stale answer from a lease that was never removed, and fails either way.
async fn assert_lease_gone(client: &mut Client, id: i64, what: &str) {
    let first = time_to_live(client, id).await;
    if first.0 == -1 {
        assert_eq!(first, (-1, 0, Vec::new()), "{what}: TimeToLive of a lease that is gone");
        return;
    }
    let asked = Instant::now();
    let mut became_gone = None;
    while asked.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if time_to_live(client, id).await.0 == -1 {
            became_gone = Some(asked.elapsed());
            break;
        }
    }
    let later = match became_gone {
        Some(after) => format!("it answered -1 only {after:?} later (a stale answer)"),
        None => "it still did not answer -1 3 s later".to_string(),
    };
    panic!(
        "{what}: TimeToLive of lease {id:x} answered (ttl, granted ttl, keys) = {first:?} although its keys \
         were already seen deleted; {later}"
    );
}

async fn lease_ids(client: &mut Client) -> BTreeSet<i64> {
    let response = client.leases().await.expect("Leases");
    response.leases().iter().map(|lease| lease.id()).collect()
}

async fn prefix_keys(client: &mut Client, prefix: &str) -> Vec<String> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap_or_else(|e| panic!("get prefix {prefix}: {e}"));
    keys(&response)
}

/// Polls (linearizable reads through `client`) until no key under `prefix` is left
/// but `remaining`, for at most `limit`; returns when that was first seen.
async fn wait_keys(
    client: &Client,
    prefix: &str,
    remaining: &[&str],
    limit: Duration,
    what: &str,
) -> Instant {
    let expected = strings(remaining);
    poll_until(limit, what, || {
        let mut client = client.clone();
        let expected = expected.clone();
        async move {
            let response = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| format!("get {prefix}: {e}"))?;
            let now = keys(&response);
            if now == expected {
                Ok(Instant::now())
            } else {
                Err(format!("keys under {prefix}: {now:?}"))
            }
        }
    })
    .await
}

/// The next watch response that carries events, skipping created and progress
/// responses; fails on cancellation, end of stream or after [`MESSAGE_LIMIT`].
async fn next_events(stream: &mut WatchStream, what: &str) -> WatchResponse {
    loop {
        let message = match tokio::time::timeout(MESSAGE_LIMIT, stream.message()).await {
            Ok(message) => message,
            Err(_) => panic!("{what}: no watch events within {MESSAGE_LIMIT:?}"),
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => panic!("{what}: watch stream ended"),
            Err(error) => panic!("{what}: watch stream failed: {error}"),
        };
        assert!(!response.canceled(), "{what}: watch canceled: {}", response.cancel_reason());
        if !response.events().is_empty() {
            return response;
        }
    }
}

/// Asserts that `response` holds exactly one DELETE per key in `expected` and
/// nothing else, all at one revision; returns that revision.
#[track_caller]
fn assert_deletes_in_one_revision(response: &WatchResponse, expected: &[&str], what: &str) -> i64 {
    let described: Vec<(EventType, String, i64)> = response
        .events()
        .iter()
        .map(|event| {
            let kv = event.kv().expect("an event carries its key");
            (event.event_type(), text(kv.key()), kv.mod_revision())
        })
        .collect();
    let mut deleted: Vec<String> = described.iter().map(|(_, key, _)| key.clone()).collect();
    deleted.sort();
    assert_eq!(deleted, strings(expected), "{what}: keys in the first event response: {described:?}");
    assert!(
        described.iter().all(|(kind, _, _)| *kind == EventType::Delete),
        "{what}: every event is a DELETE: {described:?}"
    );
    let revision = described[0].2;
    assert!(
        described.iter().all(|(_, _, mod_revision)| *mod_revision == revision),
        "{what}: every delete has the same mod_revision: {described:?}"
    );
    revision
}

async fn watch_prefix(client: &mut Client, prefix: &str, from: i64) -> WatchStream {
    client
        .watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(from)))
        .await
        .unwrap_or_else(|e| panic!("watch {prefix} from {from}: {e}"))
}

/// A plain tonic channel to member `index`, for what `etcd-client` hides (a
/// keep-alive answer with TTL 0).
async fn raw_channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Sends one keep-alive per id on one LeaseKeepAlive stream and returns the
/// answers as `(id, ttl)`, in order.
async fn raw_keep_alive(url: &str, ids: &[i64]) -> Result<Vec<(i64, i64)>, tonic::Status> {
    let mut client = RawLeaseClient::new(raw_channel(url).await);
    let requests: Vec<LeaseKeepAliveRequest> =
        ids.iter().map(|id| LeaseKeepAliveRequest { id: *id }).collect();
    let mut stream = client.lease_keep_alive(futures::stream::iter(requests)).await?.into_inner();
    let mut answers = Vec::new();
    while answers.len() < ids.len() {
        match tokio::time::timeout(MESSAGE_LIMIT, stream.message()).await {
            Ok(Ok(Some(answer))) => answers.push((answer.id, answer.ttl)),
            Ok(Ok(None)) => break,
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(tonic::Status::deadline_exceeded("no keep-alive answer within the test's limit"))
            }
        }
    }
    Ok(answers)
}

/// What a [`KeepAliveLoop`] saw.
#[derive(Debug, Default, Clone)]
struct KeepAliveStats {
    /// When each answer arrived, and its TTL.
    answers: Vec<(Instant, i64)>,
    /// Errors, each followed by reopening the stream.
    errors: Vec<String>,
    /// Streams opened (the first included).
    opened: usize,
}

impl KeepAliveStats {
    fn answers_after(&self, since: Instant) -> Vec<i64> {
        self.answers.iter().filter(|(at, _)| *at > since).map(|(_, ttl)| *ttl).collect()
    }

    fn last_answer(&self) -> Instant {
        self.answers.last().expect("at least one keep-alive answer").0
    }
}

/// A client keeping one lease alive through one member: a keep-alive every
/// [`KEEPALIVE_EVERY`] on one LeaseKeepAlive stream, reopened on error (as etcd's
/// own client does). Records every answer.
struct KeepAliveLoop {
    stats: Arc<Mutex<KeepAliveStats>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl KeepAliveLoop {
    fn start(client: Client, id: i64) -> KeepAliveLoop {
        let stats = Arc::new(Mutex::new(KeepAliveStats::default()));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep_alive_loop(client, id, stats.clone(), stopped));
        KeepAliveLoop { stats, stop, task }
    }

    fn stats(&self) -> KeepAliveStats {
        self.stats.lock().unwrap().clone()
    }

    /// Waits until `count` answers have arrived.
    async fn wait_answers(&self, count: usize) {
        poll_until(Duration::from_secs(10), "keep-alive answers", || async {
            let stats = self.stats();
            if stats.answers.len() >= count {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        })
        .await;
    }

    /// Stops keeping alive (the stream is closed) and returns what was seen.
    async fn finish(self) -> KeepAliveStats {
        let _ = self.stop.send(());
        bounded(Duration::from_secs(5), self.task).await.expect("keep-alive loop panicked");
        let stats = self.stats.lock().unwrap().clone();
        stats
    }
}

async fn keep_alive_loop(
    mut client: Client,
    id: i64,
    stats: Arc<Mutex<KeepAliveStats>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'stream: loop {
        let opened = tokio::select! {
            _ = &mut stopped => return,
            opened = tokio::time::timeout(MESSAGE_LIMIT, client.lease_keep_alive(id)) => opened,
        };
        // Opening sends one keep-alive and reads its (positive) answer.
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => {
                let mut stats = stats.lock().unwrap();
                stats.opened += 1;
                stats.answers.push((Instant::now(), -2));
                pair
            }
            Ok(Err(error)) => {
                stats.lock().unwrap().errors.push(format!("open: {error}"));
                tokio::select! { _ = &mut stopped => return, _ = tick.tick() => {} }
                continue 'stream;
            }
            Err(_) => {
                stats.lock().unwrap().errors.push("open: timed out".to_string());
                continue 'stream;
            }
        };
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tick.tick() => {
                    if let Err(error) = keeper.keep_alive().await {
                        stats.lock().unwrap().errors.push(format!("send: {error}"));
                        continue 'stream;
                    }
                }
                message = stream.message() => match message {
                    Ok(Some(answer)) => stats.lock().unwrap().answers.push((Instant::now(), answer.ttl())),
                    Ok(None) => {
                        stats.lock().unwrap().errors.push("stream ended".to_string());
                        continue 'stream;
                    }
                    Err(error) => {
                        stats.lock().unwrap().errors.push(format!("receive: {error}"));
                        continue 'stream;
                    }
                },
            }
        }
    }
}

/// TTLs of the answers read off the stream itself (the answer to the keep-alive
/// sent when a stream opens is marked -2: `etcd-client` only says it was positive).
fn stream_ttls(ttls: &[i64]) -> Vec<i64> {
    ttls.iter().copied().filter(|ttl| *ttl != -2).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_errors_list_time_to_live_and_keep_alive() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (leader_index, followers) = roles(&cluster).await;
        let mut leader = cluster.client(leader_index).await;
        let mut follower = cluster.client(followers[0]).await;

        // Server-chosen ids, through a follower and through the leader.
        let a = follower.lease_grant(60, None).await.expect("grant with id 0 through a follower");
        assert!(a.id() > 0, "server-chosen id is positive: {a:?}");
        assert_eq!(a.ttl(), 60);
        let b = leader.lease_grant(60, None).await.expect("grant with id 0 through the leader");
        assert!(b.id() > 0, "server-chosen id is positive: {b:?}");
        assert_ne!(a.id(), b.id(), "server-chosen ids are distinct");

        // Client-chosen id; granting it again fails on any member.
        let c = follower.lease_grant(45, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap();
        assert_eq!((c.id(), c.ttl()), (0x1234, 45), "{c:?}");
        for (client, via) in [(&mut leader, "leader"), (&mut follower, "follower")] {
            let again = client.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234))).await;
            assert_status(
                again,
                Code::FailedPrecondition,
                LEASE_EXISTS,
                &format!("grant an existing id via {via}"),
            );
        }
        let c_ttl = time_to_live(&mut leader, 0x1234).await;
        assert_eq!(c_ttl.1, 45, "a refused re-grant leaves the granted TTL alone");

        // TTL bounds: above etcd's maximum is refused, the maximum itself is allowed,
        // below the minimum is raised to it.
        for (client, via) in [(&mut leader, "leader"), (&mut follower, "follower")] {
            assert_status(
                client.lease_grant(LEASE_TTL_MAX + 1, None).await,
                Code::OutOfRange,
                TTL_TOO_LARGE,
                &format!("TTL above the maximum via {via}"),
            );
        }
        assert_status(
            leader.lease_grant(i64::MAX, Some(LeaseGrantOptions::new().with_id(0x999))).await,
            Code::OutOfRange,
            TTL_TOO_LARGE,
            "TTL i64::MAX with an id",
        );
        let max = follower.lease_grant(LEASE_TTL_MAX, Some(LeaseGrantOptions::new().with_id(0x7777))).await;
        let max = max.expect("the maximum TTL is allowed");
        assert_eq!((max.id(), max.ttl()), (0x7777, LEASE_TTL_MAX));
        let mut minimum_ids = Vec::new();
        for asked in [1, 0, -5] {
            let granted = follower.lease_grant(asked, None).await.unwrap();
            assert_eq!(granted.ttl(), TTL_MIN, "TTL {asked} is raised to the minimum");
            minimum_ids.push(granted.id());
        }
        let min_ttl = time_to_live(&mut leader, minimum_ids[0]).await;
        assert_eq!(min_ttl.1, TTL_MIN, "the raised TTL is what is stored");

        // Unknown leases: put, txn put and revoke fail with etcd's NotFound.
        for (client, via) in [(&mut leader, "leader"), (&mut follower, "follower")] {
            let put = client.put("l/unknown", "v", Some(PutOptions::new().with_lease(0x4242))).await;
            assert_status(
                put,
                Code::NotFound,
                LEASE_NOT_FOUND,
                &format!("put with an unknown lease via {via}"),
            );
            let txn = Txn::new()
                .when([Compare::version("l/unknown", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("l/unknown", "v", Some(PutOptions::new().with_lease(0x4242)))]);
            assert_status(
                client.txn(txn).await,
                Code::NotFound,
                LEASE_NOT_FOUND,
                &format!("txn put via {via}"),
            );
            let revoke = client.lease_revoke(0x4242).await;
            assert_status(
                revoke,
                Code::NotFound,
                LEASE_NOT_FOUND,
                &format!("revoke an unknown lease via {via}"),
            );
        }
        assert!(prefix_keys(&mut leader, "l/").await.is_empty(), "failed puts wrote nothing");

        // Leases lists exactly the granted ids, on every member.
        let mut granted: BTreeSet<i64> = [a.id(), b.id(), 0x1234, 0x7777].into_iter().collect();
        granted.extend(&minimum_ids);
        for index in 0..cluster.len() {
            let mut client = cluster.client(index).await;
            assert_eq!(lease_ids(&mut client).await, granted, "Leases on member {index}");
        }

        // TimeToLive with and without keys, through the leader and a follower.
        put_leased(&mut follower, "l/k2", 0x1234).await;
        put_leased(&mut leader, "l/k1", 0x1234).await;
        put_leased(&mut leader, "l/other", a.id()).await;
        for (client, via) in [(&mut leader, "leader"), (&mut follower, "follower")] {
            let plain = client.lease_time_to_live(0x1234, None).await.unwrap();
            assert_eq!((plain.id(), plain.granted_ttl()), (0x1234, 45), "via {via}: {plain:?}");
            assert!((40..=45).contains(&plain.ttl()), "remaining TTL via {via}: {plain:?}");
            assert!(plain.keys().is_empty(), "no keys unless asked, via {via}: {plain:?}");
            let (ttl, granted_ttl, keys) = time_to_live(client, 0x1234).await;
            assert!((40..=45).contains(&ttl), "remaining TTL via {via}: {ttl}");
            assert_eq!(granted_ttl, 45);
            assert_eq!(keys, strings(&["l/k1", "l/k2"]), "keys of the lease via {via}");
            let unknown =
                client.lease_time_to_live(0x4242, Some(LeaseTimeToLiveOptions::new().with_keys())).await;
            let unknown = unknown.expect("TimeToLive of an unknown lease is not an error");
            assert_eq!(
                (unknown.id(), unknown.ttl(), unknown.granted_ttl(), unknown.keys().len()),
                (0x4242, -1, 0, 0),
                "unknown lease via {via}"
            );
        }
        let max_ttl = time_to_live(&mut follower, 0x7777).await;
        assert_eq!(max_ttl.1, LEASE_TTL_MAX);
        assert!(max_ttl.0 > LEASE_TTL_MAX - 60, "remaining of the maximum TTL: {max_ttl:?}");

        // KeepAlive answers with the granted TTL through the etcd client...
        for (client, via) in [(&mut leader, "leader"), (&mut follower, "follower")] {
            let (mut keeper, mut stream) = client.lease_keep_alive(0x1234).await.expect("open keep-alive");
            assert_eq!(keeper.id(), 0x1234);
            for round in 0..2 {
                keeper.keep_alive().await.expect("send keep-alive");
                let answer = bounded(MESSAGE_LIMIT, stream.message()).await.expect("keep-alive answer");
                let answer = answer.expect("stream open");
                assert_eq!((answer.id(), answer.ttl()), (0x1234, 45), "keep-alive {round} via {via}");
            }
            let (mut keeper, mut stream) = client.lease_keep_alive(minimum_ids[0]).await.unwrap();
            keeper.keep_alive().await.unwrap();
            let answer = bounded(MESSAGE_LIMIT, stream.message()).await.unwrap().unwrap();
            assert_eq!(answer.ttl(), TTL_MIN, "keep-alive of a minimum-TTL lease via {via}");
            let refused = client.lease_keep_alive(0x4242).await;
            assert!(refused.is_err(), "etcd-client refuses a keep-alive answered with TTL 0: {refused:?}");
        }
        // ...and on the wire, where an unknown lease is answered with TTL 0.
        for index in [leader_index, followers[0], followers[1]] {
            let answers = raw_keep_alive(&cluster.client_url(index), &[0x4242, 0x1234, a.id()]).await;
            assert_eq!(
                answers.expect("raw keep-alive"),
                [(0x4242, 0), (0x1234, 45), (a.id(), 60)],
                "raw keep-alives through member {index}"
            );
        }
        // A keep-alive resets the remaining TTL to the granted one.
        let after = time_to_live(&mut follower, 0x1234).await;
        assert!(after.0 >= 44, "remaining TTL right after a keep-alive: {after:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_a_leases_keys_in_one_revision() {
    const TTL: i64 = 3;
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (leader_index, followers) = roles(&cluster).await;
        let mut follower = cluster.client(followers[0]).await;
        let mut leader = cluster.client(leader_index).await;

        let before_grant = Instant::now();
        let a = follower.lease_grant(TTL, None).await.unwrap().id();
        let b = follower.lease_grant(TTL, None).await.unwrap().id();
        let b_keeper = KeepAliveLoop::start(cluster.client(followers[1]).await, b);
        for key in ["x/a1", "x/a2", "x/a3", "x/free", "x/moved"] {
            put_leased(&mut follower, key, a).await;
        }
        put_leased(&mut follower, "x/b1", b).await;
        // x/free leaves its lease; x/moved moves to lease b.
        put_leased(&mut leader, "x/free", 0).await;
        put_leased(&mut leader, "x/moved", b).await;
        assert_eq!(time_to_live(&mut leader, a).await.2, strings(&["x/a1", "x/a2", "x/a3"]), "keys of a");
        assert_eq!(time_to_live(&mut leader, b).await.2, strings(&["x/b1", "x/moved"]), "keys of b");

        let start_revision = current_revision(&mut follower).await;
        let mut watch = watch_prefix(&mut leader, "x/", start_revision + 1).await;

        // Lease a expires: its three keys go, in one revision, and nothing else.
        let expired = next_events(&mut watch, "expiry of lease a").await;
        let a_expired_after = before_grant.elapsed();
        let revision =
            assert_deletes_in_one_revision(&expired, &["x/a1", "x/a2", "x/a3"], "expiry of lease a");
        assert_eq!(revision, start_revision + 1, "the expiry is the next revision");
        assert!(a_expired_after >= secs(TTL), "lease a expired after {a_expired_after:?}, before its TTL");
        assert!(
            a_expired_after <= secs(TTL) + ELECTION_TIMEOUT + EXPIRY_SLACK,
            "lease a expired only after {a_expired_after:?}"
        );
        assert_eq!(prefix_keys(&mut follower, "x/").await, strings(&["x/b1", "x/free", "x/moved"]));
        assert_lease_gone(&mut follower, a, "after lease a expired").await;
        let listed = lease_ids(&mut follower).await;
        assert!(!listed.contains(&a) && listed.contains(&b), "Leases after a expired: {listed:?}");

        // Lease b is kept alive well past its TTL: nothing else is deleted.
        tokio::time::sleep(secs(TTL) + ELECTION_TIMEOUT).await;
        assert_eq!(prefix_keys(&mut follower, "x/").await, strings(&["x/b1", "x/free", "x/moved"]));
        assert_eq!(current_revision(&mut follower).await, revision, "nothing was written since a expired");
        let b_stats = b_keeper.finish().await;
        let b_ttls = stream_ttls(&b_stats.answers_after(before_grant));
        assert!(b_ttls.len() >= 6, "keep-alives of b answered: {b_stats:?}");
        assert!(
            b_ttls.iter().all(|ttl| *ttl == TTL),
            "keep-alive answers carry the granted TTL: {b_stats:?}"
        );
        assert!(b_stats.errors.is_empty(), "keep-alive errors: {b_stats:?}");

        // Once no longer kept alive, b expires and takes the moved key with it.
        let last_keep_alive = b_stats.last_answer();
        let expired = next_events(&mut watch, "expiry of lease b").await;
        let b_expired_after = last_keep_alive.elapsed();
        let b_revision = assert_deletes_in_one_revision(&expired, &["x/b1", "x/moved"], "expiry of lease b");
        assert_eq!(b_revision, revision + 1);
        assert!(
            b_expired_after + EARLY_TOLERANCE >= secs(TTL),
            "lease b expired {b_expired_after:?} after its last keep-alive"
        );
        assert!(
            b_expired_after <= secs(TTL) + ELECTION_TIMEOUT + EXPIRY_SLACK,
            "b expired after {b_expired_after:?}"
        );
        let left = follower.get("x/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(keys(&left), strings(&["x/free"]), "only the key put without a lease is left");
        assert_eq!(left.kvs()[0].lease(), 0);
        assert!(lease_ids(&mut leader).await.is_disjoint(&[a, b].into_iter().collect()));
        assert_lease_gone(&mut follower, b, "after lease b expired").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_deletes_keys_in_one_revision() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (leader_index, followers) = roles(&cluster).await;
        let mut leader = cluster.client(leader_index).await;
        let mut follower = cluster.client(followers[0]).await;
        let mut watcher = cluster.client(followers[1]).await;

        let lease = leader.lease_grant(60, None).await.unwrap().id();
        let empty = leader.lease_grant(60, None).await.unwrap().id();
        for key in ["r/3", "r/1", "r/2"] {
            put_leased(&mut follower, key, lease).await;
        }
        put_leased(&mut follower, "r/other", 0).await;
        let before = current_revision(&mut follower).await;
        let mut watch = watch_prefix(&mut watcher, "r/", before + 1).await;

        let revoked = follower.lease_revoke(lease).await.expect("revoke through a follower");
        let revoked_at = revoked.header().expect("revoke answer has a header").revision();
        assert_eq!(revoked_at, before + 1, "a revoke takes exactly one revision");
        assert_eq!(prefix_keys(&mut leader, "r/").await, strings(&["r/other"]));
        let events = next_events(&mut watch, "revoke").await;
        let revision = assert_deletes_in_one_revision(&events, &["r/1", "r/2", "r/3"], "revoke");
        assert_eq!(revision, revoked_at, "the deletes carry the revoke's revision");

        for (client, via) in [(&mut leader, "leader"), (&mut follower, "follower")] {
            assert_eq!(
                time_to_live(client, lease).await,
                (-1, 0, Vec::new()),
                "TimeToLive after revoke via {via}"
            );
            assert!(!lease_ids(client).await.contains(&lease), "Leases after revoke via {via}");
            assert_status(
                client.lease_revoke(lease).await,
                Code::NotFound,
                LEASE_NOT_FOUND,
                &format!("revoke again via {via}"),
            );
            let put = client.put("r/late", "v", Some(PutOptions::new().with_lease(lease))).await;
            assert_status(
                put,
                Code::NotFound,
                LEASE_NOT_FOUND,
                &format!("put with a revoked lease via {via}"),
            );
        }
        let answers = raw_keep_alive(&cluster.client_url(followers[0]), &[lease]).await;
        assert_eq!(answers.expect("raw keep-alive"), [(lease, 0)], "keep-alive of a revoked lease");

        // Revoking a lease without keys changes no key and takes no revision.
        let revoked = leader.lease_revoke(empty).await.expect("revoke a lease without keys");
        assert_eq!(revoked.header().unwrap().revision(), revoked_at, "no revision for a revoke without keys");
        assert_lease_gone(&mut follower, empty, "after revoking the lease without keys").await;
        assert_eq!(
            current_revision(&mut follower).await,
            revoked_at,
            "the store revision moved by one in all"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_through_a_follower_survives_a_leader_crash() {
    const TTL: i64 = 3;
    bounded(TEST_LIMIT, async {
        let mut cluster = start(ClusterOptions::default()).await;
        let (old_leader, followers) = roles(&cluster).await;
        let (keeper_member, other) = (followers[0], followers[1]);
        let mut via = cluster.client(keeper_member).await;

        let lease = via.lease_grant(TTL, None).await.unwrap().id();
        put_leased(&mut via, "ka/1", lease).await;
        put_leased(&mut via, "ka/2", lease).await;
        let keeper = KeepAliveLoop::start(via.clone(), lease);
        keeper.wait_answers(3).await;

        cluster.kill(old_leader).expect("kill the leader");
        let killed_at = Instant::now();
        // Keep the lease alive for three TTLs after the crash.
        tokio::time::sleep(3 * secs(TTL) + ELECTION_TIMEOUT).await;
        let mut other_client = cluster.client(other).await;
        let stats = keeper.stats();
        let new_leader = cluster.leader().await.expect("a new leader");
        assert_ne!(new_leader, old_leader);

        let after_kill = stream_ttls(&stats.answers_after(killed_at + 2 * ELECTION_TIMEOUT));
        assert!(
            after_kill.len() >= 6 && after_kill.iter().all(|ttl| *ttl == TTL),
            "keep-alives answered with the granted TTL after the new leader took over: {stats:?}"
        );
        let remaining = stats.answers.iter().map(|(_, ttl)| *ttl).filter(|ttl| *ttl != TTL && *ttl != -2);
        assert_eq!(remaining.count(), 0, "no keep-alive answered anything but the granted TTL: {stats:?}");
        assert_eq!(
            prefix_keys(&mut other_client, "ka/").await,
            strings(&["ka/1", "ka/2"]),
            "keys kept alive"
        );
        let (ttl, granted, attached) = time_to_live(&mut other_client, lease).await;
        assert!(ttl > 0, "TimeToLive of the kept-alive lease after the crash: {ttl}");
        assert_eq!((granted, attached), (TTL, strings(&["ka/1", "ka/2"])));

        // Stop keeping alive: the lease now expires.
        let stats = keeper.finish().await;
        let last_keep_alive = stats.last_answer();
        let gone = wait_keys(
            &other_client,
            "ka/",
            &[],
            secs(TTL) + ELECTION_TIMEOUT + EXPIRY_SLACK,
            "keys of the lease no longer kept alive are deleted",
        )
        .await;
        let expired_after = gone - last_keep_alive;
        assert!(
            expired_after + EARLY_TOLERANCE >= secs(TTL),
            "expired {expired_after:?} after the last keep-alive"
        );
        assert_lease_gone(&mut other_client, lease, "after the lease expired").await;
        eprintln!(
            "keep-alive loop: {} answers, {} streams, errors {:?}; expired {expired_after:?} after the last",
            stats.answers.len(),
            stats.opened,
            stats.errors
        );
    })
    .await;
}

/// etcd's rule: a new leader gives every lease a full TTL plus an election timeout
/// from the moment it leads, because it never saw the keep-alives the old leader
/// got. Here the followers' own deadlines for the lease are long past (it was kept
/// alive through the old leader for more than a TTL); the client's last keep-alive
/// comes just before the crash and its next one only after the new leader has led
/// for a few expiry checks, within one TTL of the last. The lease must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_extends_leases_it_never_saw_kept_alive() {
    const TTL: i64 = 6;
    /// How long the new leader leads before the client's next keep-alive: more than
    /// two of its 250 ms expiry checks.
    const LEADING_BEFORE_RESUME: Duration = Duration::from_millis(600);
    bounded(TEST_LIMIT, async {
        let mut cluster = start(ClusterOptions::default()).await;
        let (old_leader, followers) = roles(&cluster).await;
        let url = cluster.client_url(followers[0]);
        let mut client = cluster.client(followers[1]).await;

        let granted = Instant::now();
        let lease = client.lease_grant(TTL, None).await.unwrap().id();
        put_leased(&mut client, "nl/1", lease).await;
        put_leased(&mut client, "nl/2", lease).await;
        // Kept alive through a follower, i.e. by the old leader, for more than a TTL.
        let mut last_answer;
        loop {
            let answers = raw_keep_alive(&url, &[lease]).await.expect("keep-alive before the crash");
            assert_eq!(answers, [(lease, TTL)], "keep-alive before the crash");
            last_answer = Instant::now();
            if granted.elapsed() > secs(TTL) + Duration::from_millis(500) {
                break;
            }
            tokio::time::sleep(KEEPALIVE_EVERY).await;
        }

        cluster.kill(old_leader).expect("kill the leader");
        let new_leader = cluster.leader().await.expect("a new leader");
        assert_ne!(new_leader, old_leader);
        tokio::time::sleep(LEADING_BEFORE_RESUME).await;
        let gap = last_answer.elapsed();
        assert!(
            gap < secs(TTL) - Duration::from_millis(500),
            "the election took too long for this test: {gap:?} without keep-alives (TTL {TTL} s)"
        );
        let answers = raw_keep_alive(&url, &[lease]).await.expect("keep-alive after the crash");
        assert_eq!(
            answers,
            [(lease, TTL)],
            "the first keep-alive after the crash, {gap:?} after the previous one, finds the lease"
        );
        assert_eq!(prefix_keys(&mut client, "nl/").await, strings(&["nl/1", "nl/2"]), "keys of the lease");
        let (ttl, granted_ttl, attached) = time_to_live(&mut client, lease).await;
        assert!(ttl > 0, "TimeToLive after the failover: {ttl}");
        assert_eq!((granted_ttl, attached), (TTL, strings(&["nl/1", "nl/2"])));
    })
    .await;
}

/// Sends one keep-alive through the first running member that answers; returns the TTL.
async fn keep_alive_once(cluster: &Cluster, lease: i64) -> i64 {
    let mut failures = Vec::new();
    for index in (0..cluster.len()).filter(|index| cluster.is_running(*index)) {
        match raw_keep_alive(&cluster.client_url(index), &[lease]).await {
            Ok(answers) if answers.len() == 1 => return answers[0].1,
            other => failures.push(format!("member {index}: {other:?}")),
        }
    }
    panic!("no member answered a keep-alive: {failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_restarting_every_member() {
    const TTL: i64 = 10;
    bounded(TEST_LIMIT, async {
        let mut cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(0).await;
        let lease = client.lease_grant(TTL, None).await.unwrap().id();
        let revoked = client.lease_grant(TTL, None).await.unwrap().id();
        put_leased(&mut client, "rs/1", lease).await;
        put_leased(&mut client, "rs/2", lease).await;
        client.lease_revoke(revoked).await.unwrap();
        drop(client);

        // Members 0 and 1 down together (quorum lost), then back; then member 2. A
        // keep-alive after each step keeps the lease from expiring on the way.
        let mut last = Instant::now();
        let mut longest_gap = Duration::ZERO;
        for step in ["stop 0", "stop 1", "restart 0", "restart 1", "stop 2", "restart 2"] {
            let (verb, index) = step.split_once(' ').unwrap();
            let index: usize = index.parse().unwrap();
            if verb == "stop" {
                cluster.stop(index).await.unwrap_or_else(|e| panic!("{step}: {e:#}"));
                continue;
            }
            cluster.restart(index).await.unwrap_or_else(|e| panic!("{step}: {e:#}"));
            longest_gap = longest_gap.max(last.elapsed());
            let ttl = keep_alive_once(&cluster, lease).await;
            assert_eq!(ttl, TTL, "keep-alive after {step} (gap {:?})", last.elapsed());
            last = Instant::now();
        }
        assert!(longest_gap < secs(TTL), "restarts took {longest_gap:?} between keep-alives, over the TTL");

        for index in 0..cluster.len() {
            let mut client = cluster.client(index).await;
            let listed = lease_ids(&mut client).await;
            assert_eq!(listed, [lease].into_iter().collect(), "Leases on restarted member {index}");
            let (ttl, granted, attached) = time_to_live(&mut client, lease).await;
            assert!(ttl > 0 && ttl <= TTL, "TimeToLive on member {index}: {ttl}");
            assert_eq!((granted, attached), (TTL, strings(&["rs/1", "rs/2"])), "member {index}");
        }

        // And it still expires.
        let client = cluster.client(1).await;
        let gone = wait_keys(
            &client,
            "rs/",
            &[],
            secs(TTL) + ELECTION_TIMEOUT + EXPIRY_SLACK,
            "restored lease expires",
        )
        .await;
        let expired_after = gone - last;
        assert!(
            expired_after + EARLY_TOLERANCE >= secs(TTL),
            "expired {expired_after:?} after the last keep-alive"
        );
        let mut client = cluster.client(2).await;
        assert_lease_gone(&mut client, lease, "after the restored lease expired").await;
        assert!(lease_ids(&mut client).await.is_empty());
    })
    .await;
}

/// What one etcdctl run printed.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

async fn etcdctl(program: &Path, endpoints: &str, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(program);
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=5s", "--command-timeout=10s"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(30), command.output()).await {
        Ok(output) => output.expect("etcdctl runs"),
        Err(_) => panic!("etcdctl {args:?} did not finish within 30 s"),
    };
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn etcdctl_ok(program: &Path, endpoints: &str, args: &[&str]) -> String {
    let run = etcdctl(program, endpoints, args).await;
    assert!(run.success, "etcdctl {args:?} failed: {run:?}");
    run.stdout
}

/// The hex id in `lease <hex> granted with TTL(<n>s)`.
fn granted_id(line: &str, ttl: i64) -> String {
    let words: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!(words.len(), 5, "grant output: {line:?}");
    assert_eq!(
        (words[0], words[2], words[3], words[4]),
        ("lease", "granted", "with", &*format!("TTL({ttl}s)"))
    );
    assert_eq!(words[1].len(), 16, "16 hex digits: {line:?}");
    i64::from_str_radix(words[1], 16).unwrap_or_else(|_| panic!("hex id in {line:?}"));
    words[1].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_commands() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let host_ports: Vec<String> =
            cluster.client_urls().iter().map(|url| url.trim_start_matches("http://").to_string()).collect();
        let all = host_ports.join(",");

        let id = granted_id(&etcdctl_ok(&program, &all, &["lease", "grant", "60"]).await, 60);
        let short = granted_id(&etcdctl_ok(&program, &all, &["lease", "grant", "1"]).await, TTL_MIN);
        assert_eq!(etcdctl_ok(&program, &all, &["put", "--lease", &id, "el/a", "1"]).await, "OK\n");
        // Through each member alone too.
        for (index, endpoint) in host_ports.iter().enumerate() {
            let key = format!("el/m{index}");
            assert_eq!(
                etcdctl_ok(&program, endpoint, &["put", &format!("--lease={id}"), &key, "x"]).await,
                "OK\n"
            );
        }
        let unknown = etcdctl(&program, &all, &["put", "--lease=4242", "el/z", "1"]).await;
        assert!(
            !unknown.success && unknown.stderr.contains(LEASE_NOT_FOUND),
            "put with unknown lease: {unknown:?}"
        );

        let with_keys = etcdctl_ok(&program, &all, &["lease", "timetolive", &id, "--keys"]).await;
        let prefix = format!("lease {id} granted with TTL(60s), remaining(");
        let rest =
            with_keys.strip_prefix(&prefix).unwrap_or_else(|| panic!("timetolive --keys: {with_keys:?}"));
        let (remaining, keys_part) = rest.split_once("s)").expect("remaining(<n>s)");
        let remaining: i64 = remaining.parse().expect("remaining seconds");
        assert!((50..=60).contains(&remaining), "remaining {remaining} in {with_keys:?}");
        assert_eq!(keys_part, ", attached keys([el/a el/m0 el/m1 el/m2])\n", "{with_keys:?}");
        for endpoint in &host_ports {
            let plain = etcdctl_ok(&program, endpoint, &["lease", "timetolive", &id]).await;
            assert!(
                plain.starts_with(&prefix) && plain.ends_with("s)\n"),
                "timetolive via {endpoint}: {plain:?}"
            );
        }

        let listed = etcdctl_ok(&program, &all, &["lease", "list"]).await;
        let mut lines: Vec<&str> = listed.lines().collect();
        assert_eq!(lines.first(), Some(&"found 2 leases"), "{listed:?}");
        lines.remove(0);
        lines.sort();
        let mut expected = vec![id.as_str(), short.as_str()];
        expected.sort();
        assert_eq!(lines, expected, "{listed:?}");

        for endpoint in &host_ports {
            let kept = etcdctl_ok(&program, endpoint, &["lease", "keep-alive", "--once", &id]).await;
            assert_eq!(kept, format!("lease {id} keepalived with TTL(60)\n"), "keep-alive via {endpoint}");
        }
        let missing = etcdctl(&program, &all, &["lease", "keep-alive", "--once", "4242"]).await;
        assert!(!missing.success, "keep-alive of an unknown lease: {missing:?}");
        assert!(missing.stderr.contains(LEASE_NOT_FOUND), "keep-alive of an unknown lease: {missing:?}");

        assert_eq!(
            etcdctl_ok(&program, &all, &["lease", "revoke", &id]).await,
            format!("lease {id} revoked\n")
        );
        assert_eq!(
            etcdctl_ok(&program, &all, &["get", "--prefix", "el/"]).await,
            "",
            "keys gone with the lease"
        );
        let gone = etcdctl_ok(&program, &all, &["lease", "timetolive", &id]).await;
        assert_eq!(gone, format!("lease {id} already expired\n"));
        let again = etcdctl(&program, &all, &["lease", "revoke", &id]).await;
        assert!(!again.success && again.stderr.contains(LEASE_NOT_FOUND), "revoke again: {again:?}");
        assert_eq!(
            etcdctl_ok(&program, &all, &["lease", "list"]).await,
            format!("found 1 leases\n{short}\n")
        );
    })
    .await;
}
