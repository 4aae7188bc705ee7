//! Registry: service discovery on the store.
//!
//! Owns the instance record — a leased key
//! `/fivefold/registry/{service}/{instance}` holding JSON (address, unit, dc,
//! city, version, weight, metadata, health) — and both sides of it:
//!
//! - [`Registration`] (the Rust SDK): register under a lease, keep it alive in
//!   the background, deregister (revoke: gone for every subscriber at once). A
//!   process that dies stops its keep-alives, and the store deletes the record
//!   when the lease's TTL runs out.
//! - [`Catalog`]: one watch of the whole registry prefix ([`client::Mirror`]),
//!   parsed into services and instances, fanned out to any number of
//!   subscribers as a snapshot then deltas ([`Subscription`]). The registry
//!   server and the gateway hold one each, so many clients cost one watch.
//! - [`http`]: the registry server's HTTP/JSON API (HTTP/1.1 and h2c) over a
//!   catalog, for apps in any language: register, heartbeat, deregister, list,
//!   and watch streams of newline-delimited JSON (a snapshot, then deltas).
//!
//! **Architecture Invariant:** reaches the store only through the etcd v3 API.
//! **Architecture Invariant:** an instance is visible only while its lease
//! lives; nothing else deletes records on its behalf except a deregistration.

mod catalog;
pub mod http;
mod instance;
mod registration;

pub use catalog::{Catalog, Change, Delta, Subscription};
pub use instance::{instance_key, Health, Instance, REGISTRY_PREFIX};
pub use registration::{Registration, DEFAULT_TTL_SECONDS, TTL_SECONDS_MIN};

/// What went wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("store request failed")]
    Store(#[from] client::etcd_client::Error),
    #[error(transparent)]
    Mirror(#[from] client::MirrorError),
    #[error("invalid instance: {0}")]
    Invalid(String),
    #[error("the record at {key} is not a valid instance: {message}")]
    BadRecord { key: String, message: String },
    #[error("the subscriber fell behind by {0} changes; subscribe again for a fresh snapshot")]
    Lagged(u64),
    #[error("the catalog stopped")]
    Closed,
}
