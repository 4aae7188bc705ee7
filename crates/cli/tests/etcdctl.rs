//! Debian's `etcdctl` (API v3) against a 3-member cluster: the client most operators
//! reach for first. Skipped when `etcdctl` is not on PATH, unless
//! `FIVEFOLD_REQUIRE_ALL=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{bounded, json_field_values, start};
use testkit::{Cluster, ClusterOptions};
use tokio::io::AsyncWriteExt;

const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one etcdctl run.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// What one etcdctl run printed.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

struct Etcdctl {
    program: PathBuf,
    endpoints: String,
}

impl Etcdctl {
    fn new(program: &Path, cluster: &Cluster) -> Etcdctl {
        Etcdctl { program: program.to_path_buf(), endpoints: cluster.client_urls().join(",") }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        self.run_on(&self.endpoints, args, stdin).await
    }

    async fn run_on(&self, endpoints: &str, args: &[&str], stdin: Option<&str>) -> Run {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=5s", "--command-timeout=10s"])
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("etcdctl starts");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes()).await.expect("write etcdctl stdin");
            drop(pipe);
        }
        let output = match tokio::time::timeout(RUN_LIMIT, child.wait_with_output()).await {
            Ok(output) => output.expect("etcdctl runs"),
            Err(_) => panic!("etcdctl {args:?} did not finish within {RUN_LIMIT:?}"),
        };
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs and expects success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args, None).await;
        assert!(run.success, "etcdctl {args:?} failed: {run:?}");
        run.stdout
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// Output lines of `etcdctl txn -i`, without its three interactive prompts.
fn txn_lines(text: &str) -> Vec<&str> {
    const PROMPTS: [&str; 3] =
        ["compares:", "success requests (get, put, del):", "failure requests (get, put, del):"];
    text.lines().filter(|line| !PROMPTS.contains(line)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_kv_txn_and_compaction() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let ctl = Etcdctl::new(&program, &cluster);

        // Revisions: e/a 2, e/b 3, e/c 4, e/a again 5.
        for (key, value) in [("e/a", "1"), ("e/b", "2"), ("e/c", "3"), ("e/a", "10")] {
            assert_eq!(ctl.ok(&["put", key, value]).await, "OK\n", "put {key}");
        }
        let all = ctl.ok(&["get", "--prefix", "e/"]).await;
        assert_eq!(lines(&all), ["e/a", "10", "e/b", "2", "e/c", "3"]);
        let old = ctl.ok(&["get", "e/a", "--rev=2"]).await;
        assert_eq!(lines(&old), ["e/a", "1"], "e/a at revision 2");
        let page = ctl.ok(&["get", "--prefix", "e/", "--limit=2"]).await;
        assert_eq!(lines(&page), ["e/a", "10", "e/b", "2"]);
        let by_mod = ctl.ok(&["get", "--prefix", "e/", "--sort-by=MODIFY", "--order=DESCEND"]).await;
        assert_eq!(lines(&by_mod), ["e/a", "10", "e/c", "3", "e/b", "2"]);
        let values = ctl.ok(&["get", "--prefix", "e/", "--print-value-only"]).await;
        assert_eq!(lines(&values), ["10", "2", "3"]);
        let fields = ctl.ok(&["get", "--prefix", "e/", "--limit=1", "-w", "fields"]).await;
        for expected in ["\"Count\" : 3", "\"More\" : true", "\"Key\" : \"e/a\"", "\"ModRevision\" : 5"] {
            assert!(fields.contains(expected), "{expected} in: {fields}");
        }

        // Each member alone, followers included, serves a write and a read.
        for index in 0..cluster.len() {
            let key = format!("e/member/{index}");
            let url = cluster.client_url(index);
            let put = ctl.run_on(&url, &["put", &key, "x"], None).await;
            assert!(put.success && put.stdout == "OK\n", "put through member {index}: {put:?}");
            let get = ctl.run_on(&url, &["get", &key, "--print-value-only"], None).await;
            assert_eq!(get.stdout, "x\n", "get through member {index}: {get:?}");
        }
        // Revisions 6, 7, 8 went to those puts; delete them again (revision 9).
        assert_eq!(ctl.ok(&["del", "--prefix", "e/member/"]).await, "3\n");

        let success =
            "value(\"e/a\") = \"10\"\nmod(\"e/b\") = \"3\"\n\nput e/t yes\nget e/a\n\nput e/t no\n\n";
        let run = ctl.run(&["txn", "-i"], Some(success)).await;
        assert!(run.success, "txn: {run:?}");
        assert_eq!(txn_lines(&run.stdout), ["SUCCESS", "", "OK", "", "e/a", "10"], "txn success branch");
        let failure = "value(\"e/a\") = \"nope\"\n\nput e/t yes\n\nput e/t no\n\n";
        let run = ctl.run(&["txn", "-i"], Some(failure)).await;
        assert!(run.success, "txn: {run:?}");
        assert_eq!(txn_lines(&run.stdout), ["FAILURE", "", "OK"], "txn failure branch");
        assert_eq!(ctl.ok(&["get", "e/t", "--print-value-only"]).await, "no\n");
        let by_version = "ver(\"e/t\") = \"2\"\ncreate(\"e/t\") = \"10\"\n\nput e/v ok\n\n\n";
        let run = ctl.run(&["txn", "-i"], Some(by_version)).await;
        assert_eq!(txn_lines(&run.stdout), ["SUCCESS", "", "OK"], "version and create compares: {run:?}");

        assert_eq!(ctl.ok(&["compaction", "5"]).await, "compacted revision 5\n");
        let compacted = ctl.run(&["get", "e/a", "--rev=3"], None).await;
        assert!(!compacted.success, "read below the compaction: {compacted:?}");
        assert!(
            compacted.stderr.contains("etcdserver: mvcc: required revision has been compacted"),
            "stderr: {}",
            compacted.stderr
        );
        let future = ctl.run(&["get", "e/a", "--rev=1000"], None).await;
        assert!(!future.success);
        assert!(
            future.stderr.contains("etcdserver: mvcc: required revision is a future revision"),
            "stderr: {}",
            future.stderr
        );

        assert_eq!(ctl.ok(&["del", "--prefix", "e/"]).await, "5\n", "e/a e/b e/c e/t e/v");
        assert_eq!(ctl.ok(&["get", "--prefix", "e/"]).await, "");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_list_and_endpoint_status() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let ctl = Etcdctl::new(&program, &cluster);

        // Simple format: ID, status, name, peer URLs, client URLs, is learner.
        let listed = ctl.ok(&["member", "list"]).await;
        let mut rows: Vec<Vec<&str>> = listed.lines().map(|line| line.split(", ").collect()).collect();
        rows.sort_by_key(|row| row.get(2).copied());
        assert_eq!(rows.len(), 3, "{listed}");
        let mut ids = Vec::new();
        for (index, name) in ["hz-a", "sh-a", "sz-a"].iter().enumerate() {
            let row = &rows[index];
            assert_eq!(row.len(), 6, "{listed}");
            assert_eq!(row[1], "started", "{listed}");
            assert_eq!(row[2], *name);
            let member = (0..cluster.len()).find(|i| cluster.placement(*i).name == *name).unwrap();
            assert_eq!(row[3], cluster.peer_url(member), "{name}'s peer URL");
            assert_eq!(row[4], cluster.client_url(member), "{name}'s client URL");
            assert_eq!(row[5], "false", "{name} is a voter");
            let id = u64::from_str_radix(row[0], 16).unwrap_or_else(|_| panic!("hex id in {listed}"));
            assert_ne!(id, 0);
            ids.push(id);
        }
        let json = ctl.ok(&["member", "list", "-w", "json"]).await;
        for name in ["hz-a", "sh-a", "sz-a"] {
            assert!(json.contains(&format!("\"name\":\"{name}\"")), "{name} in {json}");
        }
        for id in &ids {
            assert!(json.contains(&format!("\"ID\":{id}")), "id {id} in {json}");
        }

        // `endpoint status` dials each endpoint on its own, and etcdctl 3.4 then sends
        // the endpoint as written, scheme included, as the HTTP/2 :authority. Check the
        // plain host:port form here; the http:// form is a known gap, see
        // `etcdctl_endpoint_status_with_http_urls`.
        let host_ports: Vec<String> =
            cluster.client_urls().iter().map(|url| url.trim_start_matches("http://").to_string()).collect();
        let plain = ctl.run_on(&host_ports.join(","), &["endpoint", "status", "-w", "json"], None).await;
        assert!(plain.success, "endpoint status with host:port endpoints: {plain:?}");
        let status = plain.stdout;
        let versions = json_field_values(&status, "version");
        assert_eq!(versions.len(), 3, "one status per endpoint: {status}");
        for version in &versions {
            let version = version.trim_matches('"');
            let core: Vec<u64> =
                version.split(['-', '+']).next().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
            assert!(core.as_slice() >= [3, 5, 13].as_slice(), "version {version} is below 3.5.13");
        }
        let leaders = json_field_values(&status, "leader");
        assert_eq!(leaders.len(), 3, "{status}");
        assert!(leaders.iter().all(|leader| leader == &leaders[0]), "one leader: {leaders:?}");
        let leader: u64 = leaders[0].parse().expect("numeric leader id");
        assert!(ids.contains(&leader), "leader {leader} is a member: {ids:?}");
        for member_id in json_field_values(&status, "member_id") {
            assert!(ids.contains(&member_id.parse().unwrap()), "{member_id} is a member");
        }
        let health = ctl.run(&["endpoint", "health"], None).await;
        assert!(health.success, "endpoint health: {health:?}");
        assert_eq!(
            health.stdout.matches("is healthy").count() + health.stderr.matches("is healthy").count(),
            3
        );
    })
    .await;
}

/// etcdctl 3.4 sends `http://host:port` as the HTTP/2 `:authority` when it dials
/// one endpoint on its own (endpoint status, hashkv). etcd's Go server accepts
/// it; the h2 crate under tonic rejects the malformed authority with RST_STREAM
/// before any fivefold code runs. Kept as an ignored test so the gap stays visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: h2 rejects the malformed :authority etcdctl 3.4 sends for http:// endpoints"]
async fn etcdctl_endpoint_status_with_http_urls() {
    let Some(program) = testkit::tool("etcdctl") else { return };
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let ctl = Etcdctl::new(&program, &cluster);
        let with_scheme = ctl.run(&["endpoint", "status", "-w", "json"], None).await;
        assert!(with_scheme.success, "endpoint status with http:// endpoints: {with_scheme:?}");
    })
    .await;
}
