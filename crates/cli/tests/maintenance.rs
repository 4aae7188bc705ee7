//! The Maintenance API and the operator workflows around it: `etcdctl endpoint
//! status/health/hashkv`, `snapshot save` then `fivefold snapshot restore`, alarms and
//! the backend quota (NOSPACE), defragmentation, `move-leader`, periodic auto
//! compaction, and HashKV at past and future revisions.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    assert_status, bounded, host_port, json_field_values, local_pairs_under, poll_until, run_etcdctl, start,
    wait_same_revision, CtlOutput,
};
use etcd_client::{Client, CompactionOptions, GetOptions};
use testkit::{Cluster, ClusterOptions};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// Bound on one condition that the cluster reaches by itself.
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// `host:port` of every member, comma separated: the `--endpoints` etcdctl 3.4 needs.
fn endpoints(cluster: &Cluster) -> String {
    cluster.client_urls().iter().map(|url| host_port(url)).collect::<Vec<_>>().join(",")
}

#[track_caller]
fn assert_ran(run: &CtlOutput, what: &str) {
    assert!(run.success, "etcdctl {what} failed: {run:?}");
}

/// The ids of all members, from their Status headers.
async fn member_ids(cluster: &Cluster) -> Vec<u64> {
    let mut ids = Vec::new();
    for index in 0..cluster.len() {
        let mut client = cluster.client(index).await;
        let status = client.status().await.unwrap_or_else(|e| panic!("Status of member {index}: {e}"));
        ids.push(status.header().unwrap().member_id());
    }
    ids
}

/// A version string such as `3.5.17` as numbers.
fn version_numbers(version: &str) -> Vec<u64> {
    let core = version.trim_matches('"').split(['-', '+']).next().unwrap_or_default();
    core.split('.').map(|part| part.parse().unwrap_or_else(|_| panic!("version {version}"))).collect()
}

/// Puts `count` keys `prefix0000`... with distinct values through `client`.
async fn put_keys(client: &mut Client, prefix: &str, count: usize) {
    for index in 0..count {
        let key = format!("{prefix}{index:04}");
        client
            .put(key.clone(), format!("value of {key}"), None)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoint_status_health_and_hashkv() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(Duration::from_secs(120), async {
        let cluster = start(ClusterOptions::default()).await;
        let all = endpoints(&cluster);
        let ids = member_ids(&cluster).await;
        let mut client = cluster.client(0).await;
        put_keys(&mut client, "status/", 30).await;
        client.delete("status/0007", None).await.expect("delete");

        let status = run_etcdctl(&program, &all, &["endpoint", "status", "-w", "json"]).await;
        assert_ran(&status, "endpoint status");
        let json = &status.stdout;
        let versions = json_field_values(json, "version");
        assert_eq!(versions.len(), 3, "one status per endpoint: {json}");
        for version in &versions {
            assert!(version_numbers(version) >= vec![3, 5, 13], "version {version} is below 3.5.13");
        }
        let leaders = json_field_values(json, "leader");
        assert_eq!(leaders.len(), 3, "{json}");
        assert!(leaders.iter().all(|leader| leader == &leaders[0]), "one leader: {leaders:?}");
        let leader: u64 = leaders[0].parse().expect("numeric leader id");
        assert!(ids.contains(&leader), "leader {leader} is a member: {ids:?}");
        let number = |field: &str| -> Vec<u64> {
            json_field_values(json, field).iter().map(|v| v.parse().expect("a number")).collect()
        };
        let indexes = number("raftIndex");
        assert_eq!(indexes.len(), 3, "{json}");
        // 31 writes went through the log, plus the leader's entries and the membership.
        assert!(indexes.iter().all(|index| *index >= 31), "raft indexes: {indexes:?}");
        let terms = number("raftTerm");
        assert!(terms.len() == 3 && terms.iter().all(|term| *term >= 1), "raft terms: {terms:?}");
        let sizes = number("dbSize");
        assert!(sizes.len() == 3 && sizes.iter().all(|size| *size > 0), "db sizes: {sizes:?}");

        let health = run_etcdctl(&program, &all, &["endpoint", "health"]).await;
        assert_ran(&health, "endpoint health");
        let healthy = format!("{}{}", health.stdout, health.stderr).matches("is healthy").count();
        assert_eq!(healthy, 3, "{health:?}");

        // Every member has applied the same writes: the same hash, at the current
        // revision and at a past one.
        let revision = wait_same_revision(&cluster, &[0, 1, 2], STEP_LIMIT).await;
        for rev in [revision.to_string(), "12".to_string()] {
            let run =
                run_etcdctl(&program, &all, &["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")])
                    .await;
            assert_ran(&run, "endpoint hashkv");
            let hashes = json_field_values(&run.stdout, "hash");
            assert_eq!(hashes.len(), 3, "one hash per endpoint: {}", run.stdout);
            assert!(hashes.iter().all(|hash| hash == &hashes[0]), "hashes at revision {rev}: {}", run.stdout);
            let revisions = json_field_values(&run.stdout, "revision");
            assert!(revisions.iter().all(|r| r.parse::<i64>() == Ok(revision)), "{}", run.stdout);
        }
        let run = run_etcdctl(&program, &all, &["endpoint", "hashkv", "-w", "json"]).await;
        assert_ran(&run, "endpoint hashkv at the current revision");
        let current = json_field_values(&run.stdout, "hash");
        let past = run_etcdctl(&program, &all, &["endpoint", "hashkv", "-w", "json", "--rev=12"]).await;
        assert_ne!(current[0], json_field_values(&past.stdout, "hash")[0], "later writes change the hash");
    })
    .await;
}

