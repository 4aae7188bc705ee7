//! `fivefold up` and `fivefold chaos` as a person uses them: the five-member
//! deployment starts quickly and resumes from its data dir; `chaos` in another
//! "terminal" cuts the leader's city off through `up`'s control port, and both
//! terminals report RTO in seconds and RPO 0. As root, `up --wan` does the same
//! in one network namespace per data center and removes them on exit.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin, bounded};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Issue 2's bar for `up`: ready in under 5 s.
const READY_MAX: Duration = Duration::from_secs(5);
/// The RTO bar with the default timeouts.
const RTO_MAX_SECONDS: f64 = 5.0;

/// A running `fivefold up` and every line it printed so far.
struct Up {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    ready_seconds: f64,
}

/// Starts `fivefold up` and waits for its "is up" line.
async fn up(dir: &std::path::Path, base_port: u16, wan: bool) -> Up {
    let mut command = Command::new(bin());
    command.current_dir(dir).args(["up", "--base-port", &base_port.to_string()]);
    if wan {
        command.arg("--wan");
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let lines = Arc::new(Mutex::new(Vec::new()));
    while let Some(line) = reader.next_line().await.unwrap() {
        lines.lock().unwrap().push(line.clone());
        if let Some(rest) = line.strip_prefix("fivefold is up: 5 members in 3 cities, ready in ") {
            let ready_seconds: f64 = rest.split(' ').next().unwrap().parse().unwrap();
            let limit = READY_MAX + if wan { Duration::from_secs(10) } else { Duration::from_secs(2) };
            assert!(started.elapsed() < limit, "up took {:?}", started.elapsed());
            let collected = lines.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = reader.next_line().await {
                    collected.lock().unwrap().push(line);
                }
            });
            return Up { child, lines, ready_seconds };
        }
    }
    panic!("fivefold up exited without reporting readiness: {:?}", lines.lock().unwrap());
}

impl Up {
    fn printed(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Everything printed, once it contains `needle` (bounded).
    async fn printed_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let printed = self.printed();
            if printed.contains(needle) {
                return printed;
            }
            assert!(Instant::now() < deadline, "up never printed {needle:?}:\n{printed}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let pid = self.child.id().expect("up is running");
        let _ = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status();
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("up stops")
            .unwrap();
        assert!(status.success(), "up exits cleanly on Ctrl-C: {status}");
    }
}

/// A plain HTTP/1.1 GET on loopback with one extra header; the whole response.
async fn http_get(port: u16, path: &str, header: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("the gateway listens");
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{header}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// `fivefold chaos ARGS --base-port PORT`: (success, stdout, stderr).
async fn chaos(base_port: u16, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(bin())
        .arg("chaos")
        .args(args)
        .args(["--base-port", &base_port.to_string()])
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// A base port whose deployment ports (base + 10 i and base + 10 i + 1 for
/// five members, the control port base + 50 and the gateways base + 60..=62)
/// are all free right now.
fn free_base_port() -> u16 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let seed = (std::process::id() as u64).wrapping_add(call * 4_517);
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_mul(7919) + attempt * 131) % 9_000) as u16;
        let free = (0..5u16)
            .flat_map(|i| [base + 10 * i, base + 10 * i + 1])
            .chain([base + 50, base + 60, base + 61, base + 62])
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free block of ports for fivefold up");
}

