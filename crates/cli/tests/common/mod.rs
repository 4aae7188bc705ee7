//! Helpers shared by the integration tests: starting a cluster of the built binary,
//! bounding a test in time, polling a condition, and matching etcd errors exactly.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, GetResponse, KeyValue};
use testkit::{Cluster, ClusterOptions};

/// How often [`poll_until`] retries.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The binary under test (`FIVEFOLD_TEST_BIN` may name another, see testkit).
pub fn bin() -> PathBuf {
    testkit::binary_under_test(env!("CARGO_BIN_EXE_fivefold"))
}

/// Starts a cluster of the binary under test, or fails the test with the members' logs.
pub async fn start(options: ClusterOptions) -> Cluster {
    match Cluster::start(&bin(), options).await {
        Ok(cluster) => cluster,
        Err(error) => panic!("cluster did not start: {error:#}"),
    }
}

/// Runs `future`, failing the test if it takes longer than `limit`.
pub async fn bounded<F: Future>(limit: Duration, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Calls `check` every 50 ms until it returns `Some`, at most for `limit`; then fails
/// the test with `what` and the last value `check` described via `Err`.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("{what}: not reached within {limit:?}; last: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Asserts that `result` is the gRPC error `code` with exactly `message`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: &str,
    what: &str,
) {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => assert_eq!(
            (status.code(), status.message()),
            (code, message),
            "{what}: wrong gRPC status (full status: {status:?})"
        ),
        other => panic!("{what}: expected gRPC {code:?} {message:?}, got {other:?}"),
    }
}

/// Same as [`assert_status`] for a raw tonic result.
#[track_caller]
pub fn assert_tonic_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    message: &str,
    what: &str,
) {
    match result {
        Err(status) => assert_eq!(
            (status.code(), status.message()),
            (code, message),
            "{what}: wrong gRPC status (full status: {status:?})"
        ),
        Ok(value) => panic!("{what}: expected gRPC {code:?} {message:?}, got Ok({value:?})"),
    }
}

/// Keys of a range answer, as strings.
pub fn keys(response: &GetResponse) -> Vec<String> {
    response.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
}

