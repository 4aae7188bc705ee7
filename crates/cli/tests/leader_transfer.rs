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
