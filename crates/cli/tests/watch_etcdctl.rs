//! Debian's `etcdctl` 3.4 `watch` against a 3-member cluster, run as a child
//! process: history replay with `--rev`, `--prefix`, `--prev-kv`, and the
//! compaction error. Skipped when `etcdctl` is not on PATH, unless
//! `FIVEFOLD_REQUIRE_ALL=1`.
//!
//! Endpoints are `host:port` without `http://`: etcdctl 3.4 puts the URL into
//! the HTTP/2 `:authority` of some requests.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bounded, header_revision, start};
use etcd_client::Client;
use testkit::{Cluster, ClusterOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Bound on waiting for the lines one step expects.
const LINES_LIMIT: Duration = Duration::from_secs(20);
const COMPACTED: &str = "watch was canceled (etcdserver: mvcc: required revision has been compacted)";

/// `host:port` of member `index`.
fn endpoint(cluster: &Cluster, index: usize) -> String {
    cluster.client_url(index).trim_start_matches("http://").to_string()
}

/// A running `etcdctl watch`, killed when dropped.
struct Watch {
    child: Child,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Watch {
    fn spawn(program: &Path, endpoint: &str, args: &[&str]) -> Watch {
        let mut child = Command::new(program)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--dial-timeout=5s")
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("etcdctl starts");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        Watch { child, stdout }
    }

    /// The next `count` lines of output, within [`LINES_LIMIT`].
    async fn lines(&mut self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + LINES_LIMIT;
        let mut out = Vec::new();
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) => out.push(line),
                Ok(Ok(None)) => panic!("etcdctl watch exited after {out:?}; {}", self.stderr().await),
                Ok(Err(error)) => panic!("reading etcdctl output: {error}"),
                Err(_) => {
                    panic!("etcdctl watch printed only {out:?} of {count} lines within {LINES_LIMIT:?}")
                }
            }
        }
        out
    }

    /// What it wrote to stderr, once it has exited (kills it first if it has not).
    async fn stderr(&mut self) -> String {
        let _ = self.child.start_kill();
        let mut stderr = self.child.stderr.take().expect("stderr is piped");
        let mut text = String::new();
        let _ = tokio::time::timeout(
            LINES_LIMIT,
            tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text),
        )
        .await;
        text
    }
}

async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    let response = client.put(key, value, None).await.unwrap_or_else(|e| panic!("put {key}: {e}"));
    response.header().expect("put header").revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_replays_a_prefix_from_a_revision_then_follows() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let follower = (leader + 1) % cluster.len();
        let mut client = cluster.client(leader).await;
        // w/a 2, w/b 3, x 4 (outside), w/a 5, delete w/b 6.
        assert_eq!(put(&mut client, "w/a", "1").await, 2);
        put(&mut client, "w/b", "2").await;
        put(&mut client, "x", "outside").await;
        put(&mut client, "w/a", "3").await;
        assert_eq!(client.delete("w/b", None).await.unwrap().header().unwrap().revision(), 6);

        let mut watch =
            Watch::spawn(&program, &endpoint(&cluster, follower), &["--prefix", "w/", "--rev", "2"]);
        let history = watch.lines(12).await;
        assert_eq!(
            history,
            ["PUT", "w/a", "1", "PUT", "w/b", "2", "PUT", "w/a", "3", "DELETE", "w/b", ""],
            "etcdctl watch --prefix w/ --rev 2 on a follower"
        );
        // After the replay, new changes follow on the same watch.
        put(&mut client, "x", "still outside").await;
        put(&mut client, "w/c", "4").await;
        assert_eq!(watch.lines(3).await, ["PUT", "w/c", "4"], "a live event after the replay");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_previous_values() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let follower = (leader + 1) % cluster.len();
        let mut client = cluster.client(leader).await;
        let old = put(&mut client, "k", "old").await;
        let current = header_revision(&client.get("k", None).await.unwrap());
        assert_eq!(current, old);
        // From the next revision: whatever happens after this point, however
        // long etcdctl takes to open its watch.
        let from = (current + 1).to_string();
        let mut watch =
            Watch::spawn(&program, &endpoint(&cluster, follower), &["k", "--prev-kv", "--rev", &from]);
        put(&mut client, "k", "new").await;
        put(&mut client, "kk", "other key").await;
        client.delete("k", None).await.unwrap();
        assert_eq!(
            watch.lines(10).await,
            ["PUT", "k", "old", "k", "new", "DELETE", "k", "new", "k", ""],
            "etcdctl watch k --prev-kv: each event prints the previous key-value first"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_from_a_compacted_revision_is_canceled() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let leader = cluster.leader().await.unwrap();
        let mut client = cluster.client(leader).await;
        for value in ["1", "2", "3", "4"] {
            put(&mut client, "c/k", value).await;
        }
        client.compact(4, None).await.expect("compact at 4");
        // On the leader, which applied the compaction before answering.
        let mut watch =
            Watch::spawn(&program, &endpoint(&cluster, leader), &["--prefix", "c/", "--rev", "2"]);
        let exited = tokio::time::timeout(LINES_LIMIT, watch.child.wait()).await;
        // Kills it if it is still running, so that its output ends either way.
        let stderr = watch.stderr().await;
        let mut printed = Vec::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(LINES_LIMIT, watch.stdout.next_line()).await {
            printed.push(line);
        }
        let status = match exited {
            Ok(status) => status.expect("etcdctl exit status"),
            Err(_) => panic!(
                "etcdctl watch --rev 2 after compaction at 4 was not canceled within {LINES_LIMIT:?}; \
                 it printed {printed:?}, stderr {stderr:?}"
            ),
        };
        assert!(!status.success(), "etcdctl exits with an error; printed {printed:?}");
        assert!(printed.is_empty(), "no events from a compacted revision: {printed:?}");
        assert!(stderr.contains(COMPACTED), "stderr: {stderr}");
        assert!(stderr.contains("watch is canceled by the server"), "stderr: {stderr}");
    })
    .await;
}
