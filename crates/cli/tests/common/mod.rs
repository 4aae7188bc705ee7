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
