//! Test tooling for fivefold's integration tests.
//!
//! Owns how a test gets real `fivefold store` processes to talk to:
//!
//! - [`Cluster`] (module `cluster`): starts a cluster of members on loopback, each
//!   with its own temporary data dir and log file, waits until every member answers
//!   `Maintenance.Status` with a known leader, and injects the faults a test needs:
//!   crash ([`Cluster::kill`], SIGKILL), clean stop ([`Cluster::stop`], SIGTERM),
//!   [`Cluster::restart`] and [`Cluster::wipe`]. Dropping it kills every member.
//!   A member can also join later, as with etcd's `member add`:
//!   [`Cluster::add_joining_member`] then [`Cluster::start_joining`].
//! - [`tool`] (module `tools`): finds external programs (`etcdctl`) on PATH, skipping
//!   a test politely when one is missing unless `FIVEFOLD_REQUIRE_ALL=1`.
//! - [`linearizability`]: a checker of key-value histories (put, get, delete,
//!   compare-and-set; unknown outcomes allowed), partitioned by key.
//! - [`wan`]: a WAN on one machine (root only): a network namespace per data center,
//!   user-space delays between cities, a member in each, and faults (kill, pause,
//!   partition a dc, cut a city, heal).
//! - [`free_ports`] (module `ports`): loopback ports outside the kernel's ephemeral
//!   range, never handed out twice in one test process.
//! - module `member` (internal): what both launchers share about one member process:
//!   its child, name and log file, the signals a test sends it (kill, pause, resume,
//!   stop), log tails, and the bounded wait until members answer `Maintenance.Status`
//!   with a leader.
//!
//! **Architecture Invariant:** testkit knows nothing of fivefold's internals. It
//! reaches members only through their command line, their log files and the etcd v3
//! API (via `etcd-client`), like any other client, and depends on no fivefold crate.
//!
//! **Architecture Invariant:** a member never outlives its test. [`Cluster`]'s `Drop`
//! kills and reaps every member, and where util-linux's `setpriv` exists each member
//! also runs with a parent-death signal, so a test process that dies without
//! unwinding takes its members with it.

mod cluster;
pub mod linearizability;
mod member;
mod ports;
mod spawner;
mod tools;
pub mod wan;

pub use cluster::{placement, Cluster, ClusterOptions, Placement};
pub use ports::free_ports;
pub use tools::{binary_under_test, tool};
