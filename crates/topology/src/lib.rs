//! Topology: the names fivefold gives to places.
//!
//! Owns the vocabulary of failure domains — a **city** (a region that can be lost
//! whole) and a **data center** (a failure domain inside a city) — the labels a
//! store member carries, the default five-member, three-city placement that
//! `fivefold up` starts, and stable identifiers derived from names.
//!
//! The [`units`] module adds the unit topology (`topology.toml`, stored as JSON at
//! `/fivefold/topology`): cities and their dcs, the shard rule (`uid % modulus`),
//! and the RZone, GZone and CZone units with their home and standby dcs, validated
//! as a whole; [`RoutingTable`] is its checked form with O(1) lookups (shard → unit,
//! dc → city, a city's czone and homed units) for the gateway and failover.
//!
//! Pure types and validation: no IO, no async, no dependency on any other fivefold
//! crate. Everything above may depend on it.

use serde::{Deserialize, Serialize};

pub mod units;

pub use units::{
    CitySpec, RoutingTable, ShardRange, ShardRule, UnitKind, UnitSpec, UnitTopology, UnitTopologyError,
    DEFAULT_SHARD_MODULUS, DEFAULT_TOPOLOGY_TOML, MISSING_RANGES_SHOWN, SHARDS_MAX, TOPOLOGY_KEY, UNITS_MAX,
};

/// Where a member lives: its city and its data center inside that city.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    pub city: String,
    pub dc: String,
}

/// One member of the default local deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// The member name, also its data center name (`hz-a`).
    pub name: &'static str,
    pub city: &'static str,
}

/// The default deployment: five voters, 2 in hangzhou, 2 in shanghai, 1 in shenzhen.
///
/// A Raft majority is 3, so every committed entry is held in at least two cities.
pub const DEFAULT_MEMBERS: [MemberSpec; 5] = [
    MemberSpec { name: "hz-a", city: "hangzhou" },
    MemberSpec { name: "hz-b", city: "hangzhou" },
    MemberSpec { name: "sh-a", city: "shanghai" },
    MemberSpec { name: "sh-b", city: "shanghai" },
    MemberSpec { name: "sz-a", city: "shenzhen" },
];

/// Longest accepted city, dc or member name, in bytes.
pub const NAME_LEN_MAX: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyError {
    #[error("{what} name is empty")]
    EmptyName { what: &'static str },
    #[error("{what} name {name:?} is longer than {NAME_LEN_MAX} bytes")]
    NameTooLong { what: &'static str, name: String },
    #[error(
        "{what} name {name:?} has a character outside [a-z0-9-_.]; use lower-case letters, digits, '-', '_' or '.'"
    )]
    BadCharacter { what: &'static str, name: String },
}

/// Checks a city, dc or member name: non-empty, short, DNS-label-like characters.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), TopologyError> {
    if name.is_empty() {
        return Err(TopologyError::EmptyName { what });
    }
    if name.len() > NAME_LEN_MAX {
        return Err(TopologyError::NameTooLong { what, name: name.to_string() });
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if !name.chars().all(ok) {
        return Err(TopologyError::BadCharacter { what, name: name.to_string() });
    }
    Ok(())
}

impl Placement {
    pub fn new(city: &str, dc: &str) -> Result<Placement, TopologyError> {
        validate_name("city", city)?;
        validate_name("dc", dc)?;
        Ok(Placement { city: city.to_string(), dc: dc.to_string() })
    }
}

/// A 64-bit FNV-1a hash. Stable across builds and platforms, unlike std's hasher,
/// so identifiers derived from names survive upgrades.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in parts {
        for byte in part.iter() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
        // A separator so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// The member id of a member: derived from the cluster token, its name and its peer
/// URLs, as etcd derives ids, so every member computes the same id for every other.
/// Never zero (zero means "no member" on the wire).
pub fn member_id(cluster_token: &str, name: &str, peer_urls: &[String]) -> u64 {
    let mut parts: Vec<&[u8]> = vec![cluster_token.as_bytes(), name.as_bytes()];
    let mut urls: Vec<&String> = peer_urls.iter().collect();
    urls.sort();
    parts.extend(urls.iter().map(|u| u.as_bytes()));
    stable_hash(&parts).max(1)
}

/// The cluster id: derived from the token and the sorted initial member ids.
pub fn cluster_id(cluster_token: &str, member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
    let mut parts: Vec<&[u8]> = vec![cluster_token.as_bytes()];
    parts.extend(bytes.iter().map(|b| b.as_slice()));
    stable_hash(&parts).max(1)
}

/// Counts voters per city and reports whether any single city holds a majority —
/// a placement in which losing that city could lose acknowledged writes.
pub fn city_holding_majority<'a>(cities: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let cities: Vec<&str> = cities.into_iter().collect();
    let total = cities.len();
    cities.iter().copied().find(|c| cities.iter().filter(|x| *x == c).count() * 2 > total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_placement_has_no_majority_city() {
        assert_eq!(city_holding_majority(DEFAULT_MEMBERS.iter().map(|m| m.city)), None);
        assert_eq!(city_holding_majority(["a", "a", "b"]), Some("a"));
        assert_eq!(city_holding_majority(["a", "b"]), None);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let urls = vec!["http://127.0.0.1:2380".to_string()];
        let a = member_id("t", "hz-a", &urls);
        assert_eq!(a, member_id("t", "hz-a", &urls));
        assert_ne!(a, member_id("t", "hz-b", &urls));
        assert_ne!(a, member_id("u", "hz-a", &urls));
        assert_eq!(cluster_id("t", &[3, 1, 2]), cluster_id("t", &[1, 2, 3]));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("dc", "hz-a").is_ok());
        assert_eq!(validate_name("dc", ""), Err(TopologyError::EmptyName { what: "dc" }));
        assert!(matches!(validate_name("city", "Hang Zhou"), Err(TopologyError::BadCharacter { .. })));
        assert!(matches!(validate_name("city", &"x".repeat(64)), Err(TopologyError::NameTooLong { .. })));
    }
}
