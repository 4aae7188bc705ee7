//! Moving leadership (etcd's MoveLeader) while clients keep writing and
//! reading: the transfer succeeds in one election, and no request fails.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, poll_until, start};
use etcd_client::Client;
use testkit::ClusterOptions;

/// Writers and readers running through the transfer.
const CLIENTS: usize = 6;
/// Successful requests before the transfer starts, and again after it ends.
const REQUESTS_AROUND: u64 = 200;

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    done: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

/// Client `id` alternates puts and linearizable gets on member `id % 3`.
async fn run_client(load: Arc<Load>, mut client: Client, id: usize) {
    let mut n = 0u64;
    while !load.stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("transfer/{id}/{}", n % 16);
        let result = if n.is_multiple_of(2) {
            client.put(key, n.to_string(), None).await.map(drop)
        } else {
            client.get(key, None).await.map(drop)
        };
        match result {
            Ok(()) => {
                load.done.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => load.failures.lock().unwrap().push(format!("client {id}: {error}")),
        }
    }
}

async fn wait_for_requests(load: &Load, count: u64, what: &str) {
    let from = load.done.load(Ordering::SeqCst);
    poll_until(Duration::from_secs(30), what, || async {
        let done = load.done.load(Ordering::SeqCst) - from;
        if done >= count {
            Ok(())
        } else {
            Err(format!("{done} requests done"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_under_load_takes_one_election_and_fails_no_request() {
    bounded(Duration::from_secs(120), async {
        let cluster = start(ClusterOptions::default()).await;
        let mut ids = Vec::new();
        for index in 0..cluster.len() {
            let mut client = cluster.client(index).await;
            ids.push(client.status().await.expect("status").header().expect("header").member_id());
        }
        let load = Arc::new(Load::default());
        let mut tasks = Vec::new();
        for id in 0..CLIENTS {
            let client = cluster.client(id % cluster.len()).await;
            tasks.push(tokio::spawn(run_client(load.clone(), client, id)));
        }
        wait_for_requests(&load, REQUESTS_AROUND, "requests before the transfer").await;

        let leader = cluster.leader().await.expect("a leader");
        let target = (leader + 1) % cluster.len();
        let mut on_leader = cluster.client(leader).await;
        let term_before = on_leader.status().await.expect("status").raft_term();
        let began = std::time::Instant::now();
        let moved = on_leader.move_leader(ids[target]).await;
        assert!(moved.is_ok(), "MoveLeader under load: {moved:?}");
        println!("MoveLeader under load took {:.2} s", began.elapsed().as_secs_f64());

        wait_for_requests(&load, REQUESTS_AROUND, "requests after the transfer").await;
        load.stop.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.expect("client task");
        }
        assert_eq!(cluster.leader().await.expect("a leader"), target, "the target leads");
        let mut on_target = cluster.client(target).await;
        let term_after = on_target.status().await.expect("status").raft_term();
        assert_eq!(term_after, term_before + 1, "the transfer took exactly one election");
        let failures = load.failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "requests failed across the transfer: {failures:?}");
    })
    .await;
}

/// With `--primary-city`, a leader elsewhere moves home only to a voter that
/// is live: one that went away keeps its last matched index in the leader's
/// metrics, and a transfer to it would hold every write for the transfer's
/// whole window (four election timeouts), again after each retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_city_voter_never_holds_writes() {
    /// A write every this often: few enough entries that the dead voter
    /// stays within the catch-up lag of the newest one.
    const PACE: Duration = Duration::from_millis(50);
    /// Longer than the settle time before a move home (3 election timeouts)
    /// plus two transfer windows.
    const WATCHED_FOR: Duration = Duration::from_secs(12);
    /// Under an election timeout: a transfer to the dead voter holds writes
    /// for at least that long (until its stall guard gives up), and for four
    /// without the guard.
    const SLOWEST_WRITE: Duration = Duration::from_millis(900);
    bounded(Duration::from_secs(120), async {
        let mut cluster = start(ClusterOptions::members(3).arg("--primary-city", "hangzhou")).await;
        let home =
            (0..cluster.len()).find(|i| cluster.placement(*i).city == "hangzhou").expect("a hangzhou member");
        let away = (0..cluster.len()).find(|i| *i != home).expect("another member");
        poll_until(Duration::from_secs(30), "the leader in hangzhou", || async {
            match cluster.leader().await {
                Ok(leader) if leader == home => Ok(()),
                other => Err(format!("leader {other:?}")),
            }
        })
        .await;
        let mut on_home = cluster.client(home).await;
        for n in 0..20 {
            on_home.put("placement/warm", n.to_string(), None).await.expect("put");
        }
        let away_id = cluster.member_id(away).expect("the member's id");
        on_home.move_leader(away_id).await.expect("move the leader out of hangzhou");
        // The hangzhou voter had every entry; now it goes away for good.
        cluster.kill(home).expect("kill the hangzhou member");

        let mut client = cluster.client(away).await;
        let began = std::time::Instant::now();
        let mut slowest = Duration::ZERO;
        let mut writes = 0;
        while began.elapsed() < WATCHED_FOR {
            let sent = std::time::Instant::now();
            client.put("placement/paced", writes.to_string(), None).await.expect("put");
            slowest = slowest.max(sent.elapsed());
            writes += 1;
            tokio::time::sleep(PACE).await;
        }
        println!("{writes} paced writes, slowest {slowest:?}");
        assert!(
            slowest < SLOWEST_WRITE,
            "a write waited {slowest:?}: a transfer to the dead voter held writes"
        );
        assert_ne!(cluster.leader().await.expect("a leader"), home);
    })
    .await;
}
