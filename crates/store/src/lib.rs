//! The store member: etcd's v3 API over the MVCC state machine, replicated with
//! openraft.
//!
//! Owns the gRPC services clients see (`etcdserverpb.KV`, `Maintenance`,
//! `Cluster`) and the one members use among themselves (`fivefoldpb.Peer`),
//! the Raft log (segment files from the `wal` crate, one fdatasync per group
//! of appends), the state machine glue and snapshots, the peer transport, the
//! write path (propose, forwarded from a follower to the leader) and the
//! linearizable read path (ReadIndex).
//!
//! Knows nothing of routing, registry or any platform component: they reach the
//! store through the etcd API like any client. The MVCC semantics live in the
//! `mvcc` crate; this crate must not re-implement them.
//!
//! Modules: `config` (flags, checked), `identity` (member and cluster ids,
//! kept in the data dir), `membership` (Cluster API changes on openraft),
//! `election` (pre-vote, then openraft's election), `leadership`
//! (MoveLeader), `compactor` (automatic compaction), `faults` (test-only
//! fault injection), `types` (Raft type config), `log_store` (the Raft log
//! over `wal`), `log_migrate` (moves a log kept in redb by earlier
//! versions), `state_machine`, `snapshot_data` (snapshot bytes in unnamed
//! files, written only when read), `network` (peer client), `raft_stream` (AppendEntries on a framed TCP
//! stream beside gRPC on the peer port), `peer_service`,
//! `node` (request paths), `proposer` (a leader's writes batched into one
//! entry), `forwarder` (a follower's writes sent to the leader batched),
//! `coalesce` (socket writes gathered per connection), `kv_service`,
//! `watch_hub` + `watch_service`, `lease_service` + `lessor`,
//! `maintenance_service`, `cluster_service`, `placement` (key → Raft group),
//! `grpc_status` (status codes aligned with grpc-go), `server` (assembly and
//! lifecycle).

pub mod cluster_service;
pub mod coalesce;
pub mod compactor;
pub mod config;
pub mod election;
pub mod faults;
pub mod forwarder;
pub mod grpc_status;
pub mod identity;
pub mod kv_service;
pub mod leadership;
pub mod lease_service;
pub mod lessor;
pub mod log_migrate;
pub mod log_store;
pub mod maintenance_service;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod peer_service;
pub mod placement;
pub mod proposer;
pub mod raft_stream;
pub mod server;
pub mod snapshot_data;
pub mod state_machine;
pub mod transfer_gate;
pub mod types;
pub mod watch_hub;
pub mod watch_service;

pub use config::{ClusterState, ConfigError, StoreConfig};
pub use maintenance_service::ETCD_COMPATIBLE_VERSION;
pub use server::{run, ServerError};