/// Runs `chaos drill CITY`, checks RTO and RPO in its output and in `up`'s, and
/// returns the RTO.
async fn drill(up: &Up, base_port: u16, city: &str) -> f64 {
    let (ok, out, err) = chaos(base_port, &["drill", city]).await;
    assert!(ok, "drill failed: {out}\n{err}");
    let rto: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("RTO "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no RTO line in {out}"));
    assert!(rto < RTO_MAX_SECONDS, "RTO {rto} s:\n{out}");
    let rpo = out.lines().find(|l| l.starts_with("RPO ")).unwrap_or_else(|| panic!("no RPO line in {out}"));
    assert!(rpo.starts_with("RPO 0: all "), "{rpo}");
    let acked: usize = rpo["RPO 0: all ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(acked > 0, "the probe had acknowledged writes: {rpo}");
    println!("{out}");
    // `up`'s own terminal shows the same figures.
    let printed = up.printed_with(&format!("chaos: {rpo}")).await;
    assert!(printed.contains(&format!("chaos: RTO {rto:.2} s")), "up printed no RTO:\n{printed}");
    rto
}

/// One deployment at a time: each measures RTO, which a second five-member
/// deployment on the same two cores would distort.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_fast_resumes_and_survives_a_city_drill() {
    let _alone = ONE_AT_A_TIME.lock().await;
    bounded(TEST_LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let base_port = free_base_port();
        let up_first = up(dir.path(), base_port, false).await;
        assert!(up_first.ready_seconds < READY_MAX.as_secs_f64(), "ready in {} s", up_first.ready_seconds);

        let (ok, out, err) = chaos(base_port, &["status"]).await;
        assert!(ok, "status: {err}");
        assert_eq!(out.lines().filter(|l| l.contains(" leader ")).count(), 1, "one leader:\n{out}");
        assert!(out.contains("cut: none"), "{out}");

        // The unit layer: a request by user id through the hangzhou gateway
        // reaches the unit that owns the uid.
        let printed = up_first.printed_with("a gateway per city").await;
        assert!(printed.contains("Units: the default topology (published now"), "{printed}");
        let body = http_get(base_port + 60, "/whoami", "x-uid: 7").await;
        assert!(body.contains("\"unit\":\"rz-hz-a\"") && body.contains("\"dc\":\"hz-a\""), "{body}");

        drill(&up_first, base_port, "hangzhou").await;

        // Bad input: each a clear error, nothing applied.
        let (ok, _, err) = chaos(base_port, &["cut", "mars"]).await;
        assert!(!ok && err.contains("unknown city \"mars\""), "{err}");
        let (ok, out, err) = chaos(base_port, &["cut", "shenzhen"]).await;
        assert!(ok, "cut shenzhen: {out}{err}");
        assert!(out.contains("RTO "), "{out}");
        let (ok, _, err) = chaos(base_port, &["cut", "shanghai"]).await;
        assert!(!ok && err.contains("shenzhen is cut off already"), "{err}");
        let (_, out, _) = chaos(base_port, &["status"]).await;
        assert!(out.contains("cut: shenzhen"), "{out}");
        let (ok, out, err) = chaos(base_port, &["heal"]).await;
        assert!(ok && out.contains("RPO 0: all "), "{out}{err}");
        let (ok, out, _) = chaos(base_port, &["heal"]).await;
        assert!(ok && out.contains("nothing was cut"), "{out}");

        let mut client =
            etcd_client::Client::connect([format!("127.0.0.1:{base_port}")], None).await.unwrap();
        client.put("kept/across-restarts", "yes", None).await.expect("put");
        let probe_keys =
            client.get("fivefold/up-probe/", Some(etcd_client::GetOptions::new().with_prefix())).await;
        assert_eq!(probe_keys.unwrap().count(), 0, "the probe cleans up after each audit");
        up_first.stop().await;

        // A second `up` resumes the same cluster from the data dir.
        let up_second = up(dir.path(), base_port, false).await;
        let mut client =
            etcd_client::Client::connect([format!("127.0.0.1:{base_port}")], None).await.unwrap();
        let kept = client.get("kept/across-restarts", None).await.expect("get");
        assert_eq!(kept.count(), 1, "a write survives a restart of the deployment");
        up_second.stop().await;
        let (ok, _, err) = chaos(base_port, &["status"]).await;
        assert!(!ok && err.contains("no `fivefold up` answers"), "{err}");
    })
    .await;
}

/// Root only: `up --wan` builds a namespace per dc; a drill there reports RTO
/// under 5 s and RPO 0; Ctrl-C removes every namespace it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_wan_runs_in_namespaces_and_cleans_up() {
    if let Err(reason) = testkit::wan::supported() {
        if std::env::var("FIVEFOLD_REQUIRE_ALL").is_ok_and(|v| v == "1") {
            panic!("up --wan needs network namespaces (FIVEFOLD_REQUIRE_ALL=1): {reason}");
        }
        eprintln!("skipped: {reason} (set FIVEFOLD_REQUIRE_ALL=1 to fail instead)");
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    bounded(TEST_LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let base_port = free_base_port();
        let up = up(dir.path(), base_port, true).await;
        let printed = up.printed_with("Ctrl-C stops every member").await;
        assert!(printed.contains("in network namespaces"), "{printed}");
        let prefix = printed
            .lines()
            .find_map(|l| l.split("(prefix ").nth(1))
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("no namespace prefix in:\n{printed}"))
            .to_string();
        let namespaces = || {
            let out = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(&prefix)).count()
        };
        assert_eq!(namespaces(), 6, "five dcs and the router");
        let rto = drill(&up, base_port, "hangzhou").await;
        println!("up --wan in namespaces: cut hangzhou RTO {rto:.2} s");
        up.stop().await;
        assert_eq!(namespaces(), 0, "up removed its namespaces on exit");
    })
    .await;
}
