//! Routes: which requests go to which service, how to find their user id, and
//! the zone kind that decides the unit. Published to the store as JSON, one key
//! per route, and written by `fivefold gateway routes apply routes.toml`.

use std::collections::BTreeSet;

use client::etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use topology::UnitKind;

use crate::GatewayError;

/// Prefix of the route records.
pub const ROUTES_PREFIX: &str = "/fivefold/gateway/routes/";
/// Most routes a gateway takes.
pub const ROUTES_MAX: usize = 1_000;

/// The routes `fivefold up` publishes, for the sample account service:
/// `/whoami` (user id in the `x-uid` header), `/accounts/{uid}/...`, a GZone
/// route `/config/...` and a CZone route `/rates/...`.
pub const DEFAULT_ROUTES_TOML: &str = r#"[[routes]]
name = "accounts"
path_prefix = "/accounts"
service = "account"
zone = "rzone"
uid = { path_segment = 1 }

[[routes]]
name = "whoami"
path_prefix = "/whoami"
service = "account"
zone = "rzone"
uid = { header = "x-uid" }

[[routes]]
name = "config"
path_prefix = "/config"
service = "account"
zone = "gzone"

[[routes]]
name = "rates"
path_prefix = "/rates"
service = "account"
zone = "czone"
"#;

/// Where a request carries its user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum UidSource {
    /// A request header, e.g. `x-uid`.
    Header(String),
    /// A cookie, e.g. `uid`.
    Cookie(String),
    /// The n-th segment of the path, 0-based (`/accounts/{uid}` is segment 1).
    PathSegment(usize),
    /// A query parameter, e.g. `uid`.
    Query(String),
}

impl std::fmt::Display for UidSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UidSource::Header(name) => write!(f, "header {name:?}"),
            UidSource::Cookie(name) => write!(f, "cookie {name:?}"),
            UidSource::PathSegment(n) => write!(f, "path segment {n}"),
            UidSource::Query(name) => write!(f, "query parameter {name:?}"),
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// Requests whose path starts with this (the longest match wins).
    pub path_prefix: String,
    /// The registry service that serves them.
    pub service: String,
    /// rzone: by user id; gzone: the global unit; czone: the gateway's city copy.
    pub zone: UnitKind,
    /// Required for rzone routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<UidSource>,
}

impl Route {
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |why: String| Err(GatewayError::InvalidRoutes(format!("route {:?}: {why}", self.name)));
        if let Err(e) = topology::validate_name("route", &self.name) {
            return bad(e.to_string());
        }
        if let Err(e) = topology::validate_name("service", &self.service) {
            return bad(e.to_string());
        }
        if !self.path_prefix.starts_with('/') {
            return bad(format!("path_prefix {:?} must start with '/'", self.path_prefix));
        }
        match (&self.zone, &self.uid) {
            (UnitKind::Rzone, None) => bad("an rzone route needs `uid` (where the user id is)".into()),
            (UnitKind::Rzone, Some(UidSource::Header(n) | UidSource::Cookie(n) | UidSource::Query(n)))
                if n.is_empty() =>
            {
                bad("the uid source needs a name".into())
            }
            _ => Ok(()),
        }
    }
}

/// `routes.toml`: `[[routes]]` tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    pub routes: Vec<Route>,
}

impl RoutesFile {
    pub fn from_toml(text: &str) -> Result<RoutesFile, GatewayError> {
        let file: RoutesFile =
            toml::from_str(text).map_err(|e| GatewayError::InvalidRoutes(e.to_string()))?;
        file.validate()?;
        Ok(file)
    }

    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.routes.len() > ROUTES_MAX {
            return Err(GatewayError::InvalidRoutes(format!(
                "{} routes, more than {ROUTES_MAX}",
                self.routes.len()
            )));
        }
        let mut names = BTreeSet::new();
        let mut prefixes = BTreeSet::new();
        for route in &self.routes {
            route.validate()?;
            if !names.insert(&route.name) {
                return Err(GatewayError::InvalidRoutes(format!("route {:?} is listed twice", route.name)));
            }
            if !prefixes.insert(&route.path_prefix) {
                return Err(GatewayError::InvalidRoutes(format!(
                    "two routes have path_prefix {:?}",
                    route.path_prefix
                )));
            }
        }
        Ok(())
    }
}

/// Replaces the published routes with `file`'s in one Txn (routes not in the
/// file are deleted); fails with nothing changed if the routes changed meanwhile.
pub async fn publish_routes(client: &mut Client, file: &RoutesFile) -> Result<i64, GatewayError> {
    file.validate()?;
    let existing = client.get(ROUTES_PREFIX, Some(GetOptions::new().with_prefix())).await?;
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    let names: BTreeSet<String> = file.routes.iter().map(|r| format!("{ROUTES_PREFIX}{}", r.name)).collect();
    for kv in existing.kvs() {
        compares.push(Compare::mod_revision(kv.key().to_vec(), CompareOp::Equal, kv.mod_revision()));
        if !names.contains(&*String::from_utf8_lossy(kv.key())) {
            ops.push(TxnOp::delete(kv.key().to_vec(), None));
        }
    }
    for route in &file.routes {
        let key = format!("{ROUTES_PREFIX}{}", route.name);
        if !existing.kvs().iter().any(|kv| kv.key() == key.as_bytes()) {
            compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
        }
        ops.push(TxnOp::put(key.as_str(), serde_json::to_vec(route).expect("a route serializes"), None));
    }
    let response = client.txn(Txn::new().when(compares).and_then(ops)).await?;
    if !response.succeeded() {
        return Err(GatewayError::InvalidRoutes(
            "the routes changed while publishing (another operator?); nothing was changed, run it again"
                .into(),
        ));
    }
    Ok(response.header().map_or(0, |h| h.revision()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = DEFAULT_ROUTES_TOML;

    #[test]
    fn a_routes_file_parses_and_validates() {
        let file = RoutesFile::from_toml(ROUTES).unwrap();
        let names: Vec<&str> = file.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["accounts", "whoami", "config", "rates"]);
        assert_eq!(file.routes[0].uid, Some(UidSource::PathSegment(1)));
        assert_eq!(file.routes[1].uid, Some(UidSource::Header("x-uid".into())));
        assert_eq!(file.routes[2].zone, UnitKind::Gzone);
        assert_eq!(file.routes[3].zone, UnitKind::Czone);
    }

    #[test]
    fn bad_routes_say_what_to_fix() {
        for (text, expected) in [
            (ROUTES.replace("uid = { path_segment = 1 }\n", ""), "needs `uid`"),
            (ROUTES.replace("\"/accounts\"", "\"accounts\""), "must start with '/'"),
            (ROUTES.replace("\"/whoami\"", "\"/accounts\""), "two routes have path_prefix"),
            (ROUTES.replace("name = \"whoami\"", "name = \"accounts\""), "listed twice"),
            (ROUTES.replace("zone = \"czone\"", "zone = \"moon\""), "unknown variant"),
            (ROUTES.replace("path_segment = 1", "cookie = \"\""), "needs a name"),
        ] {
            assert_ne!(text, ROUTES, "the mutation for {expected:?} applies");
            let error = RoutesFile::from_toml(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} should contain {expected:?}");
        }
    }
}
