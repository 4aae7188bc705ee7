//! Client: how fivefold's platform components use the store.
//!
//! Every platform component (router, registry, gateway, ...) reaches the store
//! only through the etcd v3 API, so it runs against etcd as well. This crate
//! owns the two things they all need:
//!
//! - [`connect`]: an `etcd-client` connection with fivefold's deadlines.
//! - [`Mirror`]: a local copy of every key under a prefix, kept current by the
//!   controller pattern — list at revision R, watch from R + 1, and list again
//!   when the watch reports compaction or breaks — with a stream of changes for
//!   subscribers and a way to wait until a given revision is mirrored.
//!
//! **Architecture Invariant:** knows nothing of fivefold's store internals and of
//! the meaning of the keys it mirrors.

mod mirror;

pub use etcd_client;
pub use mirror::{Change, Entry, Mirror, MirrorError, Snapshot};

use std::time::Duration;

/// Deadline of every request made on a [`connect`]ed client (watches excepted:
/// their stream lives as long as it is read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the store at `endpoints` (`host:port` or `http://host:port`).
pub async fn connect(endpoints: &[String]) -> Result<etcd_client::Client, etcd_client::Error> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    etcd_client::Client::connect(endpoints, Some(options)).await
}
