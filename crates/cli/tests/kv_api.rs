//! etcd's KV, Maintenance.Status and Cluster.MemberList through the Rust `etcd-client`
//! against a 3-member cluster. Each test starts its own cluster, so store revisions
//! are exact: an empty store is at revision 1 and the first write makes revision 2.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{assert_status, bounded, header_revision, keys, pairs, poll_until, revisions, start, text};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use testkit::ClusterOptions;
use tonic::Code;

const TEST_LIMIT: Duration = Duration::from_secs(120);
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
const TOO_LARGE: &str = "etcdserver: request is too large";
/// etcd's default `--max-request-bytes`.
const MAX_REQUEST_BYTES_DEFAULT: usize = 1_572_864;

async fn put_all(client: &mut Client, writes: &[(&str, &str)]) {
    for (key, value) in writes {
        client.put(*key, *value, None).await.unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// Keys "k/a".."k/d" between "j" and "l", written in this order (revision after each):
/// j 2, k/a 3, k/b 4, k/c 5, k/b again 6, k/d 7, l 8.
const RANGE_FIXTURE: [(&str, &str); 7] = [
    ("j", "outside-before"),
    ("k/a", "v3"),
    ("k/b", "v1"),
    ("k/c", "v2"),
    ("k/b", "v4"),
    ("k/d", "v0"),
    ("l", "outside-after"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_single_prefix_from_key_and_limits() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let mut client = cluster.client(leader).await;
        put_all(&mut client, &RANGE_FIXTURE).await;

        let single = client.get("k/b", None).await.unwrap();
        assert_eq!(pairs(&single), [("k/b".to_string(), "v4".to_string())]);
        assert_eq!(revisions(&single.kvs()[0]), (4, 6, 2), "k/b (create, mod, version)");
        assert_eq!(single.kvs()[0].lease(), 0);
        assert_eq!((single.count(), single.more()), (1, false));
        assert_eq!(header_revision(&single), 8);

        let missing = client.get("k/zz", None).await.unwrap();
        assert!(missing.kvs().is_empty(), "{missing:?}");
        assert_eq!((missing.count(), missing.more()), (0, false));

        let prefix = client.get("k/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(keys(&prefix), strings(&["k/a", "k/b", "k/c", "k/d"]));
        assert_eq!(prefix.count(), 4);

        let explicit = client.get("k/b", Some(GetOptions::new().with_range("k/d"))).await.unwrap();
        assert_eq!(keys(&explicit), strings(&["k/b", "k/c"]), "[k/b, k/d) excludes the end");

        let from_key = client.get("k/c", Some(GetOptions::new().with_from_key())).await.unwrap();
        assert_eq!(
            keys(&from_key),
            strings(&["k/c", "k/d", "l"]),
            "range_end \"\\0\" means every key >= k/c"
        );
        assert_eq!(from_key.count(), 3);

        let all = client.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
        assert_eq!(keys(&all), strings(&["j", "k/a", "k/b", "k/c", "k/d", "l"]));

        let limited = client.get("k/", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
        assert_eq!(keys(&limited), strings(&["k/a", "k/b"]));
        assert!(limited.more(), "a limit below the range size sets more");
        assert_eq!(limited.count(), 4, "count is the whole range, not the page");

        let exact = client.get("k/", Some(GetOptions::new().with_prefix().with_limit(4))).await.unwrap();
        assert_eq!(exact.kvs().len(), 4);
        assert!(!exact.more(), "a limit equal to the range size does not set more");

        let historical =
            client.get("k/", Some(GetOptions::new().with_prefix().with_revision(5))).await.unwrap();
        assert_eq!(
            pairs(&historical),
            [("k/a", "v3"), ("k/b", "v1"), ("k/c", "v2")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(revisions(&historical.kvs()[1]), (4, 4, 1), "k/b as of revision 5");
        assert_eq!(historical.count(), 3);
        assert_eq!(header_revision(&historical), 8, "the header carries the current revision");

        let before_create = client.get("k/d", Some(GetOptions::new().with_revision(6))).await.unwrap();
        assert!(before_create.kvs().is_empty(), "k/d did not exist at revision 6: {before_create:?}");

        let keys_only =
            client.get("k/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
        assert_eq!(keys(&keys_only), strings(&["k/a", "k/b", "k/c", "k/d"]));
        assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()), "keys_only returns no values");
        assert_eq!(revisions(&keys_only.kvs()[1]), (4, 6, 2), "keys_only keeps the revisions");

        let count_only =
            client.get("k/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
        assert!(count_only.kvs().is_empty(), "count_only returns no kvs: {count_only:?}");
        assert_eq!(count_only.count(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_revision_filters_and_serializable_reads() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let mut client = cluster.client(leader).await;
        put_all(&mut client, &RANGE_FIXTURE).await;
        // (create, mod): k/a (3,3), k/b (4,6), k/c (5,5), k/d (7,7).
        let cases = [
            (GetOptions::new().with_prefix().with_min_mod_revision(5), vec!["k/b", "k/c", "k/d"]),
            (GetOptions::new().with_prefix().with_max_mod_revision(5), vec!["k/a", "k/c"]),
            (GetOptions::new().with_prefix().with_min_create_revision(4), vec!["k/b", "k/c", "k/d"]),
            (GetOptions::new().with_prefix().with_max_create_revision(4), vec!["k/a", "k/b"]),
            (
                GetOptions::new().with_prefix().with_min_mod_revision(4).with_max_create_revision(4),
                vec!["k/b"],
            ),
        ];
        for (options, expected) in cases {
            let description = format!("{options:?}");
            let response = client.get("k/", Some(options)).await.unwrap();
            assert_eq!(keys(&response), strings(&expected), "{description}");
        }

        // The leader applied every acknowledged write, so its local read is complete.
        let local =
            client.get("k/", Some(GetOptions::new().with_prefix().with_serializable())).await.unwrap();
        assert_eq!(keys(&local), strings(&["k/a", "k/b", "k/c", "k/d"]), "serializable read on the leader");
        // Followers serve serializable reads locally and catch up.
        for index in (0..cluster.len()).filter(|index| *index != leader) {
            let mut follower = cluster.client(index).await;
            poll_until(Duration::from_secs(10), "follower's serializable read catches up", || {
                let mut follower = follower.clone();
                async move {
                    let options = GetOptions::new().with_prefix().with_serializable();
                    let response = follower.get("k/", Some(options)).await.map_err(|e| e.to_string())?;
                    let got = pairs(&response);
                    let want = [("k/a", "v3"), ("k/b", "v4"), ("k/c", "v2"), ("k/d", "v0")]
                        .map(|(k, v)| (k.to_string(), v.to_string()));
                    if got == want && header_revision(&response) == 8 {
                        Ok(())
                    } else {
                        Err(format!("{got:?} at revision {}", header_revision(&response)))
                    }
                }
            })
            .await;
            let linearizable = follower.get("k/b", None).await.unwrap();
            assert_eq!(pairs(&linearizable), [("k/b".to_string(), "v4".to_string())]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_sort_orders_and_targets() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(cluster.leader().await.unwrap()).await;
        // Final state: s/a = z3 (create 3, mod 6, version 3), s/b = y (4, 4, 1),
        // s/c = x2 (2, 7, 2). Every target orders the three keys differently.
        put_all(
            &mut client,
            &[("s/c", "x"), ("s/a", "z"), ("s/b", "y"), ("s/a", "z2"), ("s/a", "z3"), ("s/c", "x2")],
        )
        .await;
        let cases = [
            (SortTarget::Key, SortOrder::Ascend, ["s/a", "s/b", "s/c"]),
            (SortTarget::Key, SortOrder::Descend, ["s/c", "s/b", "s/a"]),
            (SortTarget::Version, SortOrder::Ascend, ["s/b", "s/c", "s/a"]),
            (SortTarget::Version, SortOrder::Descend, ["s/a", "s/c", "s/b"]),
            (SortTarget::Create, SortOrder::Ascend, ["s/c", "s/a", "s/b"]),
            (SortTarget::Create, SortOrder::Descend, ["s/b", "s/a", "s/c"]),
            (SortTarget::Mod, SortOrder::Ascend, ["s/b", "s/a", "s/c"]),
            (SortTarget::Mod, SortOrder::Descend, ["s/c", "s/a", "s/b"]),
            (SortTarget::Value, SortOrder::Ascend, ["s/c", "s/b", "s/a"]),
            (SortTarget::Value, SortOrder::Descend, ["s/a", "s/b", "s/c"]),
        ];
        for (target, order, expected) in cases {
            let options = GetOptions::new().with_prefix().with_sort(target, order);
            let response = client.get("s/", Some(options)).await.unwrap();
            assert_eq!(keys(&response), strings(&expected), "sort by {target:?} {order:?}");
        }
        let options =
            GetOptions::new().with_prefix().with_sort(SortTarget::Mod, SortOrder::Descend).with_limit(2);
        let page = client.get("s/", Some(options)).await.unwrap();
        assert_eq!(keys(&page), strings(&["s/c", "s/a"]), "sort is applied before the limit");
        assert!(page.more());
        assert_eq!(page.count(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_options_and_their_errors() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(cluster.leader().await.unwrap()).await;

        let first = client.put("p/a", "1", Some(PutOptions::new().with_prev_key())).await.unwrap();
        assert!(first.prev_key().is_none(), "no previous value on create: {first:?}");
        assert_eq!(first.header().unwrap().revision(), 2);

        let second = client.put("p/a", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
        let prev = second.prev_key().expect("prev_kv requested");
        assert_eq!((text(prev.key()), text(prev.value())), ("p/a".to_string(), "1".to_string()));
        assert_eq!(revisions(prev), (2, 2, 1));
        assert_eq!(second.header().unwrap().revision(), 3);

        let without = client.put("p/a", "3", None).await.unwrap();
        assert!(without.prev_key().is_none(), "prev_kv not requested: {without:?}");

        let zero_lease = client.put("p/b", "b", Some(PutOptions::new().with_lease(0))).await.unwrap();
        assert_eq!(zero_lease.header().unwrap().revision(), 5, "lease 0 means no lease");

        assert_status(
            client.put("p/c", "c", Some(PutOptions::new().with_lease(0x1234_5678))).await,
            Code::NotFound,
            "etcdserver: requested lease not found",
            "put with an unknown lease",
        );
        let after_error = client.get("p/c", None).await.unwrap();
        assert!(after_error.kvs().is_empty(), "a failed put writes nothing: {after_error:?}");
        assert_eq!(header_revision(&after_error), 5, "a failed put does not bump the revision");

        let kept =
            client.put("p/a", "", Some(PutOptions::new().with_ignore_value().with_prev_key())).await.unwrap();
        assert_eq!(text(kept.prev_key().unwrap().value()), "3");
        let now = client.get("p/a", None).await.unwrap();
        assert_eq!(text(now.kvs()[0].value()), "3", "ignore_value keeps the value");
        assert_eq!(revisions(&now.kvs()[0]), (2, 6, 4), "ignore_value still writes a new version");

        client.put("p/a", "4", Some(PutOptions::new().with_ignore_lease())).await.unwrap();
        let now = client.get("p/a", None).await.unwrap();
        assert_eq!((text(now.kvs()[0].value()), now.kvs()[0].lease()), ("4".to_string(), 0));

        for (options, what) in [
            (PutOptions::new().with_ignore_value(), "ignore_value on a missing key"),
            (PutOptions::new().with_ignore_lease(), "ignore_lease on a missing key"),
        ] {
            let value = if what.starts_with("ignore_value") { "" } else { "v" };
            assert_status(
                client.put("p/missing", value, Some(options)).await,
                Code::InvalidArgument,
                "etcdserver: key not found",
                what,
            );
        }
        assert_status(
            client.put("p/a", "not empty", Some(PutOptions::new().with_ignore_value())).await,
            Code::InvalidArgument,
            "etcdserver: value is provided",
            "ignore_value with a value",
        );
        assert_status(
            client.put("p/a", "v", Some(PutOptions::new().with_ignore_lease().with_lease(7))).await,
            Code::InvalidArgument,
            "etcdserver: lease is provided",
            "ignore_lease with a lease",
        );
        let end = client.get("p/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(header_revision(&end), 7, "failed puts wrote nothing");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_range_single_and_prefix_with_prev_kv() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(cluster.leader().await.unwrap()).await;
        put_all(&mut client, &[("d/a", "1"), ("d/b", "2"), ("d/c", "3"), ("e", "x")]).await;

        let one = client.delete("d/a", Some(DeleteOptions::new().with_prev_key())).await.unwrap();
        assert_eq!(one.deleted(), 1);
        let prev: Vec<(String, String)> =
            one.prev_kvs().iter().map(|kv| (text(kv.key()), text(kv.value()))).collect();
        assert_eq!(prev, [("d/a".to_string(), "1".to_string())]);
        assert_eq!(revisions(&one.prev_kvs()[0]), (2, 2, 1));
        assert_eq!(one.header().unwrap().revision(), 6);

        let none = client.delete("d/a", Some(DeleteOptions::new().with_prev_key())).await.unwrap();
        assert_eq!(none.deleted(), 0);
        assert!(none.prev_kvs().is_empty());
        assert_eq!(none.header().unwrap().revision(), 6, "deleting nothing does not bump the revision");

        let many =
            client.delete("d/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await.unwrap();
        assert_eq!(many.deleted(), 2);
        let prev: Vec<String> = many.prev_kvs().iter().map(|kv| text(kv.key())).collect();
        assert_eq!(prev, strings(&["d/b", "d/c"]));
        assert_eq!(many.header().unwrap().revision(), 7, "one delete is one revision, however many keys");

        let left = client.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
        assert_eq!(keys(&left), strings(&["e"]), "only the key outside the prefix is left");
        let before = client.get("d/", Some(GetOptions::new().with_prefix().with_revision(6))).await.unwrap();
        assert_eq!(keys(&before), strings(&["d/b", "d/c"]), "history before the delete");

        client.put("d/x", "1", None).await.unwrap();
        let quiet = client.delete("d/x", None).await.unwrap();
        assert_eq!(quiet.deleted(), 1);
        assert!(quiet.prev_kvs().is_empty(), "prev_kv not requested");

        let recreated = client.put("d/a", "again", None).await.unwrap();
        assert_eq!(recreated.header().unwrap().revision(), 10);
        let fresh = client.get("d/a", None).await.unwrap();
        assert_eq!(revisions(&fresh.kvs()[0]), (10, 10, 1), "a re-created key starts a new life");
    })
    .await;
}

/// Runs a read-only txn guarded by `compare`; returns whether it took the success branch,
/// checking that the branch's own read came back.
async fn compare_holds(client: &mut Client, compare: Compare) -> bool {
    let description = format!("{compare:?}");
    let txn =
        Txn::new().when([compare]).and_then([TxnOp::get("t/a", None)]).or_else([TxnOp::get("t/b", None)]);
    let response = client.txn(txn).await.unwrap_or_else(|e| panic!("txn {description}: {e}"));
    let ops = response.op_responses();
    assert_eq!(ops.len(), 1, "{description}");
    let TxnOpResponse::Get(get) = &ops[0] else { panic!("{description}: not a range answer: {ops:?}") };
    let expected_key = if response.succeeded() { "t/a" } else { "t/b" };
    assert_eq!(keys(get), strings(&[expected_key]), "{description}: branch ran the wrong op");
    response.succeeded()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_every_target_and_operator() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(cluster.leader().await.unwrap()).await;
        // t/a = "1" (create 2, mod 2, version 1); t/b = "3" (3, 4, 2); t/c = "x" (5, 5, 1).
        put_all(&mut client, &[("t/a", "1"), ("t/b", "2"), ("t/b", "3"), ("t/c", "x")]).await;
        use CompareOp::{Equal, Greater, Less, NotEqual};
        let cases = [
            (Compare::value("t/a", Equal, "1"), true),
            (Compare::value("t/a", NotEqual, "1"), false),
            (Compare::value("t/a", Greater, "0"), true),
            (Compare::value("t/a", Less, "0"), false),
            // Values compare as bytes: "1" < "10" and "1" > "09".
            (Compare::value("t/a", Less, "10"), true),
            (Compare::value("t/a", Greater, "09"), true),
            (Compare::version("t/b", Equal, 2), true),
            (Compare::version("t/b", Greater, 1), true),
            (Compare::version("t/b", Less, 2), false),
            (Compare::version("t/b", NotEqual, 2), false),
            (Compare::create_revision("t/b", Equal, 3), true),
            (Compare::create_revision("t/b", Less, 3), false),
            (Compare::create_revision("t/b", Greater, 2), true),
            (Compare::mod_revision("t/b", Equal, 4), true),
            (Compare::mod_revision("t/b", Greater, 4), false),
            (Compare::mod_revision("t/b", Less, 5), true),
            (Compare::mod_revision("t/b", NotEqual, 3), true),
            (Compare::lease("t/a", Equal, 0), true),
            (Compare::lease("t/a", NotEqual, 0), false),
            (Compare::lease("t/a", Greater, 0), false),
            // A missing key has version, create and mod revision 0 and fails any value compare.
            (Compare::version("t/missing", Equal, 0), true),
            (Compare::create_revision("t/missing", Equal, 0), true),
            (Compare::mod_revision("t/missing", Less, 1), true),
            (Compare::value("t/missing", Equal, ""), false),
            (Compare::value("t/missing", NotEqual, "x"), false),
            // A compare over a range holds only if it holds for every key in it.
            (Compare::version("t/", Greater, 0).with_prefix(), true),
            (Compare::version("t/", Greater, 1).with_prefix(), false),
            (Compare::mod_revision("t/a", Less, 5).with_range("t/c"), true),
            (Compare::mod_revision("t/", Less, 5).with_prefix(), false),
            (Compare::value("t/", NotEqual, "zzz").with_prefix(), true),
            (Compare::create_revision("t/", Less, 6).with_prefix(), true),
        ];
        for (compare, expected) in cases {
            let description = format!("{compare:?}");
            assert_eq!(compare_holds(&mut client, compare).await, expected, "{description}");
        }
        let two = Txn::new()
            .when([Compare::value("t/a", Equal, "1"), Compare::version("t/b", Equal, 1)])
            .and_then([TxnOp::put("t/should-not-exist", "x", None)]);
        assert!(!client.txn(two).await.unwrap().succeeded(), "all compares must hold");

        let end = client.get("t/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(header_revision(&end), 5, "read-only and failed txns write nothing");
        assert_eq!(keys(&end), strings(&["t/a", "t/b", "t/c"]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_branches_write_atomically_and_nest() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(cluster.leader().await.unwrap()).await;
        put_all(&mut client, &[("t/a", "1"), ("t/c", "x")]).await; // revision 3

        let success = Txn::new()
            .when([Compare::value("t/a", CompareOp::Equal, "1")])
            .and_then([
                TxnOp::put("t/a", "2", Some(PutOptions::new().with_prev_key())),
                TxnOp::put("t/d", "new", None),
                TxnOp::get("t/a", None),
            ])
            .or_else([TxnOp::put("t/failed", "x", None)]);
        let response = client.txn(success).await.unwrap();
        assert!(response.succeeded());
        assert_eq!(response.header().unwrap().revision(), 4, "a txn is one revision");
        let ops = response.op_responses();
        assert_eq!(ops.len(), 3, "{ops:?}");
        let TxnOpResponse::Put(put) = &ops[0] else { panic!("first answer is not a put: {ops:?}") };
        assert_eq!(text(put.prev_key().expect("prev_kv in txn put").value()), "1");
        let TxnOpResponse::Get(get) = &ops[2] else { panic!("third answer is not a range: {ops:?}") };
        assert_eq!(pairs(get), [("t/a".to_string(), "2".to_string())], "a txn reads its own writes");
        for key in ["t/a", "t/d"] {
            let now = client.get(key, None).await.unwrap();
            assert_eq!(now.kvs()[0].mod_revision(), 4, "{key} written at the txn's revision");
        }
        assert!(client.get("t/failed", None).await.unwrap().kvs().is_empty());

        let failure = Txn::new()
            .when([Compare::value("t/a", CompareOp::Equal, "not this")])
            .and_then([TxnOp::put("t/x", "x", None)])
            .or_else([
                TxnOp::put("t/y", "y", None),
                TxnOp::delete("t/c", Some(DeleteOptions::new().with_prev_key())),
            ]);
        let response = client.txn(failure).await.unwrap();
        assert!(!response.succeeded());
        assert_eq!(response.header().unwrap().revision(), 5);
        let ops = response.op_responses();
        let TxnOpResponse::Delete(deleted) = &ops[1] else {
            panic!("second answer is not a delete: {ops:?}")
        };
        assert_eq!(deleted.deleted(), 1);
        let all = client.get("t/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(keys(&all), strings(&["t/a", "t/d", "t/y"]), "failure branch applied, success not");

        let inner_success = Txn::new()
            .when([Compare::version("t/a", CompareOp::Equal, 2)])
            .and_then([TxnOp::put("t/nested", "in", None)])
            .or_else([TxnOp::put("t/nested", "out", None)]);
        let inner_failure = Txn::new()
            .when([Compare::version("t/a", CompareOp::Equal, 99)])
            .and_then([TxnOp::put("t/nested2", "in", None)])
            .or_else([TxnOp::get("t/y", None)]);
        let outer = Txn::new()
            .when([Compare::version("t/y", CompareOp::Greater, 0)])
            .and_then([TxnOp::txn(inner_success), TxnOp::txn(inner_failure)]);
        let response = client.txn(outer).await.unwrap();
        assert!(response.succeeded());
        assert_eq!(response.header().unwrap().revision(), 6);
        let ops = response.op_responses();
        let TxnOpResponse::Txn(first) = &ops[0] else { panic!("not a nested txn answer: {ops:?}") };
        assert!(first.succeeded(), "inner txn compare held");
        let TxnOpResponse::Txn(second) = &ops[1] else { panic!("not a nested txn answer: {ops:?}") };
        assert!(!second.succeeded());
        let TxnOpResponse::Get(read) = &second.op_responses()[0] else { panic!("inner failure op") };
        assert_eq!(pairs(read), [("t/y".to_string(), "y".to_string())]);
        let nested = client.get("t/nested", None).await.unwrap();
        assert_eq!(pairs(&nested), [("t/nested".to_string(), "in".to_string())]);
        assert_eq!(nested.kvs()[0].mod_revision(), 6);
        assert!(client.get("t/nested2", None).await.unwrap().kvs().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_revision_bounds_on_every_member() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(cluster.leader().await.unwrap()).await;
        put_all(&mut client, &[("c/a", "v1"), ("c/a", "v2"), ("c/a", "v3"), ("c/a", "v4")]).await; // rev 5

        assert_status(
            client.get("c/a", Some(GetOptions::new().with_revision(6))).await,
            Code::OutOfRange,
            FUTURE_REVISION,
            "range at a future revision",
        );
        let compacted = client.compact(4, None).await.unwrap();
        assert_eq!(compacted.header().unwrap().revision(), 5, "compaction does not write a revision");

        for index in 0..cluster.len() {
            let mut member = cluster.client(index).await;
            for revision in [2, 3] {
                assert_status(
                    member.get("c/a", Some(GetOptions::new().with_revision(revision))).await,
                    Code::OutOfRange,
                    COMPACTED,
                    &format!("member {index}: range at compacted revision {revision}"),
                );
            }
            let at_compaction = member.get("c/a", Some(GetOptions::new().with_revision(4))).await.unwrap();
            assert_eq!(
                text(at_compaction.kvs()[0].value()),
                "v3",
                "member {index}: the compacted revision stays"
            );
            let latest = member.get("c/a", Some(GetOptions::new().with_revision(5))).await.unwrap();
            assert_eq!(text(latest.kvs()[0].value()), "v4", "member {index}");
            assert_status(
                member.get("c/a", Some(GetOptions::new().with_revision(6))).await,
                Code::OutOfRange,
                FUTURE_REVISION,
                &format!("member {index}: range at a future revision"),
            );
        }
        assert_status(client.compact(4, None).await, Code::OutOfRange, COMPACTED, "compacting again");
        assert_status(client.compact(3, None).await, Code::OutOfRange, COMPACTED, "compacting backwards");
        assert_status(
            client.compact(100, None).await,
            Code::OutOfRange,
            FUTURE_REVISION,
            "compacting the future",
        );
        let txn = Txn::new().and_then([TxnOp::get("c/a", Some(GetOptions::new().with_revision(2)))]);
        assert_status(
            client.txn(txn).await,
            Code::OutOfRange,
            COMPACTED,
            "txn range at a compacted revision",
        );
        client.put("c/a", "v5", None).await.unwrap();
        client.compact(6, None).await.unwrap();
        let now = client.get("c/a", None).await.unwrap();
        assert_eq!(revisions(&now.kvs()[0]), (2, 6, 5), "compaction keeps the live key's history counters");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_status_and_member_list() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let mut first = cluster.client(0).await;
        let list = first.member_list().await.unwrap();
        let members = list.members();
        assert_eq!(members.len(), 3, "{members:?}");
        let mut ids_by_name = BTreeMap::new();
        for member in members {
            assert_ne!(member.id(), 0, "{member:?}");
            assert!(!member.is_learner(), "{member:?}");
            ids_by_name.insert(member.name().to_string(), member.id());
        }
        let names: BTreeSet<&str> = ids_by_name.keys().map(String::as_str).collect();
        assert_eq!(names, BTreeSet::from(["hz-a", "sh-a", "sz-a"]));
        for index in 0..cluster.len() {
            let name = &cluster.placement(index).name;
            let member = members.iter().find(|m| m.name() == name).unwrap();
            assert_eq!(member.peer_urls(), [cluster.peer_url(index)], "{name}'s peer URLs");
            assert_eq!(member.client_urls(), [cluster.client_url(index)], "{name}'s client URLs");
        }
        let distinct: BTreeSet<u64> = ids_by_name.values().copied().collect();
        assert_eq!(distinct.len(), 3, "member ids are distinct: {ids_by_name:?}");
        let list_header = list.header().expect("member list header");
        let cluster_id = list_header.cluster_id();
        assert_ne!(cluster_id, 0);

        let mut leaders = BTreeSet::new();
        let mut terms = BTreeSet::new();
        for index in 0..cluster.len() {
            let expected_id = ids_by_name[&cluster.placement(index).name];
            let mut client = cluster.client(index).await;
            let put = client.put(format!("h/{index}"), "x", None).await.unwrap();
            let header = put.header().unwrap();
            assert_eq!(header.cluster_id(), cluster_id, "member {index}: cluster id");
            assert_eq!(header.member_id(), expected_id, "member {index}: the header names the member asked");
            assert_eq!(header.revision(), 2 + index as i64, "member {index}: revision of its put");
            assert_ne!(header.raft_term(), 0);
            terms.insert(header.raft_term());

            let get = client.get(format!("h/{index}"), None).await.unwrap();
            let header = get.header().unwrap();
            assert_eq!((header.cluster_id(), header.member_id()), (cluster_id, expected_id));
            assert_eq!(header.revision(), 2 + index as i64);

            let status = client.status().await.unwrap();
            let header = status.header().expect("status header");
            assert_eq!((header.cluster_id(), header.member_id()), (cluster_id, expected_id), "status header");
            assert_ne!(status.leader(), 0);
            leaders.insert(status.leader());
            assert!(status.db_size() > 0, "member {index}: db_size {}", status.db_size());
            assert!(status.raft_index() > 0, "member {index}: raft_index");
            assert!(status.raft_term() > 0, "member {index}: raft_term");
            terms.insert(status.raft_term());
            let version = parse_version(status.version());
            assert!(version >= (3, 5, 13), "member {index}: version {:?} is below 3.5.13", status.version());
        }
        assert_eq!(leaders.len(), 1, "every member names the same leader: {leaders:?}");
        let leader_id = ids_by_name[&cluster.placement(leader).name];
        assert_eq!(leaders.first(), Some(&leader_id), "the leader per Status is the member testkit found");
        assert_eq!(terms.len(), 1, "no election happened, one term: {terms:?}");
    })
    .await;
}

/// `major.minor.patch` of a semver string, ignoring pre-release and build suffixes.
fn parse_version(version: &str) -> (u64, u64, u64) {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<u64> = core
        .split('.')
        .map(|part| part.parse().unwrap_or_else(|_| panic!("version {version:?} is not semver")))
        .collect();
    assert_eq!(parts.len(), 3, "version {version:?} is not major.minor.patch");
    (parts[0], parts[1], parts[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_etcds_errors() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let follower = (cluster.leader().await.unwrap() + 1) % cluster.len();
        for index in [follower, cluster.leader().await.unwrap()] {
            let mut client = cluster.client(index).await;
            let empty = "etcdserver: key is not provided";
            assert_status(
                client.put("", "v", None).await,
                Code::InvalidArgument,
                empty,
                "put with an empty key",
            );
            assert_status(
                client.get("", None).await,
                Code::InvalidArgument,
                empty,
                "range with an empty key",
            );
            assert_status(
                client.delete("", None).await,
                Code::InvalidArgument,
                empty,
                "delete with an empty key",
            );

            let duplicate =
                Txn::new().and_then([TxnOp::put("x/dup", "1", None), TxnOp::put("x/dup", "2", None)]);
            assert_status(
                client.txn(duplicate).await,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
                "two puts of one key in a txn",
            );
            let overlapping = Txn::new().and_then([
                TxnOp::delete("x/", Some(DeleteOptions::new().with_prefix())),
                TxnOp::put("x/dup", "2", None),
            ]);
            assert_status(
                client.txn(overlapping).await,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
                "a put inside a deleted range in a txn",
            );

            let puts = |count: usize| -> Vec<TxnOp> {
                (0..count).map(|i| TxnOp::put(format!("x/op/{index}/{i:03}"), "v", None)).collect()
            };
            assert_status(
                client.txn(Txn::new().and_then(puts(129))).await,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
                "129 ops in a txn",
            );
            let at_limit = client.txn(Txn::new().and_then(puts(128))).await;
            assert!(at_limit.as_ref().is_ok_and(|r| r.succeeded()), "128 ops in a txn: {at_limit:?}");
            let written = client
                .get(format!("x/op/{index}/"), Some(GetOptions::new().with_prefix().with_count_only()))
                .await
                .unwrap();
            assert_eq!(written.count(), 128);

            let too_large = vec![b'x'; MAX_REQUEST_BYTES_DEFAULT + 1];
            assert_status(
                client.put("x/large", too_large, None).await,
                Code::InvalidArgument,
                TOO_LARGE,
                "a put just over 1.5 MiB",
            );
            let large_ok = vec![b'y'; 1024 * 1024];
            client.put("x/large", large_ok, None).await.expect("a 1 MiB put is under the limit");
            let read = client.get("x/large", None).await.unwrap();
            assert_eq!(read.kvs()[0].value().len(), 1024 * 1024);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_request_bytes_flag_limits_requests() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default().arg("--max-request-bytes", 1024)).await;
        let leader = cluster.leader().await.unwrap();
        for index in [leader, (leader + 1) % cluster.len()] {
            let mut client = cluster.client(index).await;
            assert_status(
                client.put("m/big", vec![b'x'; 2048], None).await,
                Code::InvalidArgument,
                TOO_LARGE,
                &format!("2 KiB put with --max-request-bytes 1024 on member {index}"),
            );
            client.put("m/small", vec![b'x'; 512], None).await.expect("a 512-byte put is under 1024");
            assert!(client.get("m/big", None).await.unwrap().kvs().is_empty(), "the large put wrote nothing");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_followers_are_forwarded_and_visible_everywhere() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let followers: Vec<usize> = (0..cluster.len()).filter(|index| *index != leader).collect();
        let mut writer = cluster.client(followers[0]).await;
        let mut reader = cluster.client(followers[1]).await;
        for round in 0..20 {
            let key = format!("f/{round:02}");
            let put = writer.put(key.clone(), format!("value {round}"), None).await.unwrap();
            let revision = put.header().unwrap().revision();
            assert_eq!(revision, 2 + round, "forwarded put {round}");
            // Linearizable: the other follower sees the write at once, no polling.
            let read = reader.get(key.clone(), None).await.unwrap();
            assert_eq!(pairs(&read), [(key.clone(), format!("value {round}"))], "read after forwarded put");
            assert!(header_revision(&read) >= revision);
        }
        let txn = Txn::new().when([Compare::version("f/00", CompareOp::Equal, 1)]).and_then([TxnOp::put(
            "f/txn",
            "via follower",
            None,
        )]);
        assert!(writer.txn(txn).await.unwrap().succeeded());
        let deleted = writer.delete("f/0", Some(DeleteOptions::new().with_prefix())).await.unwrap();
        assert_eq!(deleted.deleted(), 10);
        writer.compact(5, None).await.expect("compaction through a follower");
        let read = reader.get("f/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(read.count(), 11, "f/10..f/19 and f/txn: {:?}", keys(&read));
        assert_eq!(pairs(&reader.get("f/txn", None).await.unwrap())[0].1, "via follower");
        assert_status(
            reader.get("f/00", Some(GetOptions::new().with_revision(3))).await,
            Code::OutOfRange,
            COMPACTED,
            "compaction through a follower applies everywhere",
        );
    })
    .await;
}
