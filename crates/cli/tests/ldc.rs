//! The unit topology and unit failover through the etcd v3 API: `fivefold
//! topology apply|show|validate`, `fivefold failover unit|city`, `fivefold
//! failback`, and the fence that keeps an instance of a moved unit from writing.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bin, bounded, start};
use etcd_client::{Client, TxnOp};
use router::fence::FencedWrite;
use router::{Fence, UnitRouting};
use testkit::ClusterOptions;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

const TEST_LIMIT: Duration = Duration::from_secs(120);

/// `fivefold ARGS --endpoints E`: (success, stdout, stderr).
async fn fivefold(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(bin()).args(args).args(["--endpoints", endpoints]).output().await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Every routing record: unit -> (serving dc, epoch).
async fn placements(client: &mut Client) -> BTreeMap<String, (String, u64)> {
    router::record::read_all(client)
        .await
        .unwrap()
        .into_iter()
        .map(|(unit, stored)| (unit, (stored.routing.current_dc, stored.routing.epoch)))
        .collect()
}

fn placed(list: &[(&str, &str, u64)]) -> BTreeMap<String, (String, u64)> {
    list.iter().map(|(u, dc, e)| (u.to_string(), (dc.to_string(), *e))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_failover_failback_and_bad_input() {
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let endpoints = cluster
            .client_urls()
            .iter()
            .map(|u| u.trim_start_matches("http://").to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut client = cluster.client(0).await;

        let (ok, _, err) = fivefold(&endpoints, &["topology", "show"]).await;
        assert!(!ok && err.contains("no topology is published"), "{err}");
        let (ok, out, err) = fivefold(&endpoints, &["topology", "apply", "--default"]).await;
        assert!(ok, "{err}");
        assert!(out.contains("8 new units, 0 kept, 0 removed"), "{out}");
        let home = placed(&[
            ("cz-hangzhou", "hz-a", 1),
            ("cz-shanghai", "sh-a", 1),
            ("cz-shenzhen", "sz-a", 1),
            ("gz", "hz-a", 1),
            ("rz-hz-a", "hz-a", 1),
            ("rz-hz-b", "hz-b", 1),
            ("rz-sh-a", "sh-a", 1),
            ("rz-sh-b", "sh-b", 1),
        ]);
        assert_eq!(placements(&mut client).await, home, "every unit at home, epoch 1");
        let (ok, out, _) = fivefold(&endpoints, &["topology", "show"]).await;
        assert!(ok && out.contains("rz-hz-b") && out.contains("25-49"), "{out}");

        // Bad input: each a clear error, nothing changed.
        let before = placements(&mut client).await;
        let topology_before = router::read_topology(&mut client).await.unwrap().1;
        let (ok, _, err) = fivefold(&endpoints, &["failover", "unit", "nope"]).await;
        assert!(!ok && err.contains("unknown unit \"nope\""), "{err}");
        let (ok, _, err) = fivefold(&endpoints, &["failover", "unit", "rz-hz-a", "--to", "mars-1"]).await;
        assert!(!ok && err.contains("unknown dc \"mars-1\""), "{err}");
        let (ok, _, err) = fivefold(&endpoints, &["failover", "city", "atlantis"]).await;
        assert!(!ok && err.contains("unknown city \"atlantis\""), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        let overlapping = topology::DEFAULT_TOPOLOGY_TOML.replacen("\"25-49\"", "\"20-49\"", 1);
        assert_ne!(overlapping, topology::DEFAULT_TOPOLOGY_TOML, "the default names shards 25-49");
        std::fs::write(&bad, overlapping).unwrap();
        let (ok, _, err) = fivefold(&endpoints, &["topology", "apply", bad.to_str().unwrap()]).await;
        assert!(!ok && err.contains("not a valid topology") && err.contains("20"), "{err}");
        std::fs::write(&bad, "[[units]\nname=").unwrap();
        let validate = Command::new(bin()).args(["topology", "validate"]).arg(&bad).output().await.unwrap();
        let err = String::from_utf8_lossy(&validate.stderr);
        assert!(!validate.status.success() && err.contains("not a valid topology"), "{err}");
        let good = dir.path().join("good.toml");
        std::fs::write(&good, topology::DEFAULT_TOPOLOGY_TOML).unwrap();
        let validate = Command::new(bin()).args(["topology", "validate"]).arg(&good).output().await.unwrap();
        let out = String::from_utf8_lossy(&validate.stdout);
        assert!(validate.status.success() && out.contains("3 cities, 8 units, 100 shards"), "{out}");
        assert_eq!(placements(&mut client).await, before, "bad commands changed nothing");
        assert_eq!(router::read_topology(&mut client).await.unwrap().1, topology_before);

        // A controller that no longer holds the leadership lease cannot move units.
        let stale =
            etcd_client::Compare::lease(router::controller::LEADER_KEY, etcd_client::CompareOp::Equal, 4242);
        let refused = router::failover_city_fenced(&mut client, "hangzhou", Some(stale)).await;
        assert!(matches!(refused, Err(router::RouterError::Conflict)), "{refused:?}");
        assert_eq!(placements(&mut client).await, before, "a fenced-off failover changed nothing");

        // One unit to its standby, then a city, then everything home.
        let (ok, out, err) = fivefold(&endpoints, &["failover", "unit", "rz-hz-a"]).await;
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "rz-hz-a: hz-a -> sh-a (epoch 2)");
        let (ok, out, err) = fivefold(&endpoints, &["failover", "city", "hangzhou"]).await;
        assert!(ok, "{err}");
        let mut moved: Vec<&str> = out.lines().collect();
        moved.sort();
        assert_eq!(moved, ["gz: hz-a -> sh-a (epoch 2)", "rz-hz-b: hz-b -> sh-b (epoch 2)"], "{out}");
        let (ok, out, _) = fivefold(&endpoints, &["failover", "city", "hangzhou"]).await;
        assert!(ok && out.contains("nothing to move"), "{out}");
        let (ok, out, err) = fivefold(&endpoints, &["failback"]).await;
        assert!(ok, "{err}");
        assert_eq!(out.lines().count(), 3, "{out}");
        let after = placements(&mut client).await;
        for (unit, (dc, epoch)) in &after {
            let (home_dc, _) = &home[unit];
            assert_eq!(dc, home_dc, "{unit} is home again");
            let moves = if ["rz-hz-a", "rz-hz-b", "gz"].contains(&unit.as_str()) { 2 } else { 0 };
            assert_eq!(*epoch, 1 + moves, "{unit}: one epoch per move");
        }

        // A unit dropped from the topology and added back continues from its epoch.
        let mut without = topology::UnitTopology::default_deployment();
        without.units.retain(|u| u.name != "cz-shenzhen");
        let published = router::publish(&mut client, &without).await.unwrap();
        assert_eq!(published.removed, ["cz-shenzhen"]);
        let epoch_before = placements(&mut client).await["cz-shenzhen"].1;
        router::publish(&mut client, &topology::UnitTopology::default_deployment()).await.unwrap();
        assert_eq!(placements(&mut client).await["cz-shenzhen"].1, epoch_before, "no epoch starts over");

        // Re-publishing keeps where units are and their epochs.
        fivefold(&endpoints, &["failover", "unit", "rz-sh-a"]).await;
        let (ok, out, _) = fivefold(&endpoints, &["topology", "apply", "--default"]).await;
        assert!(ok && out.contains("0 new units, 8 kept"), "{out}");
        assert_eq!(placements(&mut client).await["rz-sh-a"], ("hz-a".to_string(), 2));
    })
    .await;
}

/// Writers fence their writes on the unit's epoch while the unit fails over:
/// no write of the old epoch is accepted after the move's revision, the writers
/// see `Fenced` with the new record, and a new fence writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_holds_under_write_load() {
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let mut client = cluster.client(0).await;
        router::publish(&mut client, &topology::UnitTopology::default_deployment()).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4 {
            let mut client = cluster.client(w % cluster.len()).await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let fence = Fence::acquire(&mut client, "rz-hz-a").await.unwrap();
                let (mut accepted, mut fenced) = (Vec::new(), None::<UnitRouting>);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && fenced.is_none() {
                    n += 1;
                    let key = format!("acct/rz-hz-a/w{w}-{n}");
                    let put = TxnOp::put(key.as_str(), fence.epoch().to_string(), None);
                    match fence.write(&mut client, vec![], vec![put]).await.unwrap() {
                        FencedWrite::Done(response) => accepted.push(response.header().unwrap().revision()),
                        FencedWrite::Fenced(now) => fenced = now,
                        FencedWrite::ConditionFailed => panic!("no extra conditions were given"),
                    }
                }
                (accepted, fenced)
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let moves = router::failover_unit(&mut client, "rz-hz-a", None).await.unwrap();
        assert_eq!(moves.len(), 1);
        let moved_at = Fence::acquire(&mut client, "rz-hz-a").await.unwrap();
        let move_revision =
            client.get(router::routing_key("rz-hz-a"), None).await.unwrap().kvs()[0].mod_revision();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let mut total = 0;
        for writer in writers {
            let (accepted, fenced) = writer.await.unwrap();
            total += accepted.len();
            assert!(
                accepted.iter().all(|revision| *revision < move_revision),
                "a write was accepted after the move"
            );
            let fenced = fenced.expect("every writer was fenced after the move");
            assert_eq!((fenced.current_dc.as_str(), fenced.epoch), ("sh-a", 2));
        }
        assert!(total > 10, "the writers wrote before the move ({total})");
        // Every stored write carries epoch 1 and predates the move.
        let written =
            client.get("acct/rz-hz-a/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(written.kvs().len(), total);
        assert!(written.kvs().iter().all(|kv| kv.value() == b"1" && kv.mod_revision() < move_revision));
        // The unit's new instance writes under epoch 2.
        assert_eq!(moved_at.epoch(), 2);
        let put = TxnOp::put("acct/rz-hz-a/after", "2", None);
        assert!(matches!(
            moved_at.write(&mut client, vec![], vec![put]).await.unwrap(),
            FencedWrite::Done(_)
        ));
    })
    .await;
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    lines.next_line().await.unwrap().expect("the controller prints")
}

/// The automatic controller, run "in shanghai" (its endpoints are the shanghai
/// members): when both hangzhou members stop answering (SIGSTOP), it moves the
/// units served from hangzhou to their standbys after `--down-after`, once; when
/// hangzhou answers again it says so and leaves failback to people.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_fails_a_lost_city_over() {
    let mut cluster = start(ClusterOptions::members(5)).await;
    bounded(TEST_LIMIT, async {
        let mut client = cluster.client(2).await;
        router::publish(&mut client, &topology::UnitTopology::default_deployment()).await.unwrap();
        let shanghai: Vec<usize> = (0..5).filter(|i| cluster.placement(*i).city == "shanghai").collect();
        let endpoints: Vec<String> = shanghai
            .iter()
            .map(|i| cluster.client_url(*i).trim_start_matches("http://").to_string())
            .collect();
        let mut controller = Command::new(bin())
            .args(["failover", "controller", "--down-after", "2s", "--id", "sh-controller"])
            .args(["--endpoints", &endpoints.join(",")])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(controller.stdout.take().unwrap()).lines();
        assert!(next_line(&mut lines).await.starts_with("failover controller sh-controller started"));
        assert_eq!(next_line(&mut lines).await, "leading");

        let hangzhou: Vec<usize> = (0..5).filter(|i| cluster.placement(*i).city == "hangzhou").collect();
        let lost_at = std::time::Instant::now();
        for index in &hangzhou {
            cluster.pause(*index).unwrap();
        }
        let report = next_line(&mut lines).await;
        assert!(report.starts_with("city hangzhou down for "), "{report}");
        let mut moves = Vec::new();
        for _ in 0..3 {
            moves.push(next_line(&mut lines).await);
        }
        let moved_after = lost_at.elapsed();
        moves.sort();
        assert_eq!(
            moves,
            [
                "gz: hz-a -> sh-a (epoch 2)",
                "rz-hz-a: hz-a -> sh-a (epoch 2)",
                "rz-hz-b: hz-b -> sh-b (epoch 2)"
            ],
            "the units served from hangzhou move to their standbys"
        );
        println!(
            "hangzhou lost: the controller moved its units {:.2} s after ({report})",
            moved_after.as_secs_f64()
        );
        assert!(moved_after >= Duration::from_secs(2), "moved before --down-after");
        assert!(moved_after < Duration::from_secs(8), "moved only after {moved_after:?}");
        let placed = placements(&mut client).await;
        for unit in ["rz-hz-a", "rz-hz-b", "gz"] {
            assert!(placed[unit].0.starts_with("sh-"), "{unit} is served from {}", placed[unit].0);
        }
        assert_eq!(placed["cz-hangzhou"], ("hz-a".to_string(), 1), "the city's own copy stays");
        for index in &hangzhou {
            cluster.resume(*index).unwrap();
        }
        assert_eq!(
            next_line(&mut lines).await,
            "city hangzhou answers again; `fivefold failback` moves its units home"
        );
        assert_eq!(placements(&mut client).await, placed, "no automatic failback");
    })
    .await;
}
