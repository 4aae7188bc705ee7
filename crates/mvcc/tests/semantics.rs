//! etcd semantics of the MVCC store, driven through its public API.

use etcd_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use etcd_proto::fivefoldpb::{command, command_response, Command, CommandResponse};
use mvcc::{MvccError, MvccStore};

fn open() -> (tempfile::TempDir, MvccStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(&dir.path().join("mvcc.redb")).unwrap();
    (dir, store)
}

fn apply(store: &MvccStore, kind: command::Kind) -> CommandResponse {
    let mut batch = store.begin_apply().unwrap();
    let resp = batch.apply(&Command { kind: Some(kind) }).unwrap();
    batch.commit(false).unwrap();
    resp
}

fn put(store: &MvccStore, key: &str, value: &str) -> CommandResponse {
    apply(
        store,
        command::Kind::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() }),
    )
}

fn get(store: &MvccStore, key: &str, rev: i64) -> Result<Option<String>, MvccError> {
    let req = RangeRequest { key: key.into(), revision: rev, ..Default::default() };
    match store.range(&req) {
        Ok(r) => Ok(r.kvs.first().map(|kv| String::from_utf8(kv.value.clone()).unwrap())),
        Err(mvcc::KvError::Request(e)) => Err(e),
        Err(e) => panic!("{e}"),
    }
}

fn error_of(resp: &CommandResponse) -> Option<String> {
    match &resp.kind {
        Some(command_response::Kind::Error(e)) => Some(e.message.clone()),
        _ => None,
    }
}

#[test]
fn revisions_start_at_one_and_move_by_one_per_write() {
    let (_dir, store) = open();
    assert_eq!(store.revision(), 1);
    assert_eq!(put(&store, "a", "1").revision, 2);
    assert_eq!(put(&store, "a", "2").revision, 3);
    // A delete of nothing does not take a revision.
    let resp = apply(
        &store,
        command::Kind::DeleteRange(DeleteRangeRequest { key: "zz".into(), ..Default::default() }),
    );
    assert_eq!(resp.revision, 3);
    let kv = store.range(&RangeRequest { key: "a".into(), ..Default::default() }).unwrap().kvs.remove(0);
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
}

#[test]
fn history_reads_and_compaction() {
    let (_dir, store) = open();
    put(&store, "k", "v1"); // rev 2
    put(&store, "k", "v2"); // rev 3
    apply(&store, command::Kind::DeleteRange(DeleteRangeRequest { key: "k".into(), ..Default::default() })); // 4
    put(&store, "k", "v3"); // rev 5
    assert_eq!(get(&store, "k", 2).unwrap().as_deref(), Some("v1"));
    assert_eq!(get(&store, "k", 3).unwrap().as_deref(), Some("v2"));
    assert_eq!(get(&store, "k", 4).unwrap(), None);
    assert_eq!(get(&store, "k", 0).unwrap().as_deref(), Some("v3"));
    assert_eq!(get(&store, "k", 6), Err(MvccError::FutureRevision));

    let compact =
        |rev| apply(&store, command::Kind::Compaction(CompactionRequest { revision: rev, physical: false }));
    assert_eq!(
        error_of(&compact(9)).as_deref(),
        Some("etcdserver: mvcc: required revision is a future revision")
    );
    assert_eq!(error_of(&compact(3)), None);
    assert_eq!(get(&store, "k", 2), Err(MvccError::Compacted));
    assert_eq!(get(&store, "k", 3).unwrap().as_deref(), Some("v2"));
    assert_eq!(
        error_of(&compact(3)).as_deref(),
        Some("etcdserver: mvcc: required revision has been compacted")
    );
    // Compacting past the tombstone keeps the newer version readable.
    assert_eq!(error_of(&compact(4)), None);
    assert_eq!(get(&store, "k", 4).unwrap(), None);
    assert_eq!(get(&store, "k", 5).unwrap().as_deref(), Some("v3"));
}

