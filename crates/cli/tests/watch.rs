//! etcd's Watch through the Rust `etcd-client` against real clusters: history
//! replay, prev_kv, filters, key/range/prefix/from-key watchers on one stream,
//! watch ids, cancel, compaction, progress, the Kubernetes list-then-watch pattern
//! under concurrent optimistic writers (also across a leader kill), a slow
//! consumer that must catch up from disk without stalling anyone else, and a
//! replay of megabytes of history to a client with default message limits.
//!
//! The expectations are etcd's: run with `FIVEFOLD_TEST_BIN` naming a wrapper
//! around a reference etcd to check the tests themselves.
//!
//! Each test starts its own cluster, so store revisions are exact: an empty store
//! is at revision 1 and the first write makes revision 2.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, header_revision, next_watch_response, poll_until, start, text, watch_revision};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Event, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use testkit::{Cluster, ClusterOptions};

/// Bound on one semantic test.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Bound on waiting for one expected watch response.
const RESPONSE_LIMIT: Duration = Duration::from_secs(10);
/// etcd 3.5's watch id of a progress response that speaks for the whole stream.
const PROGRESS_ALL: i64 = -1;
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

// ---------------------------------------------------------------------------
// Comparable shapes of key-values and events.

/// A key-value as these tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kv {
    key: String,
    value: String,
    create: i64,
    modified: i64,
    version: i64,
}

fn kv(kv: &KeyValue) -> Kv {
    Kv {
        key: text(kv.key()),
        value: text(kv.value()),
        create: kv.create_revision(),
        modified: kv.mod_revision(),
        version: kv.version(),
    }
}

/// A watch event as these tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    put: bool,
    kv: Kv,
    prev: Option<Kv>,
}

fn change(event: &Event) -> Change {
    Change {
        put: event.event_type() == EventType::Put,
        kv: kv(event.kv().expect("a watch event carries a key-value")),
        prev: event.prev_kv().map(kv),
    }
}

fn put(key: &str, value: &str, create: i64, modified: i64, version: i64, prev: Option<Kv>) -> Change {
    Change { put: true, kv: stored(key, value, create, modified, version), prev }
}

/// A DELETE event as etcd sends it: the key and the deleting revision, nothing else.
fn delete(key: &str, modified: i64, prev: Option<Kv>) -> Change {
    Change { put: false, kv: stored(key, "", 0, modified, 0), prev }
}

fn stored(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Kv {
    Kv { key: key.to_string(), value: value.to_string(), create, modified, version }
}

fn without_prev(changes: &[Change]) -> Vec<Change> {
    changes.iter().map(|c| Change { prev: None, ..c.clone() }).collect()
}

/// A progress response: no events, not a create or cancel answer.
fn is_progress(response: &WatchResponse) -> bool {
    response.events().is_empty() && !response.created() && !response.canceled()
}

// ---------------------------------------------------------------------------
// Stream helpers.

/// Opens a stream with one watcher and returns it with the watcher's id, after
/// checking the create answer.
async fn open(client: &mut Client, key: &str, options: WatchOptions) -> (WatchStream, i64) {
    let mut stream = client.watch(key, Some(options)).await.expect("open watch stream");
    let created = next_watch_response(&mut stream, RESPONSE_LIMIT, "create answer").await;
    assert!(
        created.created() && !created.canceled() && created.events().is_empty(),
        "create answer for {key}: {created:?}"
    );
    (stream, created.watch_id())
}

/// Adds a watcher to an open stream and returns the create answer.
async fn add(stream: &mut WatchStream, key: &str, options: WatchOptions) -> WatchResponse {
    stream.watch(key, Some(options)).await.expect("send create request");
    next_watch_response(stream, RESPONSE_LIMIT, "create answer").await
}

/// Reads `stream` until it has `count` events for watcher `id`; other responses
/// are returned too, in order.
async fn read_events(stream: &mut WatchStream, id: i64, count: usize) -> (Vec<Change>, Vec<WatchResponse>) {
    let mut changes = Vec::new();
    let mut responses = Vec::new();
    while changes.len() < count {
        let what = format!("event {} of {count} for watcher {id}", changes.len() + 1);
        let response = next_watch_response(stream, RESPONSE_LIMIT, &what).await;
        if response.watch_id() == id {
            changes.extend(response.events().iter().map(change));
        }
        responses.push(response);
    }
    (changes, responses)
}

/// Asks for progress until a stream-wide progress answer reports `revision` or
/// later, and returns every response read before it. In etcd 3.5, such an answer
/// comes once every watcher on the stream has been sent all events up to its
/// revision, so nothing at or below `revision` may arrive after it. (etcd 3.4
/// answers at once, even for a watcher still replaying, so callers first read the
/// events they expect and use this only to show that nothing else follows.)
async fn drain_until_progress(stream: &mut WatchStream, revision: i64) -> Vec<WatchResponse> {
    let deadline = Instant::now() + RESPONSE_LIMIT;
    let mut before = Vec::new();
    loop {
        stream.request_progress().await.expect("send progress request");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let what = format!("progress answer at or after revision {revision}");
            let response = next_watch_response(stream, left, &what).await;
            if response.watch_id() == PROGRESS_ALL && is_progress(&response) {
                if watch_revision(&response) >= revision {
                    return before;
                }
                break;
            }
            before.push(response);
        }
        tokio::time::sleep(common::POLL_INTERVAL).await;
    }
}

/// Events per watcher id in `responses`.
fn by_watcher(responses: &[WatchResponse]) -> BTreeMap<i64, Vec<Change>> {
    let mut out: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
    for response in responses {
        if !response.events().is_empty() {
            out.entry(response.watch_id()).or_default().extend(response.events().iter().map(change));
        }
    }
    out
}

/// A member that is not the leader.
async fn follower(cluster: &Cluster) -> (usize, usize) {
    let leader = cluster.leader().await.expect("leader");
    ((leader + 1) % cluster.len(), leader)
}

