//! Gateway: the unit-based (LDC) entry point.
//!
//! Owns the way from an HTTP request to the instance that must serve it:
//! route (longest path prefix) → user id (header, cookie, path segment or query
//! parameter) → shard (`uid % modulus`) → RZone unit → the dc that unit is
//! served from now (its routing record) → a healthy instance of the route's
//! service registered for that unit in that dc. GZone routes go to the global
//! unit, CZone routes to the copy in the gateway's own city. The request is
//! forwarded with `x-fivefold-uid`, `-shard`, `-unit` and `-epoch` headers, so
//! the instance can fence its writes on the epoch it was routed under.
//!
//! Modules: `routes` (route records, published at
//! `/fivefold/gateway/routes/{name}`), `state` (the watched view: topology,
//! routing records, routes, instances; rebuilt on every change, so changes apply
//! without restart), `resolve` (pure: request parts + view → target or a clear
//! error), `proxy` (hyper server and client), `metrics` (Prometheus text per
//! route and unit).
//!
//! **Architecture Invariant:** reads everything from the store through the etcd
//! v3 API (watched mirrors); never writes routing state.
//! **Architecture Invariant:** a request is forwarded only to an instance
//! registered for the unit that owns its shard, in the dc that unit is served
//! from in the view the request was resolved against; otherwise it is refused.

pub mod metrics;
pub mod proxy;
pub mod resolve;
pub mod routes;
pub mod state;

pub use proxy::{serve, serve_per_thread, GatewayConfig};
pub use resolve::{resolve, Refusal, Target};
pub use routes::{publish_routes, Route, RoutesFile, UidSource, DEFAULT_ROUTES_TOML, ROUTES_PREFIX};
pub use state::{View, Watched};

/// What went wrong setting the gateway up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("store request failed")]
    Store(#[from] client::etcd_client::Error),
    #[error(transparent)]
    Mirror(#[from] client::MirrorError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("invalid routes: {0}")]
    InvalidRoutes(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
