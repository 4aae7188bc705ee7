//! A follower that was down while the leader compacted its Raft log past the
//! follower's position catches up through a snapshot, then follows the log again.

mod common;

use std::time::Duration;

use common::{bounded, current_revision, header_revision, local_prefix, pairs, poll_until, start};
use etcd_client::GetOptions;
use testkit::ClusterOptions;

const TEST_LIMIT: Duration = Duration::from_secs(180);
const KEYS: usize = 500;
const WRITERS: usize = 4;
const PREFIX: &str = "snap/";

/// Puts `keys` keys `{prefix}{i:04}` through `member` from `WRITERS` clients at once.
async fn write_keys(
    cluster: &testkit::Cluster,
    member: usize,
    prefix: &str,
    keys: usize,
    value: fn(&str) -> Vec<u8>,
) {
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let mut client = cluster.client(member).await;
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for key in (writer..keys).step_by(WRITERS) {
                let key = format!("{prefix}{key:04}");
                client.put(key.clone(), value(&key), None).await.unwrap_or_else(|e| panic!("put {key}: {e}"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot() {
    bounded(TEST_LIMIT, async {
        let options =
            ClusterOptions::default().arg("--snapshot-count", 50).arg("--snapshot-catchup-entries", 5);
        let mut cluster = start(options).await;
        let leader = cluster.leader().await.unwrap();
        let lagging = (leader + 1) % cluster.len();
        cluster.kill(lagging).unwrap();

        // 500 keys through the leader: ten snapshots' worth of entries, while the
        // log keeps only 5 entries behind each snapshot.
        write_keys(&cluster, leader, PREFIX, KEYS, |key| format!("value {key}").into_bytes()).await;
        let mut leader_client = cluster.client(leader).await;
        let last = current_revision(&mut leader_client).await;
        assert_eq!(last, 1 + KEYS as i64, "one revision per put");

        let log_before_restart = cluster.log(lagging).len();
        cluster.restart(lagging).await.unwrap_or_else(|e| panic!("restart: {e:#}"));
        let follower = cluster.client(lagging).await;
        let caught_up = poll_until(Duration::from_secs(60), "restarted follower has every key", || {
            let mut follower = follower.clone();
            async move {
                let response = local_prefix(&mut follower, PREFIX).await.map_err(|e| e.to_string())?;
                if response.kvs().len() == KEYS && header_revision(&response) == last {
                    Ok(response)
                } else {
                    Err(format!("{} keys at revision {}", response.kvs().len(), header_revision(&response)))
                }
            }
        })
        .await;
        let on_leader = leader_client.get(PREFIX, Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(pairs(&caught_up), pairs(&on_leader), "the follower's data equals the leader's");
        let revisions = |response: &etcd_client::GetResponse| -> Vec<(i64, i64, i64)> {
            response.kvs().iter().map(common::revisions).collect()
        };
        assert_eq!(revisions(&caught_up), revisions(&on_leader), "and so do its revisions");

        // The install makes the data readable a moment before its log line
        // is written: wait for the line.
        poll_until(Duration::from_secs(10), "the restarted follower logs `installed snapshot`", || {
            let log = cluster.log(lagging);
            let since_restart = log.get(log_before_restart..).unwrap_or(&log).to_string();
            async move {
                if since_restart.contains("installed snapshot") {
                    Ok(())
                } else {
                    Err(format!("its log since the restart:\n{since_restart}"))
                }
            }
        })
        .await;

        // After the snapshot the follower takes part in ordinary replication again.
        let mut follower = follower.clone();
        for index in 0..20 {
            let key = format!("after/{index:02}");
            let put = follower.put(key.clone(), "after", None).await.unwrap();
            assert_eq!(put.header().unwrap().revision(), last + 1 + index, "{key}");
        }
        let local = poll_until(Duration::from_secs(10), "follower applies new writes", || {
            let mut follower = follower.clone();
            async move {
                let options = GetOptions::new().with_prefix().with_serializable();
                let response = follower.get("after/", Some(options)).await.map_err(|e| e.to_string())?;
                if response.kvs().len() == 20 {
                    Ok(response)
                } else {
                    Err(format!("{} of 20 keys", response.kvs().len()))
                }
            }
        })
        .await;
        assert_eq!(header_revision(&local), last + 20);

        // The old leader, whose log was purged behind ten snapshot points,
        // restarts from its own database and log: no snapshot data file
        // exists, and it still holds every key.
        cluster.kill(leader).unwrap();
        let data_file = cluster.data_dir(leader).join("snap/snapshot.data");
        assert!(!data_file.exists(), "snapshots write no copy of the state: {}", data_file.display());
        cluster.restart(leader).await.unwrap_or_else(|e| panic!("restart: {e:#}"));
        let restarted = cluster.client(leader).await;
        poll_until(Duration::from_secs(30), "restarted leader holds every key", || {
            let mut restarted = restarted.clone();
            async move {
                let snap = local_prefix(&mut restarted, PREFIX).await.map_err(|e| e.to_string())?;
                let after = local_prefix(&mut restarted, "after/").await.map_err(|e| e.to_string())?;
                if snap.kvs().len() == KEYS && after.kvs().len() == 20 && header_revision(&after) == last + 20
                {
                    Ok(())
                } else {
                    Err(format!(
                        "{} + {} keys at revision {}",
                        snap.kvs().len(),
                        after.kvs().len(),
                        header_revision(&after)
                    ))
                }
            }
        })
        .await;
    })
    .await;
}

/// Values this large make a count-bounded AppendEntries (1,024 entries of
/// 64 KiB plus their framing) larger than a peer message may be (64 MiB).
const LARGE_VALUE_BYTES: usize = 64 * 1024;
const LARGE_KEYS: usize = 1200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_through_large_entries() {
    bounded(TEST_LIMIT, async {
        // No snapshot point is reached, so the follower can only catch up from the log.
        let mut cluster = start(ClusterOptions::default().arg("--snapshot-count", 100_000)).await;
        let leader = cluster.leader().await.unwrap();
        let lagging = (leader + 1) % cluster.len();
        cluster.kill(lagging).unwrap();

        write_keys(&cluster, leader, "large/", LARGE_KEYS, |key| {
            vec![key.as_bytes()[key.len() - 1]; LARGE_VALUE_BYTES]
        })
        .await;
        let mut leader_client = cluster.client(leader).await;
        let last = current_revision(&mut leader_client).await;

        let log_before_restart = cluster.log(lagging).len();
        cluster.restart(lagging).await.unwrap_or_else(|e| panic!("restart: {e:#}"));
        let follower = cluster.client(lagging).await;
        poll_until(Duration::from_secs(60), "restarted follower has every large key", || {
            let mut follower = follower.clone();
            async move {
                let options = GetOptions::new().with_prefix().with_serializable().with_count_only();
                let response = follower.get("large/", Some(options)).await.map_err(|e| e.to_string())?;
                if response.count() == LARGE_KEYS as i64 && header_revision(&response) == last {
                    Ok(())
                } else {
                    Err(format!("{} keys at revision {}", response.count(), header_revision(&response)))
                }
            }
        })
        .await;
        let log = cluster.log(lagging);
        let since_restart = log.get(log_before_restart..).unwrap_or(&log);
        assert!(
            !since_restart.contains("installed snapshot"),
            "the follower caught up from the log, not a snapshot"
        );
    })
    .await;
}
