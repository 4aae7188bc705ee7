//! The service registry with real processes: a store cluster, `fivefold
//! registry serve` (the HTTP/JSON API) and `fivefold registry register`
//! instances, watched over plain HTTP/1.1 like an app in any language would.
//! - A graceful deregistration (`DELETE`, and a `register` process stopped with
//!   SIGINT) reaches a watching subscriber within 1 s.
//! - A kill -9'd instance disappears for the subscriber within its TTL (3 s)
//!   plus a margin.
//! - 1,000 watch streams on one registry server all receive one change (push
//!   latency p50/p99 printed).
//! - Bad input: each a clear 4xx JSON error, nothing written.
//! - The HTTP API round trip (register, heartbeat, list, update, metrics, h2c)
//!   and the Rust SDK (Registration + Catalog) directly.

mod common;

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, bounded, start};
use registry::{Catalog, Delta, Health, Instance, Registration};
use serde_json::{json, Value};
use testkit::{Cluster, ClusterOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Bound on one expected watch line when nothing slow is expected.
const LINE_LIMIT: Duration = Duration::from_secs(10);
/// The bound on a graceful deregistration reaching subscribers.
const DEREGISTRATION_LIMIT: Duration = Duration::from_secs(1);
const SUBSCRIBERS: usize = 1000;

/// The timing tests run one at a time, so one's load does not skew another's
/// figures (tests of one file share the machine's cores).
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn endpoints(cluster: &Cluster) -> String {
    cluster.client_urls().iter().map(|u| common::host_port(u)).collect::<Vec<_>>().join(",")
}

fn instance(id: &str, port: u16) -> Instance {
    Instance {
        service: "account".into(),
        id: id.into(),
        address: format!("127.0.0.1:{port}"),
        unit: "rz-hz-a".into(),
        dc: "hz-a".into(),
        city: "hangzhou".into(),
        version: "1.0.0".into(),
        weight: 100,
        metadata: Default::default(),
        health: Health::Up,
    }
}

/// A `fivefold registry serve` process.
struct RegistryServer {
    address: String,
    _stdout: BufReader<ChildStdout>,
    _child: Child,
}

/// Starts `fivefold ARGS` and returns it with the first line it printed.
async fn spawn_printing(args: &[&str], what: &str) -> (Child, BufReader<ChildStdout>, String) {
    let mut child = Command::new(bin())
        .args(args)
        .env("FIVEFOLD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
        .await
        .unwrap_or_else(|_| panic!("{what} prints within 20 s"))
        .unwrap();
    (child, stdout, line)
}

async fn start_registry(endpoints: &str) -> RegistryServer {
    let args = ["registry", "serve", "--listen", "127.0.0.1:0", "--endpoints", endpoints];
    let (child, stdout, line) = spawn_printing(&args, "fivefold registry serve").await;
    let address = line
        .trim()
        .strip_prefix("registry listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    RegistryServer { address, _stdout: stdout, _child: child }
}

/// A `fivefold registry register` process.
struct Registered {
    child: Child,
    stdout: BufReader<ChildStdout>,
    key: String,
}

async fn start_register(endpoints: &str, id: &str, ttl: u32) -> Registered {
    let ttl = ttl.to_string();
    let args = [
        "registry",
        "register",
        "--service",
        "account",
        "--id",
        id,
        "--address",
        "127.0.0.1:9000",
        "--unit",
        "rz-hz-a",
        "--dc",
        "hz-a",
        "--city",
        "hangzhou",
        "--version",
        "2.0.0",
        "--ttl",
        &ttl,
        "--endpoints",
        endpoints,
    ];
    let (child, stdout, line) = spawn_printing(&args, "fivefold registry register").await;
    // "registered <key> (lease <id>)"
    let rest = line.trim().strip_prefix("registered ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let (key, lease) = rest.split_once(" (lease ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert!(lease.trim_end_matches(')').parse::<i64>().is_ok(), "{line}");
    assert_eq!(key, format!("/fivefold/registry/account/{id}"));
    Registered { child, stdout, key: key.to_string() }
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The `error` of a JSON error answer.
    #[track_caller]
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(self.head.to_ascii_lowercase().contains("content-type: application/json"), "{self:?}");
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error field: {self:?}")).to_string()
    }
}

/// `method path` with `body` on a fresh connection (closed after the answer).
async fn call(address: &str, method: &str, path: &str, body: &str) -> Reply {
    let mut stream = TcpStream::connect(address).await.expect("connect to the registry");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(LINE_LIMIT, stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {LINE_LIMIT:?}"))
        .unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    Reply { status, head: head.to_string(), body: body.to_string() }
}

/// A watch stream read as an app would: HTTP/1.1 chunks of newline-delimited JSON.
struct Watch {
    reader: BufReader<TcpStream>,
    partial: Vec<u8>,
    lines: VecDeque<String>,
}

impl Watch {
    async fn open(address: &str, path: &str) -> Watch {
        let mut stream = TcpStream::connect(address).await.expect("connect to the registry");
        stream.set_nodelay(true).unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(LINE_LIMIT, reader.read_line(&mut line))
                .await
                .expect("watch answer head in time")
                .unwrap();
            assert!(read > 0, "connection closed in the head: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let lower = head.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{head}");
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        assert!(lower.contains("content-type: application/x-ndjson"), "{head}");
        Watch { reader, partial: Vec::new(), lines: VecDeque::new() }
    }

    /// The next line, however long it takes.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
            }
            let mut size = String::new();
            self.reader.read_line(&mut size).await.unwrap();
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
            assert_ne!(size, 0, "the watch stream ended");
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await.unwrap();
            assert_eq!(&chunk[size..], b"\r\n", "chunk framing");
            self.partial.extend_from_slice(&chunk[..size]);
            while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=end).collect();
                self.lines.push_back(String::from_utf8(line[..end].to_vec()).unwrap());
            }
        }
    }

    async fn next_within(&mut self, limit: Duration, what: &str) -> Value {
        match tokio::time::timeout(limit, self.next()).await {
            Ok(line) => line,
            Err(_) => panic!("{what}: no watch line within {limit:?}"),
        }
    }
}

