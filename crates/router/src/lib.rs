//! Router: the unit-routing state of the LDC architecture, kept in the store.
//!
//! Owns the records that say where each unit is served now and under which
//! epoch — `/fivefold/routing/units/{unit}` — and every change to them:
//!
//! - [`publish`]: writes a validated [`topology::UnitTopology`] to
//!   `/fivefold/topology` and creates the routing record of each new unit at
//!   its home dc, epoch 1, in one Txn (nothing half-applied).
//! - [`failover`]: moves a unit, or every unit served from a city, to its
//!   standby dc (or a named dc), and back home; each move bumps the unit's
//!   epoch in a Txn that compares the record's `mod_revision`, so two
//!   operators racing cannot both win.
//! - [`controller`]: the automatic failover controller (leader-elected by a
//!   lease): when every store member of a city is unreachable for a while,
//!   it fails that city's units over.
//! - [`fence`]: a unit's business writes as a Txn that also compares the
//!   unit's routing record, so an instance still serving an old epoch (in
//!   the old dc) cannot write once the unit has moved.
//!
//! **Architecture Invariant:** talks to the store only through the etcd v3 API
//! (`etcd-client`), so it runs against etcd as well as fivefold.
//! **Architecture Invariant:** an epoch only grows; every move writes the
//! record once, with epoch + 1, conditionally on the record being unchanged.

pub mod controller;
pub mod failover;
pub mod fence;
pub mod publish;
pub mod record;

pub use failover::{failback, failover_city, failover_city_fenced, failover_unit, Move};
pub use fence::{Fence, FencedWrite};
pub use publish::{publish, read_topology, Published};
pub use record::{routing_key, UnitRouting, ROUTING_PREFIX};

/// What went wrong, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    #[error("store request failed")]
    Store(#[from] etcd_client::Error),
    #[error("invalid topology: {0}")]
    Topology(#[from] topology::UnitTopologyError),
    #[error("no topology is published at {key}; publish one with `fivefold topology apply`")]
    NoTopology { key: &'static str },
    #[error("unknown unit {unit:?}; the topology has: {known}")]
    UnknownUnit { unit: String, known: String },
    #[error("unknown city {city:?}; the topology has: {known}")]
    UnknownCity { city: String, known: String },
    #[error("unknown dc {dc:?}; the topology has: {known}")]
    UnknownDc { dc: String, known: String },
    #[error("unit {unit} has no standby dc; name a target with --to")]
    NoStandby { unit: String },
    #[error("unit {unit} has no routing record at {key}; re-apply the topology")]
    NoRecord { unit: String, key: String },
    #[error("the routing record at {key} is not valid JSON: {message}")]
    BadRecord { key: String, message: String },
    #[error(
        "unit {unit} is served from dc {dc} now, which the new topology does not have; \
         fail it over to a dc that stays first"
    )]
    ServedFromRemovedDc { unit: String, dc: String },
    #[error("the routing records changed while this command ran (another operator?); nothing was changed, run it again")]
    Conflict,
}
