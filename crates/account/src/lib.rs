//! Account: the sample service every unit runs (used by tests and demos).
//!
//! Owns balances under its unit's prefix, `/units/{unit}/accounts/{uid}`
//! (JSON `{balance, epoch, dc}`), and shows the rules a money-moving service
//! follows on fivefold:
//!
//! - it registers itself in the registry (service `account`) for its unit and dc;
//! - it serves only requests the gateway routed to its unit
//!   (`x-fivefold-unit`), answering 421 otherwise;
//! - every write is one Txn fenced on the unit's routing record
//!   ([`router::Fence`]) and on the balance's `mod_revision` (optimistic
//!   concurrency), so after the unit moves to another dc this instance cannot
//!   write any more (409), and two instances never both apply a deposit on a
//!   stale balance.
//!
//! HTTP: `GET /whoami` (also as the last segment of any path), `GET /accounts/{uid}`, `POST /accounts/{uid}/deposit?amount=N`.
//!
//! **Architecture Invariant:** reaches the store only through the etcd v3 API.

mod service;

pub use service::{serve, AccountConfig, SERVICE};

/// The store key of `uid`'s balance in `unit`.
pub fn balance_key(unit: &str, uid: u64) -> String {
    format!("/units/{unit}/accounts/{uid}")
}

/// A stored balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Balance {
    pub balance: i64,
    /// The unit epoch the last write was made under.
    pub epoch: u64,
}