#[track_caller]
fn assert_line(line: &Value, kind: &str, id: &str) {
    assert_eq!(line["type"], kind, "{line}");
    match kind {
        "upsert" => assert_eq!(line["instance"]["id"], id, "{line}"),
        "remove" => assert_eq!((&line["service"], &line["id"]), (&json!("account"), &json!(id)), "{line}"),
        _ => {}
    }
    assert!(line["revision"].as_i64().is_some_and(|r| r > 0), "{line}");
}

fn register_body(id: &str, ttl: i64) -> String {
    json!({ "instance": instance(id, 8080), "ttl_seconds": ttl }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deregistration_reaches_a_subscriber_within_a_second() {
    let _timed = TIMED.lock().await;
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let endpoints = endpoints(&cluster);
        let server = start_registry(&endpoints).await;
        let mut watch = Watch::open(&server.address, "/v1/services/account/watch").await;
        let snapshot = watch.next_within(LINE_LIMIT, "snapshot").await;
        assert_eq!(snapshot["type"], "snapshot");
        assert_eq!(snapshot["instances"], json!([]));

        // Through the HTTP API: register, then DELETE.
        let reply = call(&server.address, "POST", "/v1/instances", &register_body("http-1", 5)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_line(&watch.next_within(LINE_LIMIT, "upsert of http-1").await, "upsert", "http-1");
        let started = Instant::now();
        let reply = call(&server.address, "DELETE", "/v1/instances/account/http-1", "").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["deregistered"], "/fivefold/registry/account/http-1");
        let line = watch.next_within(DEREGISTRATION_LIMIT, "removal after DELETE").await;
        let by_delete = started.elapsed();
        assert_line(&line, "remove", "http-1");

        // A `fivefold registry register` process stopped with SIGINT.
        let mut registered = start_register(&endpoints, "cli-1", 5).await;
        let line = watch.next_within(LINE_LIMIT, "upsert of cli-1").await;
        assert_line(&line, "upsert", "cli-1");
        assert_eq!(line["instance"]["version"], "2.0.0");
        let pid = nix::unistd::Pid::from_raw(registered.child.id().unwrap() as i32);
        let started = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let line = watch.next_within(DEREGISTRATION_LIMIT, "removal after SIGINT").await;
        let by_sigint = started.elapsed();
        assert_line(&line, "remove", "cli-1");
        let status = tokio::time::timeout(LINE_LIMIT, registered.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "register exits cleanly after SIGINT: {status}");
        let mut rest = String::new();
        registered.stdout.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest.trim(), format!("deregistered {}", registered.key));

        println!(
            "graceful deregistration seen by the subscriber: DELETE {:.1} ms, SIGINT {:.1} ms (limit {:?})",
            by_delete.as_secs_f64() * 1e3,
            by_sigint.as_secs_f64() * 1e3,
            DEREGISTRATION_LIMIT
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_disappears_within_its_ttl() {
    const TTL: u32 = 3;
    // Lease deadlines are checked every 250 ms and the revoke is a Raft write.
    const MARGIN: Duration = Duration::from_millis(1500);
    let _timed = TIMED.lock().await;
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let endpoints = endpoints(&cluster);
        let server = start_registry(&endpoints).await;
        let mut watch = Watch::open(&server.address, "/v1/watch").await;
        assert_eq!(watch.next_within(LINE_LIMIT, "snapshot").await["type"], "snapshot");
        let mut registered = start_register(&endpoints, "doomed-1", TTL).await;
        assert_line(&watch.next_within(LINE_LIMIT, "upsert").await, "upsert", "doomed-1");
        // Outlive a few keep-alives first: the record must stay while they flow.
        let quiet = tokio::time::timeout(Duration::from_secs(u64::from(TTL) + 1), watch.next()).await;
        assert!(quiet.is_err(), "the record changed while its keep-alives flowed: {quiet:?}");

        registered.child.start_kill().unwrap();
        let killed = Instant::now();
        registered.child.wait().await.unwrap();
        let limit = Duration::from_secs(u64::from(TTL)) + MARGIN;
        let line = watch.next_within(limit, "removal of the killed instance").await;
        let gone = killed.elapsed();
        assert_line(&line, "remove", "doomed-1");
        println!(
            "kill -9'd instance gone for the subscriber after {:.2} s (TTL {TTL} s, limit {:.1} s)",
            gone.as_secs_f64(),
            limit.as_secs_f64()
        );
        let reply = call(&server.address, "GET", "/v1/services/account", "").await;
        assert_eq!(reply.json()["instances"], json!([]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_all_receive_a_change() {
    /// Streams being opened at once.
    const OPENING: usize = 100;
    let _timed = TIMED.lock().await;
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let endpoints = endpoints(&cluster);
        let server = start_registry(&endpoints).await;
        let address = Arc::new(server.address.clone());
        let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
        let mut subscribers = tokio::task::JoinSet::new();
        let opened = Instant::now();
        for _ in 0..SUBSCRIBERS {
            let (address, opening, ready) = (address.clone(), opening.clone(), ready_tx.clone());
            subscribers.spawn(async move {
                let permit = opening.acquire_owned().await.unwrap();
                let mut watch = Watch::open(&address, "/v1/services/account/watch").await;
                let snapshot = watch.next().await;
                assert_eq!(snapshot["type"], "snapshot");
                drop(permit);
                ready.send(()).await.unwrap();
                let line = watch.next().await;
                (Instant::now(), line)
            });
        }
        drop(ready_tx);
        for _ in 0..SUBSCRIBERS {
            ready_rx.recv().await.expect("every subscriber reads its snapshot");
        }
        let opened = opened.elapsed();
        let metrics = call(&server.address, "GET", "/metrics", "").await;
        assert!(metrics.body.contains(&format!("fivefold_registry_subscribers {SUBSCRIBERS}\n")), "{}", metrics.body);

        let reply = call(&server.address, "POST", "/v1/instances", &register_body("fan-1", 5)).await;
        let acknowledged = Instant::now();
        assert_eq!(reply.status, 200, "{reply:?}");
        let mut latencies = Vec::with_capacity(SUBSCRIBERS);
        let collect = async {
            while let Some(joined) = subscribers.join_next().await {
                let (at, line) = joined.expect("a subscriber task");
                assert_line(&line, "upsert", "fan-1");
                latencies.push(at.saturating_duration_since(acknowledged));
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), collect).await.is_err() {
            panic!("only {} of {SUBSCRIBERS} subscribers received the change within 30 s", latencies.len());
        }
        assert_eq!(latencies.len(), SUBSCRIBERS, "every subscriber received the change");
        latencies.sort();
        let at = |p: usize| latencies[(SUBSCRIBERS * p).div_ceil(100) - 1];
        println!(
            "{SUBSCRIBERS} subscribers (opened in {:.2} s) received one change: push latency after the write's \
             acknowledgement p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            opened.as_secs_f64(),
            at(50).as_secs_f64() * 1e3,
            at(99).as_secs_f64() * 1e3,
            latencies[SUBSCRIBERS - 1].as_secs_f64() * 1e3
        );
        let metrics = call(&server.address, "GET", "/metrics", "").await;
        let pushes = format!("fivefold_registry_pushes_total{{type=\"upsert\"}} {SUBSCRIBERS}\n");
        assert!(metrics.body.contains(&pushes), "{}", metrics.body);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_writes_nothing() {
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let endpoints = endpoints(&cluster);
        let server = start_registry(&endpoints).await;
        let mut client = cluster.client(0).await;
        let before = common::current_revision(&mut client).await;
        let leases_before = client.leases().await.unwrap().leases().len();
        let address = server.address.as_str();

        let error = call(address, "POST", "/v1/instances", "{\"instance\": ").await.error(400);
        assert!(error.contains("not a registration") && error.contains("EOF"), "{error}");
        let error = call(address, "POST", "/v1/instances", "not json").await.error(400);
        assert!(error.contains("not a registration"), "{error}");
        let mut bad = json!({ "instance": instance("bad-1", 8080) });
        bad["instance"]["address"] = json!("no-port");
        let error = call(address, "POST", "/v1/instances", &bad.to_string()).await.error(400);
        assert!(error.contains("host:port"), "{error}");
        bad["instance"]["address"] = json!("127.0.0.1:8080");
        bad["instance"]["service"] = json!("Upper/Case");
        let error = call(address, "POST", "/v1/instances", &bad.to_string()).await.error(400);
        assert!(error.contains("service name"), "{error}");
        let missing = json!({ "instance": { "service": "account", "id": "x" } }).to_string();
        let error = call(address, "POST", "/v1/instances", &missing).await.error(400);
        assert!(error.contains("missing field"), "{error}");
        let error = call(address, "POST", "/v1/instances", &register_body("bad-2", 1)).await.error(400);
        assert!(error.contains("below the minimum"), "{error}");
        let typo = json!({ "instance": instance("bad-3", 8080), "ttl": 5 }).to_string();
        let error = call(address, "POST", "/v1/instances", &typo).await.error(400);
        assert!(error.contains("unknown field `ttl`"), "{error}");
        let huge = " ".repeat(registry::http::REQUEST_BODY_BYTES_MAX + 1);
        let error = call(address, "POST", "/v1/instances", &huge).await.error(413);
        assert!(error.contains("larger than"), "{error}");

        let error = call(address, "PUT", "/v1/leases/123456789/heartbeat", "").await.error(404);
        assert!(error.contains("lease 123456789 is gone") && error.contains("register"), "{error}");
        let error = call(address, "PUT", "/v1/leases/abc/heartbeat", "").await.error(400);
        assert!(error.contains("decimal"), "{error}");
        let update = json!({ "instance": instance("bad-4", 8080), "lease": "123456789" }).to_string();
        let error = call(address, "POST", "/v1/instances", &update).await.error(404);
        assert!(error.contains("lease 123456789 is gone"), "{error}");
        let error = call(address, "DELETE", "/v1/instances/account/nobody", "").await.error(404);
        assert!(error.contains("no instance \"nobody\" of service \"account\""), "{error}");
        let error = call(address, "GET", "/v1/services/Bad!", "").await.error(400);
        assert!(error.contains("service name"), "{error}");
        let error = call(address, "GET", "/v1/nothing", "").await.error(404);
        assert!(error.contains("the routes are"), "{error}");
        let reply = call(address, "GET", "/v1/instances", "");
        let reply = reply.await;
        let error = reply.error(405);
        assert!(error.contains("takes POST"), "{error}");
        assert!(reply.head.to_ascii_lowercase().contains("allow: post"), "{reply:?}");
        let error = call(address, "GET", "/v1/services/account?min_revision=x", "").await.error(400);
        assert!(error.contains("min_revision"), "{error}");

        // Nothing was written: no revision, no lease, no record.
        assert_eq!(common::current_revision(&mut client).await, before, "bad requests wrote nothing");
        assert_eq!(client.leases().await.unwrap().leases().len(), leases_before, "no lease left behind");
        let records = common::local_prefix(&mut client, registry::REGISTRY_PREFIX).await.unwrap();
        assert!(records.kvs().is_empty(), "{:?}", common::keys(&records));
        let metrics = call(address, "GET", "/metrics", "").await.body;
        let refused =
            "fivefold_registry_http_requests_total{method=\"POST\",route=\"/v1/instances\",status=\"400\"} 7";
        assert!(metrics.contains(refused), "{metrics}");
        assert!(metrics.contains("fivefold_registry_registrations_total 0\n"), "{metrics}");
        // The server is still serving.
        assert_eq!(call(address, "GET", "/v1/services/account", "").await.status, 200);
    })
    .await;
}

/// HTTP/2 without TLS: the server answers the client preface with its SETTINGS.
async fn assert_speaks_h2c(address: &str) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame_header = [0u8; 9];
    tokio::time::timeout(LINE_LIMIT, stream.read_exact(&mut frame_header)).await.unwrap().unwrap();
    assert_eq!(frame_header[3], 4, "the first frame is SETTINGS: {frame_header:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_registers_heartbeats_lists_and_updates() {
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let endpoints = endpoints(&cluster);
        let server = start_registry(&endpoints).await;
        let address = server.address.as_str();
        let mut all = Watch::open(address, "/v1/watch").await;
        assert_eq!(all.next_within(LINE_LIMIT, "snapshot").await["type"], "snapshot");

        let reply = call(address, "POST", "/v1/instances", &register_body("api-1", 3)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let answer = reply.json();
        assert_eq!(answer["key"], "/fivefold/registry/account/api-1");
        assert_eq!(answer["ttl_seconds"], 3);
        let lease = answer["lease"].as_str().expect("the lease is a decimal string").to_string();
        let revision = answer["revision"].as_i64().unwrap();
        assert_line(&all.next_within(LINE_LIMIT, "upsert").await, "upsert", "api-1");

        // Read-your-write: the listing waits until the catalog has the write.
        let listing = call(address, "GET", &format!("/v1/services/account?min_revision={revision}"), "").await;
        let listing = listing.json();
        assert!(listing["revision"].as_i64().unwrap() >= revision, "{listing}");
        assert_eq!(listing["instances"][0]["id"], "api-1");
        assert_eq!(listing["instances"][0]["address"], "127.0.0.1:8080");
        let other = call(address, "GET", "/v1/services/other", "").await.json();
        assert_eq!(other["instances"], json!([]));

        // Heartbeats keep it past its TTL.
        for _ in 0..4 {
            let beat = call(address, "PUT", &format!("/v1/leases/{lease}/heartbeat"), "").await;
            assert_eq!(beat.status, 200, "{beat:?}");
            assert_eq!(beat.json()["lease"], lease.as_str());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let listing = call(address, "GET", "/v1/services/account", "").await.json();
        assert_eq!(listing["instances"].as_array().unwrap().len(), 1, "heartbeats kept it: {listing}");

        // An update under the same lease: subscribers see the health change.
        let mut down = instance("api-1", 8080);
        down.health = Health::Down;
        let update = json!({ "instance": down, "lease": lease }).to_string();
        let reply = call(address, "POST", "/v1/instances", &update).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["lease"], lease.as_str());
        let line = all.next_within(LINE_LIMIT, "update").await;
        assert_line(&line, "upsert", "api-1");
        assert_eq!(line["instance"]["health"], "down");

        // Without heartbeats it expires, and the heartbeat says to register again.
        let line = all.next_within(Duration::from_secs(6), "expiry").await;
        assert_line(&line, "remove", "api-1");
        let error = call(address, "PUT", &format!("/v1/leases/{lease}/heartbeat"), "").await.error(404);
        assert!(error.contains("register"), "{error}");

        let metrics = call(address, "GET", "/metrics", "").await.body;
        for line in [
            "fivefold_registry_subscribers 1\n",
            "fivefold_registry_registrations_total 2\n",
            "fivefold_registry_heartbeats_total 4\n",
            "fivefold_registry_http_requests_total{method=\"PUT\",route=\"/v1/leases/{lease}/heartbeat\",status=\"404\"} 1",
        ] {
            assert!(metrics.contains(line), "{line:?} in\n{metrics}");
        }
        assert_speaks_h2c(address).await;
    })
    .await;
}

async fn next_delta(subscription: &mut registry::Subscription, what: &str) -> Delta {
    match tokio::time::timeout(LINE_LIMIT, subscription.next()).await {
        Ok(delta) => delta.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: no delta within {LINE_LIMIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_registers_two_instances_and_subscribers_see_updates() {
    let cluster = start(ClusterOptions::members(3)).await;
    bounded(TEST_LIMIT, async {
        let endpoints: Vec<String> = endpoints(&cluster).split(',').map(str::to_string).collect();
        let client = client::connect(&endpoints).await.unwrap();
        let catalog = Catalog::start(client.clone()).await.unwrap();
        let mut subscription = catalog.subscribe(Some("account"));
        assert!(matches!(next_delta(&mut subscription, "snapshot").await, Delta::Snapshot { instances, .. } if instances.is_empty()));

        let mut first = Registration::register(client.clone(), instance("sdk-1", 8081), 5).await.unwrap();
        let second = Registration::register(client.clone(), instance("sdk-2", 8082), 5).await.unwrap();
        assert_ne!(first.lease(), second.lease(), "one lease each");
        let mut upserted = Vec::new();
        for _ in 0..2 {
            match next_delta(&mut subscription, "upserts").await {
                Delta::Upsert { instance, .. } => upserted.push(instance.id),
                other => panic!("expected an upsert, got {other:?}"),
            }
        }
        upserted.sort();
        assert_eq!(upserted, ["sdk-1", "sdk-2"]);
        let (_, instances) = catalog.snapshot(Some("account"));
        let mut ids: Vec<_> = instances.iter().map(|i| i.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["sdk-1", "sdk-2"], "the catalog snapshot has both");
        assert_eq!(catalog.instances("account").len(), 2);
        assert_eq!(catalog.services().keys().collect::<Vec<_>>(), ["account"]);

        // A later subscriber starts from a snapshot with both.
        let mut late = catalog.subscribe(None);
        match next_delta(&mut late, "late subscriber").await {
            Delta::Snapshot { instances, .. } => assert_eq!(instances.len(), 2),
            other => panic!("expected a snapshot, got {other:?}"),
        }

        let mut draining = first.instance().clone();
        draining.health = Health::Down;
        draining.weight = 0;
        first.update(draining.clone()).await.unwrap();
        match next_delta(&mut subscription, "update").await {
            Delta::Upsert { instance, .. } => assert_eq!(instance, draining),
            other => panic!("expected an upsert, got {other:?}"),
        }
        match next_delta(&mut late, "late subscriber").await {
            Delta::Upsert { instance, .. } => assert_eq!(instance.health, Health::Down),
            other => panic!("expected an upsert, got {other:?}"),
        }
        let mut moved = draining.clone();
        moved.id = "sdk-other".into();
        assert!(first.update(moved).await.is_err(), "an update cannot change the id");

        second.deregister().await.unwrap();
        match next_delta(&mut subscription, "removal").await {
            Delta::Remove { service, id, .. } => assert_eq!((service.as_str(), id.as_str()), ("account", "sdk-2")),
            other => panic!("expected a removal, got {other:?}"),
        }
        assert_eq!(catalog.instances("account"), [draining.clone()]);

        // A lease lost behind the SDK's back (revoked here; a long stall would
        // expire it): the next keep-alive notices and registers again.
        let lost = first.lease();
        client.clone().lease_revoke(lost).await.unwrap();
        assert!(matches!(next_delta(&mut subscription, "loss").await, Delta::Remove { id, .. } if id == "sdk-1"));
        match next_delta(&mut subscription, "registered again").await {
            Delta::Upsert { instance, .. } => assert_eq!(instance, draining),
            other => panic!("expected the record again, got {other:?}"),
        }
        // The SDK notes the new lease once its put is answered.
        common::poll_until(LINE_LIMIT, "the SDK holds the new lease", || {
            let lease = first.lease();
            async move { if lease != lost { Ok(()) } else { Err(format!("still lease {lease}")) } }
        })
        .await;
        first.deregister().await.unwrap();
        assert!(matches!(next_delta(&mut subscription, "last removal").await, Delta::Remove { .. }));
    })
    .await;
}
