//! `client::Mirror`, the controller pattern every platform component uses,
//! against real members: it starts from a list, follows changes under its
//! prefix in order, and — through its liveness check (a linearizable read
//! plus a progress request) — also reaches store revisions made by writes
//! outside its prefix, so `wait_for(revision)` returns for any revision the
//! store has.

mod common;

use std::time::Duration;

use common::{bounded, start};
use testkit::ClusterOptions;

const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The liveness check runs every 2 s; a progress answer follows at once.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_its_prefix_and_reaches_revisions_made_elsewhere() {
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let mut writer = cluster.client(0).await;
        writer.put("mirror/a", "1", None).await.unwrap();
        let store = client::connect(&cluster.client_urls()).await.unwrap();
        let mirror = client::Mirror::start(store, "mirror/").await.unwrap();
        let (snapshot, mut changes) = mirror.subscribe();
        assert_eq!(snapshot.entries.keys().collect::<Vec<_>>(), ["mirror/a"]);

        let put = writer.put("mirror/b", "2", None).await.unwrap();
        let revision = put.header().unwrap().revision();
        tokio::time::timeout(CATCH_UP_LIMIT, mirror.wait_for(revision)).await.expect("caught up").unwrap();
        match changes.recv().await.unwrap() {
            client::Change::Put { key, entry } => {
                assert_eq!((key.as_str(), entry.mod_revision), ("mirror/b", revision))
            }
            other => panic!("expected the put of mirror/b, got {other:?}"),
        }
        writer.delete("mirror/a", None).await.unwrap();
        assert!(
            matches!(changes.recv().await.unwrap(), client::Change::Delete { key, .. } if key == "mirror/a")
        );

        // A write outside the prefix: no event reaches the mirror, but its
        // revision does, within the liveness period.
        let elsewhere = writer.put("not-mirrored", "x", None).await.unwrap().header().unwrap().revision();
        let started = std::time::Instant::now();
        tokio::time::timeout(CATCH_UP_LIMIT, mirror.wait_for(elsewhere))
            .await
            .expect("the mirror reaches a revision made outside its prefix")
            .unwrap();
        println!(
            "mirror reached revision {elsewhere} (made outside its prefix) after {:?}",
            started.elapsed()
        );
        assert_eq!(mirror.snapshot().entries.keys().collect::<Vec<_>>(), ["mirror/b"]);
    })
    .await;
}