/// What differs between two key spaces, briefly: keys only in one, keys whose values
/// differ (by length).
fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    let gone: Vec<&String> = before.keys().filter(|key| !after.contains_key(*key)).collect();
    let new: Vec<&String> = after.keys().filter(|key| !before.contains_key(*key)).collect();
    let changed: Vec<(&String, usize, usize)> = before
        .iter()
        .filter_map(|(key, value)| {
            after.get(key).filter(|other| *other != value).map(|other| (key, value.len(), other.len()))
        })
        .collect();
    format!("gone {gone:?}, new {new:?}, changed (key, bytes before, bytes after) {changed:?}")
}

/// `fivefold snapshot restore FILE --data-dir DIR`.
fn restore(file: &Path, data_dir: &Path) -> std::process::Output {
    Command::new(common::bin())
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("fivefold snapshot restore runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_save_then_restore_into_a_new_cluster() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(Duration::from_secs(120), async {
        let cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(0).await;
        put_keys(&mut client, "snap/", 40).await;
        for index in 0..10 {
            client.put(format!("snap/{index:04}"), "overwritten", None).await.unwrap();
        }
        client.delete("snap/0039", None).await.unwrap();
        let revision = common::current_revision(&mut client).await;
        let before = client.get("snap/", Some(GetOptions::new().with_prefix())).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backup.db");
        let file_arg = file.to_str().unwrap();
        let leader = cluster.leader().await.unwrap();
        let follower = (leader + 1) % cluster.len();
        // Saved from a follower: it serves its own state, which must be complete.
        common::wait_same_revision(&cluster, &[follower], STEP_LIMIT).await;
        let saved =
            run_etcdctl(&program, &host_port(&cluster.client_url(follower)), &["snapshot", "save", file_arg])
                .await;
        assert_ran(&saved, "snapshot save");
        assert!(saved.stdout.contains(&format!("Snapshot saved at {file_arg}")), "{saved:?}");

        // Refused: a corrupt copy, and a data dir that exists.
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        let corrupt = dir.path().join("corrupt.db");
        std::fs::write(&corrupt, &bytes).unwrap();
        let refused_dir = dir.path().join("refused.data");
        let refused = restore(&corrupt, &refused_dir);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "restore of a corrupt file succeeded: {refused:?}");
        assert!(
            stderr.contains("corrupt") && stderr.contains("corrupt.db"),
            "restore of a corrupt file must say so and name the file; stderr: {stderr}"
        );
        assert!(!refused_dir.exists(), "a refused restore leaves no data dir behind");
        let existing = restore(&file, dir.path());
        assert!(!existing.status.success(), "restore into an existing dir succeeded: {existing:?}");

        // A new single-member cluster on the restored data dir.
        // A cluster of its own: another token, so it shares no ids with the source.
        let options = ClusterOptions { token: "fivefold-restored".to_string(), ..ClusterOptions::members(1) };
        let mut restored = start(options).await;
        restored.stop(0).await.unwrap();
        let data_dir = restored.data_dir(0).to_path_buf();
        std::fs::remove_dir_all(&data_dir).unwrap();
        let output = restore(&file, &data_dir);
        assert!(output.status.success(), "restore: {output:?}");
        restored.restart(0).await.unwrap_or_else(|e| panic!("the restored member starts: {e:#}"));
        let mut fresh = restored.client(0).await;
        let after = fresh.get("snap/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(common::header_revision(&after), revision, "the restored cluster's revision");
        let versions = |response: &etcd_client::GetResponse| -> Vec<(String, String, (i64, i64, i64))> {
            response
                .kvs()
                .iter()
                .map(|kv| (common::text(kv.key()), common::text(kv.value()), common::revisions(kv)))
                .collect()
        };
        assert_eq!(versions(&after), versions(&before), "keys, values and revisions after the restore");
        let old = fresh.get("snap/0000", Some(GetOptions::new().with_revision(2))).await.unwrap();
        assert_eq!(
            common::pairs(&old),
            [("snap/0000".to_string(), "value of snap/0000".to_string())],
            "history"
        );
        let put =
            fresh.put("snap/new", "after restore", None).await.expect("a write on the restored cluster");
        assert_eq!(put.header().unwrap().revision(), revision + 1, "revisions continue after the restore");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_alarm_list_defrag_and_move_leader() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(Duration::from_secs(120), async {
        let cluster = start(ClusterOptions::default()).await;
        let all = endpoints(&cluster);
        let alarms = run_etcdctl(&program, &all, &["alarm", "list"]).await;
        assert_ran(&alarms, "alarm list");
        assert_eq!(alarms.stdout, "", "no alarms on a fresh cluster");

        // Garbage for defrag to reclaim: overwritten and deleted values, compacted.
        let mut client = cluster.client(0).await;
        let big = "x".repeat(4096);
        for round in 0..3 {
            for index in 0..40 {
                client.put(format!("defrag/{index:03}"), format!("{round}{big}"), None).await.unwrap();
            }
        }
        client.delete("defrag/02", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
        let revision = common::current_revision(&mut client).await;
        client.compact(revision, Some(CompactionOptions::new().with_physical())).await.expect("compact");
        wait_same_revision(&cluster, &[0, 1, 2], STEP_LIMIT).await;
        let mut sizes = Vec::new();
        let mut contents = Vec::new();
        for index in 0..3 {
            let mut member = cluster.client(index).await;
            sizes.push(member.status().await.unwrap().db_size());
            contents.push(local_pairs_under(&mut member, "defrag/").await.unwrap());
        }
        assert_eq!(contents[0].len(), 30, "40 keys less the 10 deleted");
        let defrag = run_etcdctl(&program, &all, &["defrag"]).await;
        assert_ran(&defrag, "defrag");
        for index in 0..3 {
            let line =
                format!("Finished defragmenting etcd member[{}]", host_port(&cluster.client_url(index)));
            assert!(defrag.stdout.contains(&line), "{line:?} in {defrag:?}");
            let mut member = cluster.client(index).await;
            let size = member.status().await.unwrap().db_size();
            assert!(size <= sizes[index], "member {index}'s db grew with defrag: {} -> {size}", sizes[index]);
            let after = local_pairs_under(&mut member, "defrag/").await.unwrap();
            assert!(
                after == contents[index],
                "member {index}'s data changed with defrag: {}",
                diff(&contents[index], &after)
            );
            member.put(format!("defragged/{index}"), "ok", None).await.expect("a write after defrag");
        }

        // move-leader to a follower, sent to the leader's endpoint alone.
        let ids = member_ids(&cluster).await;
        let leader = cluster.leader().await.unwrap();
        let target = (leader + 2) % cluster.len();
        let moved = run_etcdctl(
            &program,
            &host_port(&cluster.client_url(leader)),
            &["move-leader", &format!("{:x}", ids[target])],
        )
        .await;
        assert_ran(&moved, "move-leader");
        assert!(
            moved
                .stdout
                .contains(&format!("Leadership transferred from {:x} to {:x}", ids[leader], ids[target])),
            "{moved:?}"
        );
        for index in 0..3 {
            let client = cluster.client(index).await;
            poll_until(STEP_LIMIT, &format!("member {index} names the new leader"), || {
                let mut client = client.clone();
                let target_id = ids[target];
                async move {
                    let status = client.status().await.map_err(|e| e.to_string())?;
                    if status.leader() == target_id {
                        Ok(())
                    } else {
                        Err(format!("leader {:x}", status.leader()))
                    }
                }
            })
            .await;
        }
        assert_eq!(cluster.leader().await.unwrap(), target, "the chosen follower leads");
        for index in 0..3 {
            common::assert_member_healthy(&cluster, index, &format!("moved/{index}")).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_quota_raises_nospace_until_space_is_freed_and_disarmed() {
    const QUOTA: u64 = 1_000_000;
    const VALUE_BYTES: usize = 100 * 1024;
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(Duration::from_secs(120), async {
        let cluster = start(ClusterOptions::default().arg("--quota-backend-bytes", QUOTA)).await;
        let all = endpoints(&cluster);
        let ids = member_ids(&cluster).await;
        let mut client = cluster.client(0).await;
        assert_eq!(client.status().await.unwrap().db_size_quota(), QUOTA as i64, "Status reports the quota");

        // ~100 KB values until the quota refuses one; 30 would be 3 MB.
        let value = "q".repeat(VALUE_BYTES);
        let mut accepted = 0;
        let refused = loop {
            assert!(accepted < 30, "{accepted} puts of {VALUE_BYTES} bytes fit under a {QUOTA}-byte quota");
            match client.put(format!("quota/{accepted:02}"), value.clone(), None).await {
                Ok(_) => accepted += 1,
                Err(error) => break Err::<(), _>(error),
            }
        };
        assert!(accepted >= 1, "the first 100 KB put must fit under a {QUOTA}-byte quota");
        assert_status(refused, tonic::Code::ResourceExhausted, NO_SPACE, "the put past the quota");

        let alarms = run_etcdctl(&program, &all, &["alarm", "list"]).await;
        assert_ran(&alarms, "alarm list");
        let nospace: Vec<&str> =
            alarms.stdout.lines().filter(|line| line.contains("alarm:NOSPACE")).collect();
        assert!(!nospace.is_empty(), "alarm list shows NOSPACE: {alarms:?}");
        for line in &nospace {
            assert!(
                ids.iter().any(|id| line.contains(&format!("memberID:{id} "))),
                "a member's alarm: {line}"
            );
        }
        let status = client.status().await.unwrap();
        assert!(
            status.errors().iter().any(|error| error.contains("NOSPACE")),
            "Status errors: {:?}",
            status.errors()
        );

        // Every member refuses a put, even a small one; a delete still works.
        for index in 0..3 {
            let mut member = cluster.client(index).await;
            assert_status(
                member.put("quota/small", "v", None).await,
                tonic::Code::ResourceExhausted,
                NO_SPACE,
                &format!("a small put through member {index} while NOSPACE is raised"),
            );
        }
        let deleted = client
            .delete("quota/", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .expect("a delete while NOSPACE is raised");
        assert_eq!(deleted.deleted(), accepted as i64, "every quota/ key deleted");

        // Free the space (compact, defragment every member), then disarm.
        let revision = common::current_revision(&mut client).await;
        client.compact(revision, Some(CompactionOptions::new().with_physical())).await.expect("compact");
        wait_same_revision(&cluster, &[0, 1, 2], STEP_LIMIT).await;
        for index in 0..3 {
            let mut member = cluster.client(index).await;
            member.defragment().await.unwrap_or_else(|e| panic!("defragment member {index}: {e}"));
            let size = member.status().await.unwrap().db_size();
            assert!(size < QUOTA as i64, "member {index}'s db after compaction and defrag: {size} bytes");
        }
        let disarm = run_etcdctl(&program, &all, &["alarm", "disarm"]).await;
        assert_ran(&disarm, "alarm disarm");
        assert!(disarm.stdout.contains("alarm:NOSPACE"), "disarm lists what it disarmed: {disarm:?}");
        let alarms = run_etcdctl(&program, &all, &["alarm", "list"]).await;
        assert_eq!((alarms.success, alarms.stdout.as_str()), (true, ""), "no alarm after disarm: {alarms:?}");
        for index in 0..3 {
            let mut member = cluster.client(index).await;
            member
                .put(format!("quota/again/{index}"), value.clone(), None)
                .await
                .unwrap_or_else(|e| panic!("a put through member {index} after disarm: {e}"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_drops_history_older_than_the_retention() {
    const RETENTION: Duration = Duration::from_secs(2);
    bounded(Duration::from_secs(90), async {
        let options = ClusterOptions::default()
            .arg("--auto-compaction-mode", "periodic")
            .arg("--auto-compaction-retention", "2s");
        let cluster = start(options).await;
        let mut client = cluster.client(0).await;
        let first = client.put("auto/key", "v0", None).await.expect("put");
        let written = Instant::now();
        let early = first.header().unwrap().revision();
        for version in 1..10 {
            client.put("auto/key", format!("v{version}"), None).await.expect("put");
        }
        let latest = common::current_revision(&mut client).await;

        // Within the retention the early revision is still there.
        let read = client.get("auto/key", Some(GetOptions::new().with_revision(early))).await;
        if written.elapsed() < RETENTION {
            let read = read.unwrap_or_else(|e| panic!("reading revision {early} within the retention: {e}"));
            assert_eq!(common::pairs(&read), [("auto/key".to_string(), "v0".to_string())]);
        }

        // Then auto compaction removes it, on every member.
        for index in 0..3 {
            let client = cluster.client(index).await;
            let outcome =
                poll_until(STEP_LIMIT, &format!("member {index} compacts revision {early}"), || {
                    let mut client = client.clone();
                    async move {
                        let options = GetOptions::new().with_revision(early).with_serializable();
                        match client.get("auto/key", Some(options)).await {
                            Err(error) => Ok(Err::<(), _>(error)),
                            Ok(response) => Err(format!("still readable: {:?}", common::pairs(&response))),
                        }
                    }
                })
                .await;
            assert_status(outcome, tonic::Code::OutOfRange, COMPACTED, "a read below the auto compaction");
        }
        let elapsed = written.elapsed();
        assert!(
            elapsed >= RETENTION,
            "revision {early} was compacted after {elapsed:?}, within the retention"
        );
        let now = client.get("auto/key", Some(GetOptions::new().with_revision(latest))).await;
        let now = now.expect("the latest revision survives compaction");
        assert_eq!(common::pairs(&now), [("auto/key".to_string(), "v9".to_string())]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_at_past_revisions_agrees_across_members() {
    bounded(Duration::from_secs(90), async {
        let cluster = start(ClusterOptions::default()).await;
        let mut client = cluster.client(0).await;
        put_keys(&mut client, "hash/a/", 20).await;
        let past = common::current_revision(&mut client).await;
        put_keys(&mut client, "hash/b/", 10).await;
        client.delete("hash/a/0003", None).await.unwrap();
        client.put("hash/a/0004", "changed", None).await.unwrap();
        let current = wait_same_revision(&cluster, &[0, 1, 2], STEP_LIMIT).await;

        let hash_at = |revision: i64| {
            let cluster = &cluster;
            async move {
                let mut hashes = Vec::new();
                for index in 0..3 {
                    let mut member = cluster.client(index).await;
                    let hash = member
                        .hash_kv(revision)
                        .await
                        .unwrap_or_else(|e| panic!("HashKV({revision}) on member {index}: {e}"));
                    let expected = if revision == 0 { current } else { revision };
                    assert_eq!(hash.hash_revision(), expected, "HashKV({revision}) on member {index}");
                    hashes.push((hash.hash(), hash.compact_version()));
                }
                assert!(hashes.iter().all(|h| *h == hashes[0]), "HashKV({revision}) differs: {hashes:?}");
                hashes[0]
            }
        };
        let (at_past, compacted) = hash_at(past).await;
        assert_eq!(compacted, -1, "nothing compacted yet (etcd's compact revision starts at -1)");
        let (at_current, _) = hash_at(current).await;
        assert_ne!(at_past, at_current, "the writes after revision {past} change the hash");
        assert_eq!(hash_at(0).await.0, at_current, "revision 0 means the current revision");

        // History does not move: more writes leave the hash at `past` as it was.
        put_keys(&mut client, "hash/c/", 5).await;
        let newest = wait_same_revision(&cluster, &[0, 1, 2], STEP_LIMIT).await;
        assert_eq!(hash_at(past).await.0, at_past, "HashKV at revision {past} after later writes");

        for index in 0..3 {
            let mut member = cluster.client(index).await;
            assert_status(
                member.hash_kv(newest + 1000).await,
                tonic::Code::OutOfRange,
                FUTURE_REVISION,
                &format!("HashKV at a future revision on member {index}"),
            );
        }

        // After a compaction: below it is refused, at and above it members agree.
        client.compact(past, None).await.expect("compact");
        wait_same_revision(&cluster, &[0, 1, 2], STEP_LIMIT).await;
        for index in 0..3 {
            let client = cluster.client(index).await;
            let outcome = poll_until(STEP_LIMIT, &format!("member {index} applies the compaction"), || {
                let mut client = client.clone();
                async move {
                    match client.hash_kv(past - 1).await {
                        Ok(response) => Err(format!("still hashes revision {}: {response:?}", past - 1)),
                        Err(error) => Ok(Err::<(), _>(error)),
                    }
                }
            })
            .await;
            assert_status(
                outcome,
                tonic::Code::OutOfRange,
                COMPACTED,
                &format!("HashKV below the compaction on {index}"),
            );
        }
        let (_, compact_revision) = hash_at(past).await;
        assert_eq!(compact_revision, past, "HashKV reports the compaction revision");
        hash_at(newest).await;
    })
    .await;
}