async fn put_ok(client: &mut Client, key: &str, value: &str) -> i64 {
    let response = client.put(key, value, None).await.unwrap_or_else(|e| panic!("put {key}: {e}"));
    response.header().expect("put answer has a header").revision()
}

// ---------------------------------------------------------------------------
// 2. Semantics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_an_old_revision_with_prev_kv_and_filters() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (f, leader) = follower(&cluster).await;
        let mut writer = cluster.client(leader).await;
        let mut reader = cluster.client(f).await;

        assert_eq!(put_ok(&mut writer, "h/a", "1").await, 2);
        assert_eq!(put_ok(&mut writer, "h/b", "1").await, 3);
        assert_eq!(put_ok(&mut writer, "h/a", "2").await, 4);
        let deleted = writer.delete("h/b", None).await.unwrap();
        assert_eq!((deleted.deleted(), deleted.header().unwrap().revision()), (1, 5));
        assert_eq!(put_ok(&mut writer, "h/c", "1").await, 6);
        assert_eq!(put_ok(&mut writer, "other", "x").await, 7, "outside the watched prefix");

        let mut history = vec![
            put("h/b", "1", 3, 3, 1, None),
            put("h/a", "2", 2, 4, 2, Some(stored("h/a", "1", 2, 2, 1))),
            delete("h/b", 5, Some(stored("h/b", "1", 3, 3, 1))),
            put("h/c", "1", 6, 6, 1, None),
        ];
        let from_3 = || WatchOptions::new().with_prefix().with_start_revision(3);

        // Replay with prev_kv, on a follower: the past, in order, then nothing else.
        let (mut stream, id) = open(&mut reader, "h/", from_3().with_prev_key()).await;
        let (got, _) = read_events(&mut stream, id, history.len()).await;
        assert_eq!(got, history, "replay from revision 3 with prev_kv");
        let extra = drain_until_progress(&mut stream, 7).await;
        assert!(by_watcher(&extra).is_empty(), "events beyond the history: {extra:?}");
        // New writes follow the replay on the same watcher.
        assert_eq!(put_ok(&mut writer, "h/a", "3").await, 8);
        let (live, _) = read_events(&mut stream, id, 1).await;
        history.push(put("h/a", "3", 2, 8, 3, Some(stored("h/a", "2", 2, 4, 2))));
        assert_eq!(live, history[4..], "a live event after the replay");

        // Without prev_kv: the same events, no previous key-values.
        let (mut plain, id) = open(&mut reader, "h/", from_3()).await;
        let (got, _) = read_events(&mut plain, id, history.len()).await;
        assert_eq!(got, without_prev(&history), "replay from revision 3 without prev_kv");
        assert!(by_watcher(&drain_until_progress(&mut plain, 8).await).is_empty());

        // NOPUT: deletes only. NODELETE: puts only. Both: nothing.
        let filters = [
            (vec![WatchFilterType::NoPut], vec![history[2].clone()]),
            (
                vec![WatchFilterType::NoDelete],
                vec![history[0].clone(), history[1].clone(), history[3].clone(), history[4].clone()],
            ),
            (vec![WatchFilterType::NoPut, WatchFilterType::NoDelete], vec![]),
        ];
        for (filter, expected) in filters {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(3)
                .with_prev_key()
                .with_filters(filter.clone());
            let (mut stream, id) = open(&mut reader, "h/", options).await;
            let (got, _) = read_events(&mut stream, id, expected.len()).await;
            let after = drain_until_progress(&mut stream, 8).await;
            assert_eq!(got, expected, "filters {filter:?}");
            assert!(by_watcher(&after).is_empty(), "filters {filter:?}: unexpected {after:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_range_prefix_and_from_key_watchers_share_one_stream() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (f, leader) = follower(&cluster).await;
        let mut writer = cluster.client(leader).await;
        let mut reader = cluster.client(f).await;

        // Server-chosen ids on one stream: 0, 1, 2, 3, in the order of the requests.
        let (mut stream, first) = open(&mut reader, "r/b", WatchOptions::new()).await;
        assert_eq!(first, 0, "the first server-chosen watch id on a stream is 0");
        let kinds = [
            ("r/b", WatchOptions::new().with_range("r/d")),
            ("r/", WatchOptions::new().with_prefix()),
            ("r/c", WatchOptions::new().with_from_key()),
        ];
        for (expected_id, (key, options)) in (1..).zip(kinds) {
            let created = add(&mut stream, key, options).await;
            assert!(created.created() && !created.canceled(), "{created:?}");
            assert_eq!(created.watch_id(), expected_id, "server-chosen id of watcher on {key}");
        }

        // Revisions: q 2, r/a 3, r/b 4, r/b0 5, r/c 6, r/d 7, s 8, delete r/b 9, r/b 10.
        for (key, value) in
            [("q", "1"), ("r/a", "1"), ("r/b", "1"), ("r/b0", "1"), ("r/c", "1"), ("r/d", "1"), ("s", "1")]
        {
            put_ok(&mut writer, key, value).await;
        }
        assert_eq!(writer.delete("r/b", None).await.unwrap().header().unwrap().revision(), 9);
        assert_eq!(put_ok(&mut writer, "r/b", "2").await, 10);

        let rb1 = put("r/b", "1", 4, 4, 1, None);
        let del_rb = delete("r/b", 9, None);
        let rb2 = put("r/b", "2", 10, 10, 1, None);
        let ra = put("r/a", "1", 3, 3, 1, None);
        let rb0 = put("r/b0", "1", 5, 5, 1, None);
        let rc = put("r/c", "1", 6, 6, 1, None);
        let rd = put("r/d", "1", 7, 7, 1, None);
        let s = put("s", "1", 8, 8, 1, None);
        let expected: BTreeMap<i64, Vec<Change>> = [
            (0, vec![rb1.clone(), del_rb.clone(), rb2.clone()]),
            (1, vec![rb1.clone(), rb0.clone(), rc.clone(), del_rb.clone(), rb2.clone()]),
            (2, vec![ra, rb1.clone(), rb0, rc.clone(), rd.clone(), del_rb.clone(), rb2.clone()]),
            (3, vec![rc, rd, s]),
        ]
        .into_iter()
        .collect();
        let responses = drain_until_progress(&mut stream, 10).await;
        for response in &responses {
            assert!(!response.created() && !response.canceled(), "unexpected answer {response:?}");
        }
        assert_eq!(by_watcher(&responses), expected, "events per watcher id");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_ids_and_cancel() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (f, leader) = follower(&cluster).await;
        let mut writer = cluster.client(leader).await;
        let mut reader = cluster.client(f).await;

        let (mut stream, chosen) = open(&mut reader, "c/k", WatchOptions::new().with_watch_id(7)).await;
        assert_eq!(chosen, 7, "a client-chosen watch id is kept");
        let auto = add(&mut stream, "c/k", WatchOptions::new()).await;
        assert!(auto.created() && !auto.canceled(), "{auto:?}");
        assert_eq!(auto.watch_id(), 0, "server-chosen ids start at 0 beside client-chosen ones");

        let first = put_ok(&mut writer, "c/k", "1").await;
        let responses = drain_until_progress(&mut stream, first).await;
        let event = vec![put("c/k", "1", first, first, 1, None)];
        let expected: BTreeMap<i64, Vec<Change>> = [(0, event.clone()), (7, event)].into_iter().collect();
        assert_eq!(by_watcher(&responses), expected, "both watchers see the put");

        // Cancel 7: a canceled answer for 7, and nothing for it afterwards.
        stream.cancel(7).await.expect("send cancel");
        let canceled = next_watch_response(&mut stream, RESPONSE_LIMIT, "cancel answer").await;
        assert!(
            canceled.canceled() && !canceled.created() && canceled.watch_id() == 7,
            "cancel answer: {canceled:?}"
        );
        assert!(canceled.events().is_empty() && canceled.compact_revision() == 0, "{canceled:?}");
        let second = put_ok(&mut writer, "c/k", "2").await;
        let responses = drain_until_progress(&mut stream, second).await;
        let expected: BTreeMap<i64, Vec<Change>> =
            [(0, vec![put("c/k", "2", first, second, 2, None)])].into_iter().collect();
        assert_eq!(by_watcher(&responses), expected, "only watcher 0 sees the put after the cancel");

        // The freed id can be chosen again.
        let again = add(&mut stream, "c/k", WatchOptions::new().with_watch_id(7)).await;
        assert!(again.created() && !again.canceled() && again.watch_id() == 7, "{again:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_client_chosen_id_is_refused_like_etcd() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (f, leader) = follower(&cluster).await;
        let mut writer = cluster.client(leader).await;
        let mut reader = cluster.client(f).await;
        let (mut stream, id) = open(&mut reader, "d/k", WatchOptions::new().with_watch_id(3)).await;
        assert_eq!(id, 3);
        let refused = add(&mut stream, "d/other", WatchOptions::new().with_watch_id(3)).await;
        // etcd 3.5 (mvcc/watcher.go) answers a taken id with watch_id -1, so that
        // the answer cannot be mistaken for the live watcher being canceled.
        assert_eq!(
            (refused.created(), refused.canceled(), refused.watch_id(), refused.cancel_reason()),
            (true, true, -1, DUPLICATE_WATCH_ID),
            "answer to a duplicate watch id: {refused:?}"
        );
        // The live watcher 3 is untouched and still watches d/k.
        let revision = put_ok(&mut writer, "d/k", "1").await;
        let responses = drain_until_progress(&mut stream, revision).await;
        let expected: BTreeMap<i64, Vec<Change>> =
            [(3, vec![put("d/k", "1", revision, revision, 1, None)])].into_iter().collect();
        assert_eq!(by_watcher(&responses), expected);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_canceled_with_the_compact_revision() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (f, leader) = follower(&cluster).await;
        let mut writer = cluster.client(leader).await;
        let mut reader = cluster.client(f).await;

        // z/a 2, 3, 4; z/b 5; compact at 4.
        for value in ["1", "2", "3"] {
            put_ok(&mut writer, "z/a", value).await;
        }
        assert_eq!(put_ok(&mut writer, "z/b", "1").await, 5);
        writer.compact(4, None).await.expect("compact at 4");
        // The follower applies the compaction soon; a read below it then fails there.
        poll_until(RESPONSE_LIMIT, "follower applied the compaction", || {
            let mut reader = reader.clone();
            async move {
                match reader.get("z/a", Some(GetOptions::new().with_revision(3).with_serializable())).await {
                    Err(_) => Ok(()),
                    Ok(r) => Err(format!("read at 3 still answers {r:?}")),
                }
            }
        })
        .await;

        let options = WatchOptions::new().with_prefix().with_start_revision(3);
        let mut stream = reader.watch("z/", Some(options)).await.expect("open watch");
        let created = next_watch_response(&mut stream, RESPONSE_LIMIT, "create answer").await;
        assert!(created.created() && !created.canceled(), "etcd first accepts the watcher: {created:?}");
        let id = created.watch_id();
        let canceled = next_watch_response(&mut stream, RESPONSE_LIMIT, "compaction answer").await;
        assert_eq!(
            (canceled.watch_id(), canceled.canceled(), canceled.compact_revision(), canceled.events().len()),
            (id, true, 4, 0),
            "a watcher behind the compaction: {canceled:?}"
        );

        // From exactly the compacted revision: the versions kept at 4 and after.
        let from_4 = add(&mut stream, "z/", WatchOptions::new().with_prefix().with_start_revision(4)).await;
        assert!(from_4.created() && !from_4.canceled(), "{from_4:?}");
        let (got, mut responses) = read_events(&mut stream, from_4.watch_id(), 2).await;
        assert_eq!(
            got,
            [put("z/a", "3", 2, 4, 3, None), put("z/b", "1", 5, 5, 1, None)],
            "watch from the compacted revision itself"
        );
        responses.extend(drain_until_progress(&mut stream, 5).await);
        let events: usize = responses.iter().map(|r| r.events().len()).sum();
        assert_eq!(events, 2, "no further events: {responses:?}");
        assert!(
            responses.iter().all(|r| r.watch_id() != id),
            "nothing more for the canceled watcher: {responses:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_and_progress_requests() {
    bounded(TEST_LIMIT, async {
        let options = ClusterOptions::default().arg("--experimental-watch-progress-notify-interval", "200ms");
        let cluster = start(options).await;
        let (f, leader) = follower(&cluster).await;
        let mut writer = cluster.client(leader).await;
        let mut reader = cluster.client(f).await;
        assert_eq!(put_ok(&mut writer, "p/other", "1").await, 2);
        // The follower has applied revision 2 once a linearizable read there says so.
        assert_eq!(header_revision(&reader.get("p/other", None).await.unwrap()), 2);

        let opened = Instant::now();
        let (mut stream, notified) =
            open(&mut reader, "p/idle", WatchOptions::new().with_progress_notify()).await;
        let quiet = add(&mut stream, "p/quiet", WatchOptions::new()).await.watch_id();

        // An idle watcher with progress_notify hears progress at the current
        // revision, at the configured interval (not etcd's 10-minute default).
        let mut progress = 0;
        while progress < 3 {
            let response =
                next_watch_response(&mut stream, Duration::from_secs(3), "progress notification").await;
            assert!(is_progress(&response), "only progress on an idle stream: {response:?}");
            assert_eq!(
                response.watch_id(),
                notified,
                "progress only for watcher {notified}, which asked, not {quiet}: {response:?}"
            );
            assert_eq!(watch_revision(&response), 2, "progress at the current revision: {response:?}");
            progress += 1;
        }
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "3 notifications at 200 ms took {:?}",
            opened.elapsed()
        );

        // A write elsewhere moves the revision the idle watcher reports.
        assert_eq!(put_ok(&mut writer, "p/other", "2").await, 3);
        let deadline = Instant::now() + RESPONSE_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let response = next_watch_response(&mut stream, left, "progress at revision 3").await;
            assert!(is_progress(&response) && response.watch_id() == notified, "{response:?}");
            if watch_revision(&response) == 3 {
                break;
            }
            assert_eq!(watch_revision(&response), 2, "{response:?}");
        }

        // A progress request is answered for the whole stream (watch id -1) with
        // the current revision once its watchers are caught up.
        let (mut other, _) = open(&mut reader, "p/idle", WatchOptions::new()).await;
        other.request_progress().await.unwrap();
        let answer = next_watch_response(&mut other, RESPONSE_LIMIT, "progress answer").await;
        assert!(is_progress(&answer), "{answer:?}");
        assert_eq!((answer.watch_id(), watch_revision(&answer)), (PROGRESS_ALL, 3), "{answer:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_range_or_revoked_lease_is_one_delete_per_key_at_one_revision() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (f, leader) = follower(&cluster).await;
        let mut writer = cluster.client(leader).await;
        let mut reader = cluster.client(f).await;
        for (key, value) in [("d/1", "a"), ("d/2", "b"), ("d/3", "c"), ("e/out", "x")] {
            put_ok(&mut writer, key, value).await;
        }
        let (mut stream, id) =
            open(&mut reader, "d/", WatchOptions::new().with_prefix().with_prev_key().with_start_revision(6))
                .await;
        let deleted = writer.delete("d/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
        assert_eq!((deleted.deleted(), deleted.header().unwrap().revision()), (3, 6));
        let response = next_watch_response(&mut stream, RESPONSE_LIMIT, "the range delete").await;
        assert_eq!(response.watch_id(), id);
        let got: Vec<Change> = response.events().iter().map(change).collect();
        assert_eq!(
            got,
            [
                delete("d/1", 6, Some(stored("d/1", "a", 2, 2, 1))),
                delete("d/2", 6, Some(stored("d/2", "b", 3, 3, 1))),
                delete("d/3", 6, Some(stored("d/3", "c", 4, 4, 1))),
            ],
            "one response with one DELETE per key, all at revision 6"
        );
        assert!(by_watcher(&drain_until_progress(&mut stream, 6).await).is_empty());

        // Revoking a lease deletes its keys in one revision, too (in key order, as etcd).
        let lease = writer.lease_grant(60, None).await.expect("lease grant").id();
        for key in ["l/2", "l/1", "l/3"] {
            writer.put(key, "leased", Some(PutOptions::new().with_lease(lease))).await.unwrap();
        }
        assert_eq!(put_ok(&mut writer, "l/x", "not leased").await, 10);
        let (mut stream, id) = open(
            &mut reader,
            "l/",
            WatchOptions::new().with_prefix().with_prev_key().with_start_revision(11),
        )
        .await;
        writer.lease_revoke(lease).await.expect("lease revoke");
        let response = next_watch_response(&mut stream, RESPONSE_LIMIT, "the lease revoke").await;
        assert_eq!(response.watch_id(), id);
        let got: Vec<Change> = response.events().iter().map(change).collect();
        assert_eq!(
            got,
            [
                delete("l/1", 11, Some(stored("l/1", "leased", 8, 8, 1))),
                delete("l/2", 11, Some(stored("l/2", "leased", 7, 7, 1))),
                delete("l/3", 11, Some(stored("l/3", "leased", 9, 9, 1))),
            ],
            "one response with one DELETE per leased key, all at revision 11"
        );
        assert!(by_watcher(&drain_until_progress(&mut stream, 11).await).is_empty());
        let left = writer.get("l/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(common::keys(&left), ["l/x"]);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 1 and 4. The Kubernetes pattern: optimistic writers, list then watch on a
// follower, with and without a leader kill.

const K8S_PREFIX: &str = "k8s/obj/";
const K8S_SENTINEL: &str = "k8s/obj/~done";
const K8S_OBJECTS: usize = 20;
const K8S_WRITERS: usize = 20;
const K8S_UPDATES: usize = 1_000;
/// Successful updates before the reader lists.
const K8S_LIST_AFTER: usize = 100;
/// Successful updates before the leader is killed (kill variant).
const K8S_KILL_AFTER: usize = 300;
const K8S_TEST_LIMIT: Duration = Duration::from_secs(240);
/// Pause after a failed request, so writers do not spin during an election.
const K8S_BACKOFF: Duration = Duration::from_millis(50);

/// A small deterministic generator (xorshift64*), one per writer.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Put { key: String, value: String },
    Delete { key: String },
}

/// What the writers learned.
#[derive(Debug, Default)]
struct Ledger {
    /// Acknowledged transactions by revision, ops in request order.
    acked: BTreeMap<i64, Vec<Op>>,
    /// Transactions whose outcome is unknown (the request failed).
    ambiguous: usize,
    /// Values written by ambiguous transactions.
    ambiguous_values: BTreeSet<String>,
}

fn object(index: usize) -> String {
    format!("{K8S_PREFIX}{index:02}")
}

/// One optimistic writer: read the object(s), then a Txn that applies only if
/// their mod_revision is still what was read (0 for an absent key, as Kubernetes
/// creates). Mostly single-object updates, some deletes, some two-object Txns.
async fn k8s_writer(id: usize, mut client: Client, ledger: Arc<Mutex<Ledger>>, successes: Arc<AtomicUsize>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1).wrapping_mul(0x1000_0001));
    let mut attempt = 0;
    while successes.load(Ordering::SeqCst) < K8S_UPDATES {
        attempt += 1;
        let first = rng.below(K8S_OBJECTS);
        let keys = if rng.below(100) < 15 {
            vec![object(first), object((first + 1 + rng.below(K8S_OBJECTS - 1)) % K8S_OBJECTS)]
        } else {
            vec![object(first)]
        };
        let mut seen = Vec::new();
        for key in &keys {
            match client.get(key.as_str(), None).await {
                Ok(got) => seen.push(got.kvs().first().map_or(0, |kv| kv.mod_revision())),
                Err(_) => break,
            }
        }
        if seen.len() < keys.len() {
            tokio::time::sleep(K8S_BACKOFF).await;
            continue;
        }
        let value = format!("w{id}-{attempt}");
        let ops: Vec<Op> = if keys.len() == 1 && seen[0] != 0 && rng.below(100) < 15 {
            vec![Op::Delete { key: keys[0].clone() }]
        } else {
            keys.iter().map(|key| Op::Put { key: key.clone(), value: value.clone() }).collect()
        };
        let compares: Vec<Compare> = keys
            .iter()
            .zip(&seen)
            .map(|(key, m)| Compare::mod_revision(key.as_str(), CompareOp::Equal, *m))
            .collect();
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key.as_str(), value.as_str(), None),
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        match client.txn(Txn::new().when(compares).and_then(txn_ops)).await {
            Ok(response) if response.succeeded() => {
                let revision = response.header().expect("txn header").revision();
                let previous = ledger.lock().unwrap().acked.insert(revision, ops);
                assert!(previous.is_none(), "two acknowledged Txns at revision {revision}");
                successes.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {} // lost the race: read again
            Err(_) => {
                {
                    let mut ledger = ledger.lock().unwrap();
                    ledger.ambiguous += 1;
                    ledger.ambiguous_values.insert(value);
                }
                tokio::time::sleep(K8S_BACKOFF).await;
            }
        }
    }
}

/// Reads a watch stream until the sentinel key's event, checking the framing of
/// every response on the way.
async fn k8s_reader(mut stream: WatchStream, id: i64) -> Vec<WatchResponse> {
    let mut responses = Vec::new();
    loop {
        let response =
            next_watch_response(&mut stream, Duration::from_secs(60), "watch on the follower").await;
        assert!(
            response.watch_id() == id && !response.created() && !response.canceled(),
            "unexpected answer on the list-watch stream: {response:?}"
        );
        let done =
            response.events().iter().any(|e| e.kv().is_some_and(|kv| kv.key() == K8S_SENTINEL.as_bytes()));
        responses.push(response);
        if done {
            return responses;
        }
    }
}

type State = BTreeMap<String, Kv>;

fn state_of(kvs: &[KeyValue]) -> State {
    kvs.iter().map(|k| (text(k.key()), kv(k))).collect()
}

/// Checks everything a list-then-watch client relies on: `responses` came from a
/// watch of the prefix from `listed_at + 1` with prev_kv, `listed` is the list at
/// `listed_at`, `final_list` a linearizable list after the sentinel at `sentinel`.
/// Returns the delivered changes in order.
fn check_list_watch(
    ledger: &Ledger,
    listed: State,
    listed_at: i64,
    responses: &[WatchResponse],
    sentinel: i64,
    final_list: &State,
) -> Vec<Change> {
    // Revisions strictly increase; a revision's events come in one response.
    let mut delivered: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
    let mut order = Vec::new();
    let mut last: Option<(i64, usize)> = None;
    for (index, response) in responses.iter().enumerate() {
        for event in response.events() {
            let change = change(event);
            let revision = change.kv.modified;
            assert!(revision > listed_at, "event at {revision} is not after the list at {listed_at}");
            if let Some((previous, in_response)) = last {
                assert!(revision >= previous, "revision {revision} delivered after {previous}");
                if revision == previous {
                    assert_eq!(in_response, index, "events of revision {revision} split across responses");
                }
            }
            last = Some((revision, index));
            delivered.entry(revision).or_default().push(change.clone());
            order.push(change);
        }
    }

    // Every acknowledged revision after the list, exactly as written.
    for (revision, ops) in ledger.acked.range(listed_at + 1..) {
        let Some(changes) = delivered.get(revision) else {
            panic!("acknowledged revision {revision} ({ops:?}) never delivered");
        };
        let got: Vec<Op> = changes
            .iter()
            .map(|c| match c.put {
                true => Op::Put { key: c.kv.key.clone(), value: c.kv.value.clone() },
                false => Op::Delete { key: c.kv.key.clone() },
            })
            .collect();
        assert_eq!(&got, ops, "events of acknowledged revision {revision}");
    }
    // Anything else came from a request whose outcome the writer could not know.
    let extra: Vec<(&i64, &Vec<Change>)> = delivered
        .iter()
        .filter(|(revision, _)| !ledger.acked.contains_key(revision) && **revision != sentinel)
        .collect();
    assert!(
        extra.len() <= ledger.ambiguous,
        "{} unacknowledged revisions delivered but only {} ambiguous writes: {extra:?}",
        extra.len(),
        ledger.ambiguous
    );
    eprintln!("{} revisions from ambiguous writes delivered", extra.len());
    for (revision, changes) in &extra {
        for change in changes.iter().filter(|c| c.put) {
            assert!(
                ledger.ambiguous_values.contains(&change.kv.value),
                "revision {revision} wrote {change:?}, which no writer attempted ambiguously"
            );
        }
    }
    assert_eq!(delivered.keys().next_back(), Some(&sentinel), "the sentinel is the last revision delivered");

    // prev_kv is the key's previous state; replaying the events onto the list
    // gives the final list.
    let mut state = listed;
    for change in &order {
        let revision = change.kv.modified;
        let before = state.get(&change.kv.key).cloned();
        assert_eq!(change.prev, before, "prev_kv of {} at {revision}", change.kv.key);
        if change.put {
            let (create, version) = before.as_ref().map_or((revision, 1), |b| (b.create, b.version + 1));
            assert_eq!((change.kv.create, change.kv.version), (create, version), "{change:?}");
            state.insert(change.kv.key.clone(), change.kv.clone());
        } else {
            assert!(before.is_some(), "DELETE of absent key {change:?}");
            assert_eq!(change.kv, stored(&change.kv.key, "", 0, revision, 0), "DELETE key-value");
            state.remove(&change.kv.key);
        }
    }
    assert_eq!(&state, final_list, "list + watch events != a fresh linearizable list");
    order
}

/// Runs the Kubernetes pattern; with `kill_leader`, SIGKILLs the leader after
/// `K8S_KILL_AFTER` successful updates.
async fn kubernetes_pattern(kill_leader: bool) {
    // With a kill, members snapshot often, so that the killed member comes back
    // through a snapshot and must serve the watch history from it.
    let options = match kill_leader {
        true => ClusterOptions::default().arg("--snapshot-count", 100).arg("--snapshot-catchup-entries", 10),
        false => ClusterOptions::default(),
    };
    let mut cluster = start(options).await;
    let leader = cluster.leader().await.expect("leader");
    let watch_member = (leader + 1) % cluster.len();
    let other_follower = (leader + 2) % cluster.len();
    // Writers go through every member, or only the survivors when the leader dies.
    let write_members: Vec<usize> =
        if kill_leader { vec![watch_member, other_follower] } else { (0..cluster.len()).collect() };
    let mut clients = Vec::new();
    for member in &write_members {
        clients.push(cluster.client(*member).await);
    }
    let mut seed = clients[0].clone();
    for index in 0..K8S_OBJECTS {
        put_ok(&mut seed, &object(index), "seed").await;
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let successes = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..K8S_WRITERS)
        .map(|id| {
            let client = clients[id % clients.len()].clone();
            tokio::spawn(k8s_writer(id, client, ledger.clone(), successes.clone()))
        })
        .collect();

    // List in the middle of the writes, then watch from just after the list, on
    // a follower.
    let count = |n: usize| {
        let successes = successes.clone();
        move || {
            let done = successes.load(Ordering::SeqCst);
            async move {
                if done >= n {
                    Ok(())
                } else {
                    Err(format!("{done} updates"))
                }
            }
        }
    };
    poll_until(Duration::from_secs(60), "first updates", count(K8S_LIST_AFTER)).await;
    let mut reader = cluster.client(watch_member).await;
    let list = reader.get(K8S_PREFIX, Some(GetOptions::new().with_prefix())).await.expect("list");
    let listed_at = header_revision(&list);
    let listed = state_of(list.kvs());
    let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(listed_at + 1);
    let (stream, id) = open(&mut reader, K8S_PREFIX, options).await;
    let reading = tokio::spawn(k8s_reader(stream, id));

    if kill_leader {
        poll_until(Duration::from_secs(120), "updates before the kill", count(K8S_KILL_AFTER)).await;
        cluster.kill(leader).expect("kill the leader");
        eprintln!("killed leader {leader} after {} updates", successes.load(Ordering::SeqCst));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    let mut survivor = cluster.client(other_follower).await;
    let sentinel = put_ok(&mut survivor, K8S_SENTINEL, "done").await;
    let responses = reading.await.expect("reader task");
    let final_list =
        survivor.get(K8S_PREFIX, Some(GetOptions::new().with_prefix())).await.expect("final list");
    assert!(header_revision(&final_list) >= sentinel);

    let ledger = Arc::try_unwrap(ledger).expect("writers are done").into_inner().unwrap();
    eprintln!(
        "{} acknowledged updates, {} ambiguous, list at {listed_at}, sentinel at {sentinel}, {} watch responses, {:?}",
        ledger.acked.len(),
        ledger.ambiguous,
        responses.len(),
        started.elapsed()
    );
    assert!(ledger.acked.len() >= K8S_UPDATES, "{} updates acknowledged", ledger.acked.len());
    let delivered = check_list_watch(
        &ledger,
        listed.clone(),
        listed_at,
        &responses,
        sentinel,
        &state_of(final_list.kvs()),
    );

    if kill_leader {
        // The killed member comes back through a snapshot, and replays the same
        // history from disk.
        let log_before_restart = cluster.log(leader).len();
        cluster.restart(leader).await.expect("restart the killed member");
        let mut back = cluster.client(leader).await;
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(listed_at + 1);
        let (stream, id) = open(&mut back, K8S_PREFIX, options).await;
        let replayed = k8s_reader(stream, id).await;
        let replayed: Vec<Change> = replayed.iter().flat_map(|r| r.events().iter().map(change)).collect();
        assert_eq!(replayed.len(), delivered.len(), "replay on the restarted member");
        assert!(replayed == delivered, "the restarted member replays a different history");
        let log = cluster.log(leader);
        let since_restart = log.get(log_before_restart..).unwrap_or(&log);
        assert!(
            since_restart.contains("installed snapshot"),
            "the restarted member did not catch up through a snapshot; its log since the restart:\n{since_restart}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_list_then_watch_on_a_follower() {
    bounded(K8S_TEST_LIMIT, kubernetes_pattern(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_list_then_watch_across_a_leader_kill() {
    bounded(K8S_TEST_LIMIT, kubernetes_pattern(true)).await;
}

// ---------------------------------------------------------------------------
// 3. A slow consumer.

const SLOW_PREFIX: &str = "slow/";
const SLOW_SENTINEL: &str = "slow/~end";
const SLOW_KEYS: usize = 1_000;
/// Puts per Txn: each revision carries this many events, so that enough events
/// pass the in-memory window (65,536) for the stalled watcher to need the disk.
const SLOW_PUTS_PER_TXN: usize = 8;
const SLOW_TXNS: usize = 15_000;
const SLOW_WRITERS: usize = 32;
/// How far behind an acknowledgement the fast watcher may see a revision.
const FAST_LAG_MAX: Duration = Duration::from_secs(5);
/// Longest any one write may take while the slow watcher holds back.
const ACK_LATENCY_MAX: Duration = Duration::from_secs(5);
const SLOW_TEST_LIMIT: Duration = Duration::from_secs(240);

fn slow_key(index: usize) -> String {
    format!("{SLOW_PREFIX}{:04}", index % SLOW_KEYS)
}

/// The keys Txn `txn` writes, in request order.
fn slow_txn_keys(txn: usize) -> Vec<String> {
    (0..SLOW_PUTS_PER_TXN).map(|j| slow_key(txn * SLOW_PUTS_PER_TXN + j)).collect()
}

/// An acknowledged Txn: its index, revision, when it was acknowledged and how long it took.
struct Ack {
    txn: usize,
    revision: i64,
    at: Instant,
    latency: Duration,
}

async fn slow_writer(mut client: Client, next: Arc<AtomicUsize>) -> Vec<Ack> {
    let mut acks = Vec::new();
    loop {
        let txn = next.fetch_add(1, Ordering::SeqCst);
        if txn >= SLOW_TXNS {
            return acks;
        }
        let value = txn.to_string();
        let ops: Vec<TxnOp> =
            slow_txn_keys(txn).iter().map(|key| TxnOp::put(key.as_str(), value.as_str(), None)).collect();
        let sent = Instant::now();
        let response = client.txn(Txn::new().and_then(ops)).await.unwrap_or_else(|e| {
            panic!("write {txn} was not acknowledged while a watcher was slow: {e}");
        });
        assert!(response.succeeded());
        let revision = response.header().expect("txn header").revision();
        acks.push(Ack { txn, revision, at: Instant::now(), latency: sent.elapsed() });
    }
}

/// Reads a stream until the sentinel; returns each response with when it arrived.
async fn read_to_sentinel(
    mut stream: WatchStream,
    id: i64,
    limit: Duration,
    what: &str,
) -> Vec<(Instant, WatchResponse)> {
    let mut out = Vec::new();
    loop {
        let response = next_watch_response(&mut stream, limit, what).await;
        let at = Instant::now();
        assert!(
            response.watch_id() == id && !response.created() && !response.canceled(),
            "{what}: unexpected answer {response:?}"
        );
        let done =
            response.events().iter().any(|e| e.kv().is_some_and(|kv| kv.key() == SLOW_SENTINEL.as_bytes()));
        out.push((at, response));
        if done {
            return out;
        }
    }
}

/// Checks that `responses` hold exactly the acknowledged revisions and the
/// sentinel, in order, each whole in one response, with the right values and
/// (if `prev_kv`) previous key-values. Returns the arrival time per revision.
fn check_slow_delivery(
    what: &str,
    responses: &[(Instant, WatchResponse)],
    acks: &BTreeMap<i64, usize>,
    sentinel: i64,
    prev_kv: bool,
) -> BTreeMap<i64, Instant> {
    let mut arrived: BTreeMap<i64, Instant> = BTreeMap::new();
    let mut events_of: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
    let mut last: Option<(i64, usize)> = None;
    for (index, (at, response)) in responses.iter().enumerate() {
        for event in response.events() {
            let change = change(event);
            let revision = change.kv.modified;
            if let Some((previous, in_response)) = last {
                assert!(revision >= previous, "{what}: revision {revision} after {previous}");
                assert!(
                    revision > previous || in_response == index,
                    "{what}: revision {revision} split across responses"
                );
            }
            last = Some((revision, index));
            arrived.entry(revision).or_insert(*at);
            events_of.entry(revision).or_default().push(change);
        }
    }
    let expected: BTreeSet<i64> = acks.keys().copied().chain([sentinel]).collect();
    let got: BTreeSet<i64> = events_of.keys().copied().collect();
    let missing: Vec<&i64> = expected.difference(&got).take(10).collect();
    let unexpected: Vec<&i64> = got.difference(&expected).take(10).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{what}: {} revisions delivered, {} expected; missing (first 10) {missing:?}, unexpected {unexpected:?}",
        got.len(),
        expected.len()
    );
    let mut latest: BTreeMap<String, Kv> = BTreeMap::new();
    for (revision, changes) in &events_of {
        if *revision == sentinel {
            continue;
        }
        let txn = acks[revision];
        let keys: Vec<String> = changes.iter().map(|c| c.kv.key.clone()).collect();
        assert_eq!(keys, slow_txn_keys(txn), "{what}: keys of revision {revision}");
        for change in changes {
            let before = latest.get(&change.kv.key).cloned();
            let (create, version) = before.as_ref().map_or((*revision, 1), |b| (b.create, b.version + 1));
            let expected = stored(&change.kv.key, &txn.to_string(), create, *revision, version);
            assert!(change.put && change.kv == expected, "{what}: {change:?}, expected {expected:?}");
            let expected_prev = if prev_kv { before } else { None };
            assert_eq!(change.prev, expected_prev, "{what}: prev_kv of {} at {revision}", change.kv.key);
            latest.insert(change.kv.key.clone(), change.kv.clone());
        }
    }
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_catches_up_from_disk_without_stalling_others() {
    bounded(SLOW_TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (member, leader) = follower(&cluster).await;
        // Each watcher has its own connection to the same follower.
        let mut slow_client = cluster.client(member).await;
        let mut fast_client = cluster.client(member).await;
        let options = WatchOptions::new().with_prefix().with_prev_key();
        let (slow, slow_id) = open(&mut slow_client, SLOW_PREFIX, options.clone()).await;
        let (fast, fast_id) = open(&mut fast_client, SLOW_PREFIX, options).await;
        let fast_reader = tokio::spawn(read_to_sentinel(fast, fast_id, RESPONSE_LIMIT, "fast watcher"));

        let writer_client = cluster.client(leader).await;
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let writers: Vec<_> = (0..SLOW_WRITERS)
            .map(|_| tokio::spawn(slow_writer(writer_client.clone(), next.clone())))
            .collect();
        let mut acks = Vec::new();
        for writer in writers {
            acks.extend(writer.await.expect("writer task"));
        }
        let written = started.elapsed();
        let mut writer_client = writer_client;
        let sentinel = put_ok(&mut writer_client, SLOW_SENTINEL, "end").await;
        let fast = fast_reader.await.expect("fast reader task");
        eprintln!(
            "{} Txns ({} events) acknowledged in {written:?}; sentinel at {sentinel}",
            acks.len(),
            acks.len() * SLOW_PUTS_PER_TXN
        );

        // Writes kept being acknowledged, and the fast watcher kept up.
        let slowest = acks.iter().map(|a| a.latency).max().unwrap();
        assert!(slowest <= ACK_LATENCY_MAX, "a write took {slowest:?} while a watcher was slow");
        let by_revision: BTreeMap<i64, usize> = acks.iter().map(|a| (a.revision, a.txn)).collect();
        assert_eq!(by_revision.len(), SLOW_TXNS, "one revision per acknowledged Txn");
        let arrived = check_slow_delivery("fast watcher", &fast, &by_revision, sentinel, true);
        let lag = acks.iter().map(|a| arrived[&a.revision].saturating_duration_since(a.at)).max().unwrap();
        eprintln!("fast watcher: {} responses, largest lag behind an acknowledgement {lag:?}", fast.len());
        assert!(lag <= FAST_LAG_MAX, "the fast watcher fell {lag:?} behind an acknowledgement");

        // Now the slow watcher reads: everything, once, in order.
        let reading = Instant::now();
        let slow = read_to_sentinel(slow, slow_id, Duration::from_secs(60), "slow watcher").await;
        let sizes: Vec<usize> = slow.iter().map(|(_, r)| r.events().len()).collect();
        let largest = sizes.iter().max().copied().unwrap_or(0);
        let catch_up = sizes.iter().position(|n| *n >= 1_000).unwrap_or(sizes.len());
        eprintln!(
            "slow watcher: {} responses (largest {largest} events) read in {:?}; {} events in the {catch_up} \
             responses before the first of >= 1,000 events",
            slow.len(),
            reading.elapsed(),
            sizes[..catch_up].iter().sum::<usize>()
        );
        check_slow_delivery("slow watcher", &slow, &by_revision, sentinel, true);
        drop(slow_client);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Replaying a large history.

const BIG_PREFIX: &str = "big/";
const BIG_PUTS: usize = 6_000;
const BIG_VALUE_BYTES: usize = 1_024;
const BIG_WRITERS: usize = 16;

/// A Kubernetes-style re-watch from an old resource version over a history of
/// ~6 MiB of values (12 MiB with prev_kv): a client with default settings (tonic's
/// 4 MiB limit on a decoded message, which `etcd-client` keeps) must be able to
/// receive it. etcd sends a catching-up watcher at most 1,000
/// revisions per response (`watchBatchMaxRevs`), about 2 MiB here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_megabytes_of_history_reaches_a_default_client() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let (f, leader) = follower(&cluster).await;
        let writer = cluster.client(leader).await;
        let next = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..BIG_WRITERS)
            .map(|_| {
                let mut client = writer.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    let mut revisions = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        if index >= BIG_PUTS {
                            return revisions;
                        }
                        let key = format!("{BIG_PREFIX}{:03}", index % 100);
                        let value = format!("{index:0width$}", width = BIG_VALUE_BYTES);
                        revisions.push(put_ok(&mut client, &key, &value).await);
                    }
                })
            })
            .collect();
        let mut acked = BTreeSet::new();
        for writer in writers {
            acked.extend(writer.await.expect("writer task"));
        }
        let last = *acked.last().unwrap();
        assert_eq!(acked.len(), BIG_PUTS);

        let mut reader = cluster.client(f).await;
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(2);
        let (mut stream, id) = open(&mut reader, BIG_PREFIX, options).await;
        let mut delivered = Vec::new();
        let mut responses = 0;
        while delivered.last().is_none_or(|r| *r < last) {
            let response = next_watch_response(&mut stream, RESPONSE_LIMIT, "history replay").await;
            assert_eq!(response.watch_id(), id, "{:?}", response.header());
            delivered.extend(response.events().iter().map(|e| e.kv().unwrap().mod_revision()));
            responses += 1;
        }
        eprintln!("{} events in {responses} responses", delivered.len());
        assert_eq!(delivered, acked.into_iter().collect::<Vec<_>>(), "every revision once, in order");
    })
    .await;
}