#[test]
fn range_count_limit_sort_and_filters() {
    let (_dir, store) = open();
    for (k, v) in [("p/a", "3"), ("p/b", "1"), ("p/c", "2"), ("q", "0")] {
        put(&store, k, v);
    }
    put(&store, "p/b", "9"); // p/b: version 2, mod 6
    let base = RangeRequest { key: "p/".into(), range_end: "p0".into(), ..Default::default() };
    let r = store.range(&RangeRequest { limit: 2, ..base.clone() }).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
    let r = store
        .range(&RangeRequest {
            sort_target: range_request::SortTarget::Value as i32,
            sort_order: range_request::SortOrder::Descend as i32,
            ..base.clone()
        })
        .unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).to_string()).collect();
    assert_eq!(keys, ["p/b", "p/a", "p/c"]);
    let r = store.range(&RangeRequest { min_mod_revision: 4, ..base.clone() }).unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert_eq!(r.count, 3, "count ignores filters, as etcd's does");
    let r = store.range(&RangeRequest { count_only: true, ..base.clone() }).unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 3);
    let r = store.range(&RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).unwrap();
    assert_eq!(r.count, 4);
    let r = store.range(&RangeRequest { keys_only: true, ..base }).unwrap();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn op_get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn cmp(
    key: &str,
    target: compare::CompareTarget,
    result: compare::CompareResult,
    u: compare::TargetUnion,
) -> Compare {
    Compare {
        key: key.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        range_end: vec![],
    }
}

#[test]
fn txn_branches_see_their_own_writes_and_take_one_revision() {
    let (_dir, store) = open();
    put(&store, "x", "1"); // rev 2
    let txn = TxnRequest {
        compare: vec![cmp(
            "x",
            compare::CompareTarget::Value,
            compare::CompareResult::Equal,
            compare::TargetUnion::Value("1".into()),
        )],
        success: vec![op_put("y", "a"), op_get("y"), op_put("z", "b")],
        failure: vec![op_get("x")],
    };
    let resp = apply(&store, command::Kind::Txn(txn.clone()));
    assert_eq!(resp.revision, 3);
    let Some(command_response::Kind::Txn(t)) = resp.kind else { panic!("{resp:?}") };
    assert!(t.succeeded);
    let Some(response_op::Response::ResponseRange(r)) = &t.responses[1].response else { panic!() };
    assert_eq!(r.kvs[0].value, b"a");
    assert_eq!(r.kvs[0].mod_revision, 3);
    // Same txn again: the compare still holds, y/z get a new version.
    let resp = apply(
        &store,
        command::Kind::Txn(TxnRequest {
            compare: vec![cmp(
                "missing",
                compare::CompareTarget::Value,
                compare::CompareResult::Equal,
                compare::TargetUnion::Value(vec![]),
            )],
            ..txn
        }),
    );
    let Some(command_response::Kind::Txn(t)) = resp.kind else { panic!() };
    assert!(!t.succeeded, "a VALUE compare on a missing key is false");
    assert_eq!(resp.revision, 3, "a read-only failure branch takes no revision");
}