/// Key and value pairs of a range answer, as strings.
pub fn pairs(response: &GetResponse) -> Vec<(String, String)> {
    response.kvs().iter().map(|kv| (text(kv.key()), text(kv.value()))).collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `(create_revision, mod_revision, version)` of a key-value.
pub fn revisions(kv: &KeyValue) -> (i64, i64, i64) {
    (kv.create_revision(), kv.mod_revision(), kv.version())
}

/// The revision in a range answer's header.
pub fn header_revision(response: &GetResponse) -> i64 {
    response.header().expect("range answer has a header").revision()
}

/// The store revision member `client` reports for a linearizable read.
pub async fn current_revision(client: &mut Client) -> i64 {
    let response = client.get("fivefold-test/probe", None).await.expect("linearizable probe read");
    header_revision(&response)
}

/// A serializable (local) read of every key under `prefix` on one member.
pub async fn local_prefix(client: &mut Client, prefix: &str) -> Result<GetResponse, etcd_client::Error> {
    client.get(prefix, Some(GetOptions::new().with_prefix().with_serializable())).await
}

/// Asserts that member `index` of `cluster` still answers Status and serves a put and
/// a linearizable get of a fresh key.
pub async fn assert_member_healthy(cluster: &Cluster, index: usize, key: &str) {
    let mut client = cluster.client(index).await;
    let status = client.status().await;
    assert!(status.is_ok(), "Status on member {index} after {key}: {status:?}");
    let put = client.put(key, "healthy", None).await;
    assert!(put.is_ok(), "put on member {index} after {key}: {put:?}");
    let got = client.get(key, None).await.expect("get after put");
    assert_eq!(pairs(&got), [(key.to_string(), "healthy".to_string())], "member {index} after {key}");
}

/// The next response of a watch stream, within `limit`. Fails the test on a timeout,
/// an error or the end of the stream, naming `what`.
pub async fn next_watch_response<S>(stream: &mut S, limit: Duration, what: &str) -> etcd_client::WatchResponse
where
    S: futures::Stream<Item = Result<etcd_client::WatchResponse, etcd_client::Error>> + Unpin,
{
    use futures::StreamExt;
    match tokio::time::timeout(limit, stream.next()).await {
        Ok(Some(Ok(response))) => response,
        Ok(Some(Err(error))) => panic!("{what}: watch stream failed: {error:?}"),
        Ok(None) => panic!("{what}: watch stream ended"),
        Err(_) => panic!("{what}: no watch response within {limit:?}"),
    }
}

/// The revision in a watch response's header.
pub fn watch_revision(response: &etcd_client::WatchResponse) -> i64 {
    response.header().expect("watch response has a header").revision()
}

/// The store revision member `client` has applied: the header of a serializable
/// (local) read, which does not wait for the leader.
pub async fn applied_revision(client: &mut Client) -> Result<i64, String> {
    let options = GetOptions::new().with_serializable().with_keys_only();
    let response = client.get("fivefold-test/probe", Some(options)).await.map_err(|e| e.to_string())?;
    Ok(header_revision(&response))
}

/// Waits, at most `limit`, until every member in `indexes` has applied the revision
/// that a linearizable read on `indexes[0]` names, and returns that revision. Call it
/// once writes have stopped.
///
/// A write a client gave up on may still be in the log and commit after the read
/// (the outcome of an abandoned request is unknown, in etcd too), so each attempt
/// reads the latest revision afresh instead of waiting for one named up front.
pub async fn wait_same_revision(cluster: &Cluster, indexes: &[usize], limit: Duration) -> i64 {
    let mut clients = Vec::new();
    for &index in indexes {
        clients.push((index, cluster.client(index).await));
    }
    poll_until(limit, "every member applies the latest revision", || {
        let mut clients = clients.clone();
        async move {
            let response = clients[0]
                .1
                .get("fivefold-test/probe", None)
                .await
                .map_err(|e| format!("linearizable read: {e}"))?;
            let target = header_revision(&response);
            let mut behind = Vec::new();
            for (index, client) in &mut clients {
                match applied_revision(client).await {
                    Ok(revision) if revision == target => {}
                    Ok(revision) => behind.push(format!("member {index} at {revision}")),
                    Err(error) => behind.push(format!("member {index}: {error}")),
                }
            }
            if behind.is_empty() {
                Ok(target)
            } else {
                Err(format!("latest revision {target}; {}", behind.join(", ")))
            }
        }
    })
    .await
}

/// Every key and value under `prefix` in member `client`'s local (serializable)
/// view, read in pages so that large key spaces stay under message limits.
pub async fn local_pairs_under(
    client: &mut Client,
    prefix: &str,
) -> Result<std::collections::BTreeMap<String, String>, etcd_client::Error> {
    const PAGE: i64 = 1000;
    let end = prefix_end(prefix.as_bytes());
    let mut out = std::collections::BTreeMap::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE).with_serializable();
        if revision != 0 {
            options = options.with_revision(revision);
        }
        let response = client.get(from.clone(), Some(options)).await?;
        revision = header_revision(&response);
        for kv in response.kvs() {
            out.insert(text(kv.key()), text(kv.value()));
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `host:port` of a `http://host:port` URL: the endpoint form etcdctl 3.4 needs
/// against fivefold (it sends an endpoint with a scheme as the HTTP/2 :authority).
pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// What one etcdctl run printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `etcdctl` (API v3) with `--endpoints` set to `endpoints` (host:port, comma
/// separated) and `args`, bounded by 60 s (a command timeout of 20 s is passed).
pub async fn run_etcdctl(program: &std::path::Path, endpoints: &str, args: &[&str]) -> CtlOutput {
    const RUN_LIMIT: Duration = Duration::from_secs(60);
    let mut command = tokio::process::Command::new(program);
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=5s", "--command-timeout=20s"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("etcdctl starts");
    let output = match tokio::time::timeout(RUN_LIMIT, child.wait_with_output()).await {
        Ok(output) => output.expect("etcdctl runs"),
        Err(_) => panic!("etcdctl {args:?} did not finish within {RUN_LIMIT:?}"),
    };
    CtlOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every value of `"field":VALUE` in a JSON text (numbers as written, strings with
/// their quotes).
pub fn json_field_values(json: &str, field: &str) -> Vec<String> {
    let needle = format!("\"{field}\":");
    json.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &json[at + needle.len()..];
            let end = if let Some(stripped) = rest.strip_prefix('"') {
                stripped.find('"').map_or(rest.len(), |quote| quote + 2)
            } else {
                rest.find([',', '}', ']']).unwrap_or(rest.len())
            };
            rest[..end].to_string()
        })
        .collect()
}

/// One HTTP/1.1 GET of `path` on a member's client URL: status, content type, body.
pub async fn http_get(client_url: &str, path: &str) -> (u16, String, String) {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("{client_url}{path}").parse().expect("a URL");
    let response = http.get(uri).await.unwrap_or_else(|e| panic!("GET {path} on {client_url}: {e}"));
    assert_eq!(response.version(), http::Version::HTTP_11, "plain HTTP/1.1, not gRPC");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("the body").to_bytes();
    (status, content_type, String::from_utf8_lossy(&body).to_string())
}

/// The samples of a Prometheus text exposition, by series (name and labels).
pub fn metric_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line:?}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("a number in {line:?}")))
        })
        .collect()
}