#[test]
fn failed_txn_writes_nothing() {
    let (_dir, store) = open();
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("a", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "b".into(),
                    lease: 7,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    let resp = apply(&store, command::Kind::Txn(txn));
    assert_eq!(error_of(&resp).as_deref(), Some("etcdserver: requested lease not found"));
    assert_eq!(get(&store, "a", 0).unwrap(), None);
    assert_eq!(store.revision(), 1);
}

#[test]
fn snapshots_round_trip_and_reject_corruption() {
    let (_dir, a) = open();
    for i in 0..50 {
        put(&a, &format!("key{i:03}"), &format!("value{i}"));
    }
    let mut bytes = Vec::new();
    a.write_snapshot(&mut bytes).unwrap();
    let (_dir2, b) = open();
    put(&b, "stale", "x");
    b.install_snapshot(bytes.as_slice()).unwrap();
    assert_eq!(b.revision(), a.revision());
    assert_eq!(get(&b, "stale", 0).unwrap(), None);
    assert_eq!(get(&b, "key049", 0).unwrap().as_deref(), Some("value49"));
    let mut corrupt = bytes.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x55;
    assert!(b.install_snapshot(corrupt.as_slice()).is_err());
    assert!(b.install_snapshot(&bytes[..bytes.len() - 3]).is_err());
    assert_eq!(
        get(&b, "key049", 0).unwrap().as_deref(),
        Some("value49"),
        "a failed install leaves state alone"
    );
}

#[test]
fn state_survives_reopen_after_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mvcc.redb");
    {
        let store = MvccStore::open(&path).unwrap();
        put(&store, "a", "1");
        store.persist().unwrap();
    }
    let store = MvccStore::open(&path).unwrap();
    assert_eq!(store.revision(), 2);
    assert_eq!(get(&store, "a", 0).unwrap().as_deref(), Some("1"));
}

#[test]
fn changes_are_events_in_memory_and_on_disk() {
    use etcd_proto::mvccpb::event::EventType;
    let (_dir, store) = open();
    put(&store, "a", "1"); // rev 2
    let mut batch = store.begin_apply().unwrap();
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("b", "2"),
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: "a".into(),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    batch.apply(&Command { kind: Some(command::Kind::Txn(txn)) }).unwrap(); // rev 3
    let committed = batch.commit(false).unwrap();
    assert_eq!(committed.revision, 3);
    let kinds: Vec<(i32, i64)> =
        committed.events.iter().map(|e| (e.r#type, e.kv.as_ref().unwrap().mod_revision)).collect();
    assert_eq!(kinds, [(EventType::Put as i32, 3), (EventType::Delete as i32, 3)]);
    assert_eq!(committed.events[1].prev_kv.as_ref().unwrap().value, b"1");

    let history = store.history(2, 3, 100).unwrap();
    assert_eq!(history.next, 4);
    let keys: Vec<&[u8]> = history.events.iter().map(|e| e.kv.as_ref().unwrap().key.as_slice()).collect();
    assert_eq!(keys, [&b"a"[..], b"b", b"a"]);
    assert_eq!(history.events[1..], committed.events[..], "disk and memory agree");
    // Whole revisions only: a limit of 1 event still returns all of revision 2's.
    assert_eq!(store.history(2, 3, 1).unwrap().next, 3);

    apply(&store, command::Kind::Compaction(CompactionRequest { revision: 3, physical: false }));
    assert!(matches!(store.history(2, 3, 100), Err(mvcc::KvError::Request(MvccError::Compacted))));
    assert_eq!(store.history(3, 3, 100).unwrap().next, 4);
}

#[test]
fn leases_hold_keys_and_revoke_deletes_them_in_one_revision() {
    use etcd_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
    let (_dir, store) = open();
    let grant = |id: i64| apply(&store, command::Kind::LeaseGrant(LeaseGrantRequest { ttl: 10, id }));
    assert_eq!(error_of(&grant(7)), None);
    assert_eq!(error_of(&grant(7)).as_deref(), Some("etcdserver: lease already exists"));
    assert_eq!(grant(8).revision, 1, "a grant takes no revision");
    let put_leased = |key: &str, lease: i64| {
        apply(
            &store,
            command::Kind::Put(PutRequest {
                key: key.into(),
                value: "v".into(),
                lease,
                ..Default::default()
            }),
        )
    };
    put_leased("a", 7); // rev 2
    put_leased("b", 7); // rev 3
    put_leased("c", 8); // rev 4
    put_leased("b", 8); // rev 5: b moves to lease 8
    assert_eq!(store.lease(7).unwrap().unwrap().keys, [b"a".to_vec()]);
    assert_eq!(store.lease(8).unwrap().unwrap().keys, [b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(error_of(&put_leased("x", 99)).as_deref(), Some("etcdserver: requested lease not found"));

    // A snapshot carries leases and their keys.
    let mut bytes = Vec::new();
    store.write_snapshot(&mut bytes).unwrap();
    let (_dir2, copy) = open();
    copy.install_snapshot(bytes.as_slice()).unwrap();
    assert_eq!(copy.leases().unwrap(), [(7, 10), (8, 10)]);

    let mut batch = store.begin_apply().unwrap();
    let resp = batch
        .apply(&Command { kind: Some(command::Kind::LeaseRevoke(LeaseRevokeRequest { id: 8 })) })
        .unwrap();
    let committed = batch.commit(false).unwrap();
    assert_eq!(resp.revision, 6);
    let deleted: Vec<(&[u8], i64)> = committed
        .events
        .iter()
        .map(|e| (e.kv.as_ref().unwrap().key.as_slice(), e.kv.as_ref().unwrap().mod_revision))
        .collect();
    assert_eq!(deleted, [(&b"b"[..], 6), (b"c", 6)]);
    assert_eq!(committed.lease_changes, [mvcc::LeaseChange::Revoked { id: 8 }]);
    assert_eq!(get(&store, "b", 0).unwrap(), None);
    assert_eq!(get(&store, "a", 0).unwrap().as_deref(), Some("v"));
    assert!(store.lease(8).unwrap().is_none());
    let again = apply(&store, command::Kind::LeaseRevoke(LeaseRevokeRequest { id: 8 }));
    assert_eq!(error_of(&again).as_deref(), Some("etcdserver: requested lease not found"));
    // Deleting a leased key removes it from the lease.
    apply(&store, command::Kind::DeleteRange(DeleteRangeRequest { key: "a".into(), ..Default::default() }));
    assert!(store.lease(7).unwrap().unwrap().keys.is_empty());
}

#[test]
fn an_alarm_raised_or_cleared_in_a_batch_applies_to_the_writes_after_it() {
    use etcd_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
    let (_dir, store) = open();
    let alarm = |action: AlarmAction| Command {
        kind: Some(command::Kind::Alarm(AlarmRequest {
            action: action as i32,
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        })),
    };
    let put_cmd = |key: &str| Command {
        kind: Some(command::Kind::Put(PutRequest {
            key: key.into(),
            value: "v".into(),
            ..Default::default()
        })),
    };
    let mut batch = store.begin_apply().unwrap();
    // The first put reads the alarms (none), the alarm is raised, the
    // second put must see it; once cleared, the third goes through.
    assert_eq!(error_of(&batch.apply(&put_cmd("before")).unwrap()), None);
    batch.apply(&alarm(AlarmAction::Activate)).unwrap();
    let refused = batch.apply(&put_cmd("during")).unwrap();
    assert_eq!(error_of(&refused).as_deref(), Some(MvccError::NoSpace.to_string().as_str()));
    batch.apply(&alarm(AlarmAction::Deactivate)).unwrap();
    assert_eq!(error_of(&batch.apply(&put_cmd("after")).unwrap()), None);
    batch.commit(false).unwrap();
    assert_eq!(get(&store, "before", 0).unwrap().as_deref(), Some("v"));
    assert_eq!(get(&store, "during", 0).unwrap(), None);
    assert_eq!(get(&store, "after", 0).unwrap().as_deref(), Some("v"));
}

#[test]
fn a_batch_that_does_not_commit_leaves_no_trace() {
    let (_dir, store) = open();
    put(&store, "a", "1"); // rev 2
    {
        let mut batch = store.begin_apply().unwrap();
        for (key, value) in [("a", "2"), ("b", "1")] {
            let req = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
            batch.apply(&Command { kind: Some(command::Kind::Put(req)) }).unwrap();
        }
        // Dropped: an engine failure before the commit ends a batch this way.
    }
    assert_eq!(store.revision(), 2);
    assert_eq!(get(&store, "a", 0).unwrap().as_deref(), Some("1"));
    assert_eq!(get(&store, "b", 0).unwrap(), None);
    // The revisions the dropped batch used are taken again, cleanly.
    assert_eq!(put(&store, "b", "x").revision, 3);
    let all =
        store.range(&RangeRequest { key: "a".into(), range_end: "c".into(), ..Default::default() }).unwrap();
    let got: Vec<(Vec<u8>, i64, i64)> =
        all.kvs.iter().map(|kv| (kv.key.clone(), kv.mod_revision, kv.version)).collect();
    assert_eq!(got, [(b"a".to_vec(), 2, 1), (b"b".to_vec(), 3, 1)]);
}

#[test]
fn a_store_in_the_legacy_layout_is_migrated_on_open() {
    use mvcc::encoding::{encode_keys, row_key, Version};
    use redb::TableDefinition;
    const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    const REVS: TableDefinition<u64, &[u8]> = TableDefinition::new("revs");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mvcc.redb");
    {
        // rev 2 put a=1, rev 3 put b=1, rev 4 a txn putting c=1 then a=2,
        // rev 5 delete b; compacted at 3, so rev 2's key list is gone.
        let live = |create, version, value: &str| Version {
            tombstone: false,
            create_revision: create,
            version,
            lease: 0,
            value: value.into(),
        };
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            for (key, rev, version) in [
                ("a", 2, live(2, 1, "1")),
                ("b", 3, live(3, 1, "1")),
                ("a", 4, live(2, 2, "2")),
                ("c", 4, live(4, 1, "1")),
                ("b", 5, Version::tombstone()),
            ] {
                kv.insert(row_key(key.as_bytes(), rev).as_slice(), version.encode().as_slice()).unwrap();
            }
            let mut revs = txn.open_table(REVS).unwrap();
            revs.insert(3, encode_keys(&[b"b"]).as_slice()).unwrap();
            revs.insert(4, encode_keys(&[b"c", b"a"]).as_slice()).unwrap();
            revs.insert(5, encode_keys(&[b"b"]).as_slice()).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("revision", 5i64.to_be_bytes().as_slice()).unwrap();
            meta.insert("compact_revision", 3i64.to_be_bytes().as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = MvccStore::open(&path).unwrap();
    assert_eq!(store.revision(), 5);
    assert_eq!(get(&store, "a", 0).unwrap().as_deref(), Some("2"));
    assert_eq!(get(&store, "a", 3).unwrap().as_deref(), Some("1"));
    assert_eq!(get(&store, "b", 0).unwrap(), None);
    assert_eq!(get(&store, "b", 4).unwrap().as_deref(), Some("1"));
    assert_eq!(get(&store, "c", 0).unwrap().as_deref(), Some("1"));
    assert_eq!(get(&store, "a", 2), Err(MvccError::Compacted));
    let history = store.history(3, 5, 100).unwrap();
    let seen: Vec<(Vec<u8>, i64)> = history
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (kv.key.clone(), kv.mod_revision)
        })
        .collect();
    let want: Vec<(Vec<u8>, i64)> =
        vec![(b"b".to_vec(), 3), (b"c".to_vec(), 4), (b"a".to_vec(), 4), (b"b".to_vec(), 5)];
    assert_eq!(seen, want, "a revision's changes keep their order");
    assert_eq!(history.events[2].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(put(&store, "a", "3").revision, 6);
    drop(store);
    // Opening again finds nothing left to move and the same state.
    let store = MvccStore::open(&path).unwrap();
    assert_eq!(get(&store, "a", 0).unwrap().as_deref(), Some("3"));
    assert_eq!(get(&store, "a", 5).unwrap().as_deref(), Some("2"));
}

#[test]
fn readers_racing_applies_and_compactions_never_see_a_torn_state() {
    const KEYS: usize = 50;
    const ROUNDS: usize = 60;
    let (_dir, store) = open();
    for i in 0..KEYS {
        put(&store, &format!("k{i:02}"), "0");
    }
    let store = std::sync::Arc::new(store);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let all = RangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() };
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let resp = store.range(&all).expect("a range at the current revision never fails");
                    assert_eq!((resp.count, resp.kvs.len()), (KEYS as i64, KEYS));
                    // Every key was written in the same round: all values agree.
                    let first = resp.kvs[0].value.clone();
                    assert!(resp.kvs.iter().all(|kv| kv.value == first), "a read saw half a round");
                    let rev = resp.header.unwrap().revision;
                    match store.history(rev - 20, rev, 1_000) {
                        Ok(h) => assert!(h.events.iter().all(|e| e.kv.is_some())),
                        Err(mvcc::KvError::Request(MvccError::Compacted)) => {}
                        Err(e) => panic!("history failed: {e}"),
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for round in 1..=ROUNDS {
        // One round is one batch: readers see all of it or none.
        let mut batch = store.begin_apply().unwrap();
        for i in 0..KEYS {
            let req = PutRequest {
                key: format!("k{i:02}").into(),
                value: round.to_string().into(),
                ..Default::default()
            };
            batch.apply(&Command { kind: Some(command::Kind::Put(req)) }).unwrap();
        }
        if round % 10 == 0 {
            let at = batch.revision() - KEYS as i64 / 2;
            batch
                .apply(&Command {
                    kind: Some(command::Kind::Compaction(CompactionRequest {
                        revision: at,
                        physical: false,
                    })),
                })
                .unwrap();
        }
        // Left open unless due: readers commit it when they read.
        batch.finish(mvcc::Finish::Lazy).unwrap();
        if round % 3 == 0 {
            // An answered batch is what the next read sees, open or not.
            assert_eq!(get(&store, "k00", 0).unwrap(), Some(round.to_string()));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0, "every reader read");
    }
    let kv = store.range(&RangeRequest { key: "k07".into(), ..Default::default() }).unwrap().kvs.remove(0);
    assert_eq!((kv.value, kv.version), (ROUNDS.to_string().into_bytes(), ROUNDS as i64 + 1));
}

/// Applies puts of `pairs` in one batch that stays open (`finish`).
fn put_open(store: &MvccStore, pairs: &[(&str, &str)]) -> i64 {
    finish_puts(store, pairs).revision
}

/// `put_open`, returning what the batch changed.
fn finish_puts(store: &MvccStore, pairs: &[(&str, &str)]) -> mvcc::Committed {
    let mut batch = store.begin_apply().unwrap();
    for (key, value) in pairs {
        let req = PutRequest { key: (*key).into(), value: (*value).into(), ..Default::default() };
        batch.apply(&Command { kind: Some(command::Kind::Put(req)) }).unwrap();
    }
    batch.finish(mvcc::Finish::Lazy).unwrap()
}

#[test]
fn applies_left_open_are_read_hashed_and_made_durable_like_committed_ones() {
    let (dir, store) = open();
    let (_other_dir, committed) = open();
    assert_eq!(put_open(&store, &[("a", "1"), ("b", "1")]), 3);
    assert_eq!(put_open(&store, &[("a", "2")]), 4);
    assert_eq!(store.revision(), 4, "an open batch is applied");
    for (key, value) in [("a", "1"), ("b", "1"), ("a", "2")] {
        put(&committed, key, value);
    }
    // A read commits the open transaction first, so it sees every answered write.
    assert_eq!(get(&store, "a", 0).unwrap().as_deref(), Some("2"));
    assert_eq!(get(&store, "a", 3).unwrap().as_deref(), Some("1"));
    assert_eq!(put_open(&store, &[("c", "1")]), 5);
    put(&committed, "c", "1");
    assert_eq!(store.hash_kv(0).unwrap(), committed.hash_kv(0).unwrap());
    let history = store.history(2, 5, 100).unwrap();
    assert_eq!(history.events.len(), 4);
    // Defragmenting commits what is open and keeps it.
    assert_eq!(put_open(&store, &[("d", "1")]), 6);
    assert!(store.is_apply_open(), "defragment meets an open transaction");
    store.defragment().unwrap();
    assert_eq!(get(&store, "d", 0).unwrap().as_deref(), Some("1"));
    // `persist` makes open writes durable: they survive a reopen.
    assert_eq!(put_open(&store, &[("e", "1")]), 7);
    assert!(store.is_apply_open(), "persist meets an open transaction");
    store.persist().unwrap();
    drop(store);
    let store = MvccStore::open(&dir.path().join("mvcc.redb")).unwrap();
    assert_eq!(store.revision(), 7);
    assert_eq!(get(&store, "e", 0).unwrap().as_deref(), Some("1"));
}

#[test]
fn a_store_that_loses_answered_writes_refuses_service() {
    let (_dir, store) = open();
    put_open(&store, &[("a", "1")]);
    {
        // An apply continuing the open transaction fails (dropped unfinished):
        // the write above, already answered, is gone from the engine.
        let mut batch = store.begin_apply().unwrap();
        let req = PutRequest { key: "b".into(), value: "1".into(), ..Default::default() };
        batch.apply(&Command { kind: Some(command::Kind::Put(req)) }).unwrap();
    }
    let err = store.range(&RangeRequest { key: "a".into(), ..Default::default() }).unwrap_err();
    assert!(matches!(err, mvcc::KvError::Storage(_)), "{err}");
    assert!(err.to_string().contains("restart this member"), "{err}");
    assert!(store.begin_apply().is_err(), "no apply on a store that lost writes");
    assert!(store.try_range(&RangeRequest { key: "a".into(), ..Default::default() }).unwrap().is_err());
}

#[test]
fn an_open_apply_commits_once_it_holds_enough_commands() {
    let (_dir, store) = open();
    // The time bound out of the way (a slow build or a busy machine could
    // reach it first): the command bound alone.
    let store = store.with_apply_open_max(std::time::Duration::from_secs(3600));
    let per_batch = 1_000;
    let mut revision = 0;
    for round in 0..mvcc::limits::APPLY_OPEN_COMMANDS_MAX / per_batch {
        let pairs: Vec<(String, String)> =
            (0..per_batch).map(|i| (format!("k{i:04}"), round.to_string())).collect();
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let committed = finish_puts(&store, &borrowed);
        revision = committed.revision;
        let last = round + 1 == mvcc::limits::APPLY_OPEN_COMMANDS_MAX / per_batch;
        assert_eq!((store.is_apply_open(), committed.engine_committed), (!last, last));
    }
    assert_eq!(revision, 1 + mvcc::limits::APPLY_OPEN_COMMANDS_MAX as i64);
}

#[test]
fn an_open_apply_commits_once_it_is_old_enough() {
    let (_dir, store) = open();
    put_open(&store, &[("a", "1")]);
    store.commit_stale_apply().unwrap();
    assert!(store.is_apply_open(), "younger than APPLY_OPEN_MAX: left open");
    // The threshold is a duration: waiting it out is the point of the test.
    std::thread::sleep(mvcc::limits::APPLY_OPEN_MAX);
    store.commit_stale_apply().unwrap();
    assert!(!store.is_apply_open(), "the timer's commit");
    put_open(&store, &[("b", "1")]);
    std::thread::sleep(mvcc::limits::APPLY_OPEN_MAX);
    put_open(&store, &[("c", "1")]);
    assert!(!store.is_apply_open(), "an apply into a transaction open that long commits it");
    assert_eq!(get(&store, "b", 0).unwrap().as_deref(), Some("1"));
}

#[test]
fn the_size_the_quota_reads_counts_applies_left_open() {
    let (_dir, store) = open();
    put(&store, "warm", "1");
    let before = store.db_size();
    let value = "v".repeat(100 * 1024);
    put_open(&store, &[("big", value.as_str())]);
    assert!(store.is_apply_open());
    assert!(
        store.db_size() >= before + value.len() as u64,
        "{} bytes after an open 100 KiB put, {before} before",
        store.db_size()
    );
}
