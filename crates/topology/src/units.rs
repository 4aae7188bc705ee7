//! The unit topology (`topology.toml`): which cities and dcs exist, how user ids
//! map to shards, and which unit (logical data center) owns each shard.
//!
//! Two forms:
//!
//! - [`UnitTopology`] is the written form: what `topology.toml` says and what the
//!   store holds as JSON at [`TOPOLOGY_KEY`]. Its fields are public, so it can be
//!   built or edited in code; [`UnitTopology::validate`] checks it, and every
//!   loader ([`UnitTopology::from_toml`], [`UnitTopology::from_json`]) calls it.
//! - [`RoutingTable`] is the checked form: built only from a valid
//!   `UnitTopology`, it owns it (read-only) and precomputes the lookups the
//!   gateway and the failover controller make on every request: shard → unit is
//!   one array index, the name lookups one hash probe each.
//!
//! The rules (DESIGN.md §1): an **RZone** owns shards and is served from a home dc,
//! with a standby dc in another city; the **GZone** (exactly one) holds global data,
//! its optional standby also in another city; a **CZone** is a per-city read copy
//! (at most one per city, its city is its home dc's), its standby optional. Every
//! shard `0..modulus` is owned by exactly one RZone; a user's shard is
//! `uid % modulus`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{validate_name, TopologyError, DEFAULT_MEMBERS};

/// The store key holding the unit topology, as JSON ([`UnitTopology::to_json`]).
pub const TOPOLOGY_KEY: &str = "/fivefold/topology";

/// The shard modulus when `topology.toml` names none: the last two digits of a uid.
pub const DEFAULT_SHARD_MODULUS: u32 = 100;

/// Most shards a topology may have (the largest accepted `shard_rule.modulus`).
/// Bounds the shard → unit table a [`RoutingTable`] keeps.
pub const SHARDS_MAX: u32 = 10_000;

/// Most units a topology may have.
pub const UNITS_MAX: usize = 1_000;

/// How many runs of missing shards a [`UnitTopologyError::MissingShards`] lists.
pub const MISSING_RANGES_SHOWN: usize = 5;

/// The unit topology as written in `topology.toml` and stored at [`TOPOLOGY_KEY`].
///
/// Unknown fields are refused (a misspelt `standby_dc` would otherwise vanish).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitTopology {
    /// How a user id maps to a shard. Optional in TOML; defaults to `uid % 100`.
    #[serde(default)]
    pub shard_rule: ShardRule,
    pub cities: Vec<CitySpec>,
    pub units: Vec<UnitSpec>,
}

/// A city (a failure region) and the dcs in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitySpec {
    pub name: String,
    pub dcs: Vec<String>,
}

/// User id → shard: `uid % modulus`. Shards are `0..modulus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRule {
    /// Between 1 and [`SHARDS_MAX`].
    pub modulus: u32,
}

impl Default for ShardRule {
    fn default() -> ShardRule {
        ShardRule { modulus: DEFAULT_SHARD_MODULUS }
    }
}

/// What a unit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    /// Owns ranges of user shards; standby dc required, in another city.
    Rzone,
    /// Global data written in one place; exactly one per topology.
    Gzone,
    /// A per-city read copy of global data; at most one per city.
    Czone,
}

impl UnitKind {
    /// The name used in `topology.toml`: `rzone`, `gzone` or `czone`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Rzone => "rzone",
            UnitKind::Gzone => "gzone",
            UnitKind::Czone => "czone",
        }
    }
}

impl fmt::Display for UnitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One unit (logical data center).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    pub name: String,
    pub kind: UnitKind,
    /// The shards an RZone owns; empty (and omitted in TOML) for GZone and CZone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRange>,
    /// The dc that serves the unit; for a CZone it also names the unit's city.
    pub home_dc: String,
    /// Where the unit moves on failover. Required for an RZone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_dc: Option<String>,
}

impl UnitSpec {
    /// Whether this unit's shard ranges include `shard`. A linear scan over the
    /// ranges; the gateway uses [`RoutingTable::unit_for_shard`] instead.
    pub fn owns(&self, shard: u32) -> bool {
        self.shards.iter().any(|r| r.contains(shard))
    }
}

/// An inclusive range of shards, `first..=last`. Written as a string: `"0-24"`,
/// or `"7"` for one shard (a bare integer `7` is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardRange {
    pub first: u32,
    pub last: u32,
}

impl ShardRange {
    pub fn new(first: u32, last: u32) -> ShardRange {
        ShardRange { first, last }
    }

    /// The range holding one shard.
    pub fn single(shard: u32) -> ShardRange {
        ShardRange { first: shard, last: shard }
    }

    pub fn contains(&self, shard: u32) -> bool {
        self.first <= shard && shard <= self.last
    }

    /// How many shards the range holds (0 if `first > last`, which
    /// [`UnitTopology::validate`] refuses).
    pub fn len(&self) -> u32 {
        if self.first > self.last {
            0
        } else {
            self.last - self.first + 1
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for ShardRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for ShardRange {
    type Err = UnitTopologyError;

    /// Parses `"first-last"` or `"shard"`: decimal digits, spaces around them allowed.
    /// `first > last` parses; [`UnitTopology::validate`] reports it with the unit's name.
    fn from_str(text: &str) -> Result<ShardRange, UnitTopologyError> {
        let bad = |reason: &'static str| UnitTopologyError::BadShardRange { text: text.to_string(), reason };
        let number = |part: &str| -> Result<u32, UnitTopologyError> {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("a shard number is missing"));
            }
            if !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("a shard number is not a non-negative decimal integer"));
            }
            part.parse().map_err(|_| bad("a shard number does not fit in 32 bits"))
        };
        if text.trim().is_empty() {
            return Err(bad("it is empty"));
        }
        let mut parts = text.split('-');
        let first = number(parts.next().unwrap_or_default())?;
        let last = match parts.next() {
            None => first,
            Some(part) => number(part)?,
        };
        if parts.next().is_some() {
            return Err(bad("it has more than one '-'"));
        }
        Ok(ShardRange { first, last })
    }
}

impl Serialize for ShardRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ShardRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ShardRange, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ShardRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a shard range such as "0-24" or "7""#)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ShardRange, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, shard: u64) -> Result<ShardRange, E> {
                let shard = u32::try_from(shard)
                    .map_err(|_| E::custom(format!("shard {shard} does not fit in 32 bits")))?;
                Ok(ShardRange::single(shard))
            }

            fn visit_i64<E: serde::de::Error>(self, shard: i64) -> Result<ShardRange, E> {
                let shard = u64::try_from(shard)
                    .map_err(|_| E::custom(format!("shard {shard} is negative; shards start at 0")))?;
                self.visit_u64(shard)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Why a unit topology was refused. Every message names what is wrong and says
/// how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnitTopologyError {
    #[error("topology.toml is not valid TOML for a unit topology: {message}")]
    Toml { message: String },
    #[error("the stored unit topology is not valid JSON for a unit topology: {message}")]
    Json { message: String },
    #[error(
        "shard range {text:?} is not valid: {reason}; write \"first-last\" or one shard, e.g. \"0-24\" or \"7\""
    )]
    BadShardRange { text: String, reason: &'static str },
    /// A city, dc or unit name is not a valid name.
    #[error(transparent)]
    Name(#[from] TopologyError),
    #[error("shard_rule.modulus is {modulus}; set it between 1 and {SHARDS_MAX}")]
    BadModulus { modulus: u32 },
    #[error("the topology has {count} units; at most {UNITS_MAX} are allowed")]
    TooManyUnits { count: usize },
    #[error("city {city:?} is listed twice; list each city once")]
    DuplicateCity { city: String },
    #[error("city {city:?} has no dcs; add its dcs to `dcs` or remove the city")]
    CityWithoutDcs { city: String },
    #[error(
        "dc {dc:?} is listed twice (in city {first_city:?} and in city {second_city:?}); a dc belongs to exactly one city, list it once"
    )]
    DuplicateDc { dc: String, first_city: String, second_city: String },
    #[error("unit {unit:?} is listed twice; give every unit a unique name")]
    DuplicateUnit { unit: String },
    #[error("unit {unit:?} has {field} {dc:?}, which no city lists; add it to a city's dcs or fix the name")]
    UnknownDc { unit: String, field: &'static str, dc: String },
    #[error("rzone {unit:?} has no standby_dc; set standby_dc to a dc in a city other than its home city")]
    MissingStandby { unit: String },
    #[error(
        "{kind} {unit:?} has standby_dc {standby_dc:?} in its home city {city:?} (home_dc {home_dc:?}); pick a standby dc in another city so the unit survives losing {city:?}"
    )]
    StandbyInHomeCity { unit: String, kind: UnitKind, home_dc: String, standby_dc: String, city: String },
    #[error(
        "unit {unit:?} has standby_dc equal to its home_dc {dc:?}; pick another dc or remove standby_dc"
    )]
    StandbyIsHome { unit: String, dc: String },
    #[error("rzone {unit:?} owns no shards; give it shard ranges such as shards = [\"0-24\"]")]
    RzoneWithoutShards { unit: String },
    #[error("{kind} {unit:?} lists shards, but only an rzone owns shards; remove its `shards`")]
    ShardsOnNonRzone { unit: String, kind: UnitKind },
    #[error("rzone {unit:?} has shard range \"{first}-{last}\" whose first shard is above its last; write it as \"{last}-{first}\"")]
    ReversedShardRange { unit: String, first: u32, last: u32 },
    #[error(
        "rzone {unit:?} owns shard {shard}, but shards run from 0 to {} (shard_rule.modulus = {modulus}); remove it or raise the modulus",
        .modulus.saturating_sub(1)
    )]
    ShardOutOfRange { unit: String, shard: u32, modulus: u32 },
    #[error(
        "shard {shard} is owned twice, by {first_unit:?} and by {second_unit:?}; every shard belongs to exactly one rzone"
    )]
    OverlappingShards { shard: u32, first_unit: String, second_unit: String },
    #[error("{}", missing_shards_message(.shown, *.count))]
    MissingShards {
        /// The first [`MISSING_RANGES_SHOWN`] runs of unowned shards.
        shown: Vec<ShardRange>,
        /// How many shards no rzone owns, in all.
        count: u32,
    },
    #[error("the topology has no gzone; add exactly one unit with kind = \"gzone\"")]
    NoGzone,
    #[error("the topology has more than one gzone ({first:?} and {second:?}); keep exactly one")]
    TwoGzones { first: String, second: String },
    #[error(
        "city {city:?} has two czones ({first:?} and {second:?}); a city has at most one czone, remove one or move its home_dc to another city"
    )]
    TwoCzonesInCity { city: String, first: String, second: String },
}

/// "shards 30-34, 90 are not owned by any rzone; …" (see [`UnitTopologyError::MissingShards`]).
fn missing_shards_message(shown: &[ShardRange], count: u32) -> String {
    let listed: Vec<String> = shown.iter().map(ShardRange::to_string).collect();
    let listed_count: u32 = shown.iter().map(ShardRange::len).sum();
    let (noun, verb) = if count == 1 { ("shard", "is") } else { ("shards", "are") };
    let more = if listed_count < count { format!(" and more ({count} in all)") } else { String::new() };
    format!("{noun} {}{more} {verb} not owned by any rzone; add them to an rzone's shards", listed.join(", "))
}

impl UnitTopology {
    /// Parses and validates `topology.toml`.
    pub fn from_toml(text: &str) -> Result<UnitTopology, UnitTopologyError> {
        let topology: UnitTopology =
            toml::from_str(text).map_err(|e| UnitTopologyError::Toml { message: e.to_string() })?;
        topology.validate()?;
        Ok(topology)
    }

    /// Writes the topology as TOML, in the layout of [`DEFAULT_TOPOLOGY_TOML`] (without comments).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a UnitTopology always serializes to TOML")
    }

    /// Parses and validates the JSON form stored at [`TOPOLOGY_KEY`].
    pub fn from_json(bytes: &[u8]) -> Result<UnitTopology, UnitTopologyError> {
        let topology: UnitTopology =
            serde_json::from_slice(bytes).map_err(|e| UnitTopologyError::Json { message: e.to_string() })?;
        topology.validate()?;
        Ok(topology)
    }

    /// The JSON form stored at [`TOPOLOGY_KEY`].
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a UnitTopology always serializes to JSON")
    }

    /// Checks every rule of the module docs; the first violation found is returned.
    pub fn validate(&self) -> Result<(), UnitTopologyError> {
        Index::build(self).map(drop)
    }

    /// The topology `fivefold up` runs: the cities and dcs of [`DEFAULT_MEMBERS`],
    /// 100 shards over four rzones (one per dc in hangzhou and shanghai, each with
    /// its standby in the other of the two cities), the gzone in hz-a (standby
    /// sh-a) and one czone per city. Equal to [`DEFAULT_TOPOLOGY_TOML`].
    pub fn default_deployment() -> UnitTopology {
        let mut cities: Vec<CitySpec> = Vec::new();
        for member in &DEFAULT_MEMBERS {
            match cities.iter_mut().find(|c| c.name == member.city) {
                Some(city) => city.dcs.push(member.name.to_string()),
                None => cities
                    .push(CitySpec { name: member.city.to_string(), dcs: vec![member.name.to_string()] }),
            }
        }
        let unit = |name: &str, kind, shards: &[ShardRange], home: &str, standby: Option<&str>| UnitSpec {
            name: name.to_string(),
            kind,
            shards: shards.to_vec(),
            home_dc: home.to_string(),
            standby_dc: standby.map(str::to_string),
        };
        use UnitKind::{Czone, Gzone, Rzone};
        UnitTopology {
            shard_rule: ShardRule::default(),
            cities,
            units: vec![
                unit("rz-hz-a", Rzone, &[ShardRange::new(0, 24)], "hz-a", Some("sh-a")),
                unit("rz-hz-b", Rzone, &[ShardRange::new(25, 49)], "hz-b", Some("sh-b")),
                unit("rz-sh-a", Rzone, &[ShardRange::new(50, 74)], "sh-a", Some("hz-a")),
                unit("rz-sh-b", Rzone, &[ShardRange::new(75, 99)], "sh-b", Some("hz-b")),
                unit("gz", Gzone, &[], "hz-a", Some("sh-a")),
                unit("cz-hangzhou", Czone, &[], "hz-a", None),
                unit("cz-shanghai", Czone, &[], "sh-a", None),
                unit("cz-shenzhen", Czone, &[], "sz-a", None),
            ],
        }
    }
}

/// [`UnitTopology::default_deployment`] as `topology.toml`.
pub const DEFAULT_TOPOLOGY_TOML: &str = r#"# The default fivefold deployment: five dcs in three cities.
# A user's shard is uid % modulus; every shard belongs to exactly one rzone.

[shard_rule]
modulus = 100

[[cities]]
name = "hangzhou"
dcs = ["hz-a", "hz-b"]

[[cities]]
name = "shanghai"
dcs = ["sh-a", "sh-b"]

[[cities]]
name = "shenzhen"
dcs = ["sz-a"]

# RZones: user shards, each served from its home dc, standby in the other city.
[[units]]
name = "rz-hz-a"
kind = "rzone"
shards = ["0-24"]
home_dc = "hz-a"
standby_dc = "sh-a"

[[units]]
name = "rz-hz-b"
kind = "rzone"
shards = ["25-49"]
home_dc = "hz-b"
standby_dc = "sh-b"

[[units]]
name = "rz-sh-a"
kind = "rzone"
shards = ["50-74"]
home_dc = "sh-a"
standby_dc = "hz-a"

[[units]]
name = "rz-sh-b"
kind = "rzone"
shards = ["75-99"]
home_dc = "sh-b"
standby_dc = "hz-b"

# The GZone: global data, written in one place.
[[units]]
name = "gz"
kind = "gzone"
home_dc = "hz-a"
standby_dc = "sh-a"

# CZones: a read copy of global data in every city.
[[units]]
name = "cz-hangzhou"
kind = "czone"
home_dc = "hz-a"

[[units]]
name = "cz-shanghai"
kind = "czone"
home_dc = "sh-a"

[[units]]
name = "cz-shenzhen"
kind = "czone"
home_dc = "sz-a"
"#;

/// Lookups precomputed from a valid topology. Unit and city references are indices
/// into the topology's `units` and `cities`.
#[derive(Debug, Clone)]
struct Index {
    /// Shard → the rzone owning it; `modulus` entries.
    unit_of_shard: Vec<usize>,
    unit_by_name: HashMap<String, usize>,
    city_of_dc: HashMap<String, usize>,
    gzone: usize,
    czone_of_city: HashMap<String, usize>,
    /// City name → units whose home dc is in it, in topology order.
    homed_in_city: HashMap<String, Vec<usize>>,
}

impl Index {
    /// Validates `topology` and builds its lookups: validation and the index are
    /// one pass, so a [`RoutingTable`] can only exist for a valid topology.
    fn build(topology: &UnitTopology) -> Result<Index, UnitTopologyError> {
        let modulus = topology.shard_rule.modulus;
        if modulus == 0 || modulus > SHARDS_MAX {
            return Err(UnitTopologyError::BadModulus { modulus });
        }
        if topology.units.len() > UNITS_MAX {
            return Err(UnitTopologyError::TooManyUnits { count: topology.units.len() });
        }

        // Cities and dcs.
        let mut city_by_name: HashMap<&str, usize> = HashMap::new();
        let mut city_of_dc: HashMap<String, usize> = HashMap::new();
        for (c, city) in topology.cities.iter().enumerate() {
            validate_name("city", &city.name)?;
            if city_by_name.insert(&city.name, c).is_some() {
                return Err(UnitTopologyError::DuplicateCity { city: city.name.clone() });
            }
            if city.dcs.is_empty() {
                return Err(UnitTopologyError::CityWithoutDcs { city: city.name.clone() });
            }
            for dc in &city.dcs {
                validate_name("dc", dc)?;
                if let Some(&first) = city_of_dc.get(dc.as_str()) {
                    return Err(UnitTopologyError::DuplicateDc {
                        dc: dc.clone(),
                        first_city: topology.cities[first].name.clone(),
                        second_city: city.name.clone(),
                    });
                }
                city_of_dc.insert(dc.clone(), c);
            }
        }

        // Units, each on its own.
        let mut unit_by_name: HashMap<String, usize> = HashMap::new();
        let mut homed_in_city: HashMap<String, Vec<usize>> = HashMap::new();
        let mut gzone: Option<usize> = None;
        let mut czone_of_city: HashMap<String, usize> = HashMap::new();
        let mut owned: Vec<(ShardRange, usize)> = Vec::new();
        for (u, unit) in topology.units.iter().enumerate() {
            validate_name("unit", &unit.name)?;
            if unit_by_name.insert(unit.name.clone(), u).is_some() {
                return Err(UnitTopologyError::DuplicateUnit { unit: unit.name.clone() });
            }
            let city_of = |field: &'static str, dc: &str| {
                city_of_dc.get(dc).copied().ok_or_else(|| UnitTopologyError::UnknownDc {
                    unit: unit.name.clone(),
                    field,
                    dc: dc.to_string(),
                })
            };
            let home_city = city_of("home_dc", &unit.home_dc)?;
            let standby_city = match &unit.standby_dc {
                Some(dc) => Some(city_of("standby_dc", dc)?),
                None => None,
            };
            let home_city_name = &topology.cities[home_city].name;
            match (unit.kind, &unit.standby_dc) {
                (UnitKind::Rzone, None) => {
                    return Err(UnitTopologyError::MissingStandby { unit: unit.name.clone() });
                }
                (UnitKind::Rzone | UnitKind::Gzone, Some(standby)) if standby_city == Some(home_city) => {
                    return Err(UnitTopologyError::StandbyInHomeCity {
                        unit: unit.name.clone(),
                        kind: unit.kind,
                        home_dc: unit.home_dc.clone(),
                        standby_dc: standby.clone(),
                        city: home_city_name.clone(),
                    });
                }
                (_, Some(standby)) if *standby == unit.home_dc => {
                    return Err(UnitTopologyError::StandbyIsHome {
                        unit: unit.name.clone(),
                        dc: standby.clone(),
                    });
                }
                _ => {}
            }
            match unit.kind {
                UnitKind::Rzone => {
                    if unit.shards.is_empty() {
                        return Err(UnitTopologyError::RzoneWithoutShards { unit: unit.name.clone() });
                    }
                    for range in &unit.shards {
                        if range.first > range.last {
                            return Err(UnitTopologyError::ReversedShardRange {
                                unit: unit.name.clone(),
                                first: range.first,
                                last: range.last,
                            });
                        }
                        if range.last >= modulus {
                            return Err(UnitTopologyError::ShardOutOfRange {
                                unit: unit.name.clone(),
                                shard: range.first.max(modulus),
                                modulus,
                            });
                        }
                        owned.push((*range, u));
                    }
                }
                UnitKind::Gzone | UnitKind::Czone if !unit.shards.is_empty() => {
                    return Err(UnitTopologyError::ShardsOnNonRzone {
                        unit: unit.name.clone(),
                        kind: unit.kind,
                    });
                }
                UnitKind::Gzone => {
                    if let Some(first) = gzone {
                        return Err(UnitTopologyError::TwoGzones {
                            first: topology.units[first].name.clone(),
                            second: unit.name.clone(),
                        });
                    }
                    gzone = Some(u);
                }
                UnitKind::Czone => {
                    if let Some(&first) = czone_of_city.get(home_city_name.as_str()) {
                        return Err(UnitTopologyError::TwoCzonesInCity {
                            city: home_city_name.clone(),
                            first: topology.units[first].name.clone(),
                            second: unit.name.clone(),
                        });
                    }
                    czone_of_city.insert(home_city_name.clone(), u);
                }
            }
            homed_in_city.entry(home_city_name.clone()).or_default().push(u);
        }
        let gzone = gzone.ok_or(UnitTopologyError::NoGzone)?;

        // Shards: sorted by first shard, every range must start right after the
        // previous one ends. The first range starting at or before the previous
        // end gives the lowest shard owned twice.
        owned.sort_unstable();
        let mut unit_of_shard = vec![usize::MAX; modulus as usize];
        let mut missing: Vec<ShardRange> = Vec::new();
        let mut missing_count = 0u32;
        let mut note_gap = |first: u32, last: u32| {
            missing_count += last - first + 1;
            if missing.len() < MISSING_RANGES_SHOWN {
                missing.push(ShardRange::new(first, last));
            }
        };
        let mut next = 0u32; // the lowest shard no earlier range reaches
        let mut previous: Option<usize> = None;
        for &(range, u) in &owned {
            if range.first < next {
                let first = previous.expect("a shard below `next` was owned by an earlier range");
                return Err(UnitTopologyError::OverlappingShards {
                    shard: range.first,
                    first_unit: topology.units[first].name.clone(),
                    second_unit: topology.units[u].name.clone(),
                });
            }
            if range.first > next {
                note_gap(next, range.first - 1);
            }
            unit_of_shard[range.first as usize..=range.last as usize].fill(u);
            next = range.last + 1;
            previous = Some(u);
        }
        if next < modulus {
            note_gap(next, modulus - 1);
        }
        if missing_count > 0 {
            return Err(UnitTopologyError::MissingShards { shown: missing, count: missing_count });
        }

        Ok(Index { unit_of_shard, unit_by_name, city_of_dc, gzone, czone_of_city, homed_in_city })
    }
}

/// A valid [`UnitTopology`] with the lookups the gateway and the failover
/// controller make, each O(1): shard → unit is an array index, name lookups a
/// hash probe. Built by [`RoutingTable::new`], which validates; the topology
/// inside cannot be changed (build a new table from an edited copy).
#[derive(Debug, Clone)]
pub struct RoutingTable {
    topology: UnitTopology,
    index: Index,
}

impl PartialEq for RoutingTable {
    /// Two tables are equal when their topologies are: the index follows from it.
    fn eq(&self, other: &RoutingTable) -> bool {
        self.topology == other.topology
    }
}

impl Eq for RoutingTable {}

impl TryFrom<UnitTopology> for RoutingTable {
    type Error = UnitTopologyError;

    fn try_from(topology: UnitTopology) -> Result<RoutingTable, UnitTopologyError> {
        RoutingTable::new(topology)
    }
}

impl RoutingTable {
    /// Validates `topology` and precomputes its lookups.
    pub fn new(topology: UnitTopology) -> Result<RoutingTable, UnitTopologyError> {
        let index = Index::build(&topology)?;
        Ok(RoutingTable { topology, index })
    }

    /// The topology this table was built from.
    pub fn topology(&self) -> &UnitTopology {
        &self.topology
    }

    pub fn into_topology(self) -> UnitTopology {
        self.topology
    }

    /// The number of shards (`shard_rule.modulus`).
    pub fn shard_count(&self) -> u32 {
        self.topology.shard_rule.modulus
    }

    /// A user's shard: `uid % modulus`.
    pub fn shard_of(&self, uid: u64) -> u32 {
        let shard = uid % u64::from(self.topology.shard_rule.modulus);
        u32::try_from(shard).expect("a shard is below the modulus, a u32")
    }

    /// The rzone owning `shard`; `None` only when `shard >= modulus`.
    pub fn unit_for_shard(&self, shard: u32) -> Option<&UnitSpec> {
        let u = *self.index.unit_of_shard.get(shard as usize)?;
        Some(&self.topology.units[u])
    }

    /// The rzone serving user `uid`: `unit_for_shard(shard_of(uid))`.
    pub fn unit_for_uid(&self, uid: u64) -> &UnitSpec {
        let u = self.index.unit_of_shard[self.shard_of(uid) as usize];
        &self.topology.units[u]
    }

    /// The unit named `name`, of any kind.
    pub fn unit(&self, name: &str) -> Option<&UnitSpec> {
        self.index.unit_by_name.get(name).map(|&u| &self.topology.units[u])
    }

    /// The one GZone.
    pub fn gzone(&self) -> &UnitSpec {
        &self.topology.units[self.index.gzone]
    }

    /// The CZone of `city`, if it has one.
    pub fn czone_in_city(&self, city: &str) -> Option<&UnitSpec> {
        self.index.czone_of_city.get(city).map(|&u| &self.topology.units[u])
    }

    /// The city `dc` is in; `None` for a dc the topology does not list.
    pub fn city_of_dc(&self, dc: &str) -> Option<&str> {
        self.index.city_of_dc.get(dc).map(|&c| self.topology.cities[c].name.as_str())
    }

    /// The units of every kind whose home dc is in `city`, in topology order (what
    /// moves when the city is lost); none for an unknown city.
    pub fn units_homed_in_city(&self, city: &str) -> impl ExactSizeIterator<Item = &UnitSpec> + '_ {
        let homed: &[usize] = self.index.homed_in_city.get(city).map_or(&[], Vec::as_slice);
        homed.iter().map(|&u| &self.topology.units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RoutingTable {
        RoutingTable::new(UnitTopology::default_deployment()).unwrap()
    }

    /// Edits the default deployment and returns the validation error, checking that
    /// its message mentions every string in `names`.
    fn refused(names: &[&str], edit: impl FnOnce(&mut UnitTopology)) -> UnitTopologyError {
        let mut topology = UnitTopology::default_deployment();
        edit(&mut topology);
        let err = topology.validate().expect_err("the edited topology should be refused");
        let message = err.to_string();
        for name in names {
            assert!(message.contains(name), "{message:?} does not mention {name:?}");
        }
        // The loaders refuse it the same way.
        assert_eq!(UnitTopology::from_json(&topology.to_json()), Err(err));
        assert_eq!(RoutingTable::new(topology.clone()).err().map(|e| e.to_string()), Some(message));
        topology.validate().unwrap_err()
    }

    fn unit_mut<'a>(topology: &'a mut UnitTopology, name: &str) -> &'a mut UnitSpec {
        topology.units.iter_mut().find(|u| u.name == name).unwrap()
    }

    fn rzone(name: &str, shards: &[ShardRange], home: &str, standby: &str) -> UnitSpec {
        UnitSpec {
            name: name.to_string(),
            kind: UnitKind::Rzone,
            shards: shards.to_vec(),
            home_dc: home.to_string(),
            standby_dc: Some(standby.to_string()),
        }
    }

    #[test]
    fn default_toml_is_the_default_deployment() {
        let parsed = UnitTopology::from_toml(DEFAULT_TOPOLOGY_TOML).unwrap();
        assert_eq!(parsed, UnitTopology::default_deployment());
        let cities: Vec<&str> = parsed.cities.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cities, ["hangzhou", "shanghai", "shenzhen"]);
        assert_eq!(parsed.cities[2].dcs, ["sz-a"]);
    }

    #[test]
    fn toml_round_trips() {
        let topology = UnitTopology::default_deployment();
        let text = topology.to_toml();
        assert!(text.contains("[[units]]") && text.contains(r#"shards = ["0-24"]"#), "{text}");
        assert!(!text.contains("shards = []"), "empty shards are omitted: {text}");
        assert_eq!(UnitTopology::from_toml(&text).unwrap(), topology);

        // A non-default modulus, several ranges and single shards survive too.
        let mut custom = topology.clone();
        custom.shard_rule.modulus = 10;
        custom.units.retain(|u| u.kind != UnitKind::Rzone);
        custom.units.push(rzone("rz-1", &[ShardRange::new(0, 3), ShardRange::single(9)], "hz-a", "sh-a"));
        custom.units.push(rzone("rz-2", &[ShardRange::new(4, 8)], "sh-b", "sz-a"));
        let text = custom.to_toml();
        assert!(text.contains(r#"shards = ["0-3", "9"]"#), "{text}");
        assert_eq!(UnitTopology::from_toml(&text).unwrap(), custom);
    }

    #[test]
    fn json_round_trips() {
        let topology = UnitTopology::default_deployment();
        let json = topology.to_json();
        assert_eq!(UnitTopology::from_json(&json).unwrap(), topology);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["shard_rule"]["modulus"], 100);
        assert_eq!(value["units"][0]["kind"], "rzone");
        assert_eq!(value["units"][0]["shards"][0], "0-24");
        assert_eq!(value["units"][4]["kind"], "gzone");
        assert!(value["units"][5].get("standby_dc").is_none());
    }

    #[test]
    fn shard_rule_defaults_to_100() {
        let text = DEFAULT_TOPOLOGY_TOML.replace("[shard_rule]\nmodulus = 100\n", "");
        assert!(!text.contains("modulus ="));
        assert_eq!(UnitTopology::from_toml(&text).unwrap().shard_rule.modulus, DEFAULT_SHARD_MODULUS);
    }

    #[test]
    fn shard_ranges_parse_and_print() {
        assert_eq!("0-24".parse::<ShardRange>().unwrap(), ShardRange::new(0, 24));
        assert_eq!("7".parse::<ShardRange>().unwrap(), ShardRange::single(7));
        assert_eq!(" 3 - 5 ".parse::<ShardRange>().unwrap(), ShardRange::new(3, 5));
        assert_eq!("24-0".parse::<ShardRange>().unwrap(), ShardRange::new(24, 0));
        assert_eq!(ShardRange::new(0, 24).to_string(), "0-24");
        assert_eq!(ShardRange::single(7).to_string(), "7");
        assert_eq!(ShardRange::new(0, 24).len(), 25);
        assert!(ShardRange::new(3, 2).is_empty());
        for (text, reason) in [
            ("", "empty"),
            ("a-3", "not a non-negative decimal integer"),
            ("+3", "not a non-negative decimal integer"),
            ("-3", "missing"),
            ("3-", "missing"),
            ("1-2-3", "more than one '-'"),
            ("4294967296", "32 bits"),
        ] {
            let err = text.parse::<ShardRange>().unwrap_err();
            assert!(matches!(err, UnitTopologyError::BadShardRange { .. }), "{text:?}: {err:?}");
            let message = err.to_string();
            assert!(message.contains(reason) && message.contains(&format!("{text:?}")), "{message}");
        }
    }

    #[test]
    fn shard_range_errors_reach_the_toml_error() {
        let text = DEFAULT_TOPOLOGY_TOML.replace(r#"shards = ["0-24"]"#, r#"shards = ["0..24"]"#);
        let err = UnitTopology::from_toml(&text).unwrap_err();
        assert!(matches!(err, UnitTopologyError::Toml { .. }));
        assert!(err.to_string().contains(r#""0..24""#), "{err}");

        let text = DEFAULT_TOPOLOGY_TOML.replace(r#"shards = ["0-24"]"#, r#"shards = [-1]"#);
        let err = UnitTopology::from_toml(&text).unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");

        // A bare integer is one shard.
        let text = DEFAULT_TOPOLOGY_TOML.replace(r#"shards = ["0-24"]"#, r#"shards = ["0-23", 24]"#);
        let parsed = UnitTopology::from_toml(&text).unwrap();
        assert_eq!(parsed.units[0].shards, [ShardRange::new(0, 23), ShardRange::single(24)]);
    }

    #[test]
    fn syntax_errors_and_unknown_fields_are_refused() {
        let err = UnitTopology::from_toml("[[units]\n").unwrap_err();
        assert!(matches!(err, UnitTopologyError::Toml { .. }), "{err:?}");
        let text = DEFAULT_TOPOLOGY_TOML.replace("standby_dc = \"sh-b\"", "standby = \"sh-b\"");
        let err = UnitTopology::from_toml(&text).unwrap_err();
        assert!(
            matches!(err, UnitTopologyError::Toml { .. }) && err.to_string().contains("standby"),
            "{err}"
        );
        let err =
            UnitTopology::from_toml(&DEFAULT_TOPOLOGY_TOML.replace("\"rzone\"", "\"xzone\"")).unwrap_err();
        assert!(err.to_string().contains("xzone"), "{err}");
        let err = UnitTopology::from_json(b"{").unwrap_err();
        assert!(matches!(err, UnitTopologyError::Json { .. }), "{err:?}");
    }

    #[test]
    fn bad_names_are_refused() {
        let err = refused(&["Hangzhou"], |t| t.cities[0].name = "Hangzhou".into());
        assert!(matches!(err, UnitTopologyError::Name(TopologyError::BadCharacter { what: "city", .. })));
        let err = refused(&["dc"], |t| t.cities[0].dcs[0] = String::new());
        assert!(matches!(err, UnitTopologyError::Name(TopologyError::EmptyName { what: "dc" })));
        let err = refused(&["rz hz a"], |t| t.units[0].name = "rz hz a".into());
        assert!(matches!(err, UnitTopologyError::Name(TopologyError::BadCharacter { what: "unit", .. })));
    }

    #[test]
    fn cities_and_dcs_are_checked() {
        let err = refused(&["shanghai"], |t| t.cities[0].name = "shanghai".into());
        assert!(matches!(err, UnitTopologyError::DuplicateCity { .. }));
        let err = refused(&["shenzhen"], |t| {
            t.cities[2].dcs.clear();
            t.units.retain(|u| u.home_dc != "sz-a");
        });
        assert!(matches!(err, UnitTopologyError::CityWithoutDcs { .. }));
        let err = refused(&["hz-a", "hangzhou", "shenzhen"], |t| t.cities[2].dcs.push("hz-a".into()));
        assert!(matches!(err, UnitTopologyError::DuplicateDc { .. }));
        let err = refused(&["hz-b", "hangzhou"], |t| t.cities[0].dcs.push("hz-b".into()));
        assert!(matches!(
            err,
            UnitTopologyError::DuplicateDc { ref first_city, ref second_city, .. }
                if first_city == "hangzhou" && second_city == "hangzhou"
        ));
    }

    #[test]
    fn unit_names_are_unique() {
        let err = refused(&["rz-hz-a"], |t| t.units[1].name = "rz-hz-a".into());
        assert!(matches!(err, UnitTopologyError::DuplicateUnit { .. }));
    }

    #[test]
    fn unknown_dcs_are_refused() {
        let err =
            refused(&["rz-hz-b", "home_dc", "hz-c"], |t| unit_mut(t, "rz-hz-b").home_dc = "hz-c".into());
        assert!(matches!(err, UnitTopologyError::UnknownDc { field: "home_dc", .. }));
        let err = refused(&["gz", "standby_dc", "xx"], |t| unit_mut(t, "gz").standby_dc = Some("xx".into()));
        assert!(matches!(err, UnitTopologyError::UnknownDc { field: "standby_dc", .. }));
    }

    #[test]
    fn standbys_are_checked() {
        let err = refused(&["rz-hz-a"], |t| unit_mut(t, "rz-hz-a").standby_dc = None);
        assert!(matches!(err, UnitTopologyError::MissingStandby { .. }));
        let err = refused(&["rzone", "rz-hz-a", "hz-b", "hangzhou"], |t| {
            unit_mut(t, "rz-hz-a").standby_dc = Some("hz-b".into())
        });
        assert!(matches!(err, UnitTopologyError::StandbyInHomeCity { kind: UnitKind::Rzone, .. }));
        let err = refused(&["gzone", "gz", "hz-a", "hangzhou"], |t| {
            unit_mut(t, "gz").standby_dc = Some("hz-a".into())
        });
        assert!(matches!(err, UnitTopologyError::StandbyInHomeCity { kind: UnitKind::Gzone, .. }));
        let err = refused(&["cz-shanghai", "sh-a"], |t| {
            unit_mut(t, "cz-shanghai").standby_dc = Some("sh-a".into())
        });
        assert!(matches!(err, UnitTopologyError::StandbyIsHome { .. }));

        // A gzone needs no standby; a czone's standby may be in its own city.
        let mut topology = UnitTopology::default_deployment();
        unit_mut(&mut topology, "gz").standby_dc = None;
        unit_mut(&mut topology, "cz-shanghai").standby_dc = Some("sh-b".into());
        topology.validate().unwrap();
    }

    #[test]
    fn shards_belong_to_rzones_only() {
        let err = refused(&["rz-sh-b", "no shards"], |t| {
            let unit = unit_mut(t, "rz-sh-b");
            unit.shards.clear();
        });
        assert!(matches!(err, UnitTopologyError::RzoneWithoutShards { .. }));
        let err = refused(&["gzone", "gz"], |t| unit_mut(t, "gz").shards = vec![ShardRange::single(3)]);
        assert!(matches!(err, UnitTopologyError::ShardsOnNonRzone { kind: UnitKind::Gzone, .. }));
        let err = refused(&["czone", "cz-shenzhen"], |t| {
            unit_mut(t, "cz-shenzhen").shards = vec![ShardRange::single(3)]
        });
        assert!(matches!(err, UnitTopologyError::ShardsOnNonRzone { kind: UnitKind::Czone, .. }));
    }

    #[test]
    fn shard_ranges_are_checked() {
        let err = refused(&["rz-hz-a", "24-0", "0-24"], |t| {
            unit_mut(t, "rz-hz-a").shards = vec![ShardRange::new(24, 0)]
        });
        assert_eq!(err, UnitTopologyError::ReversedShardRange { unit: "rz-hz-a".into(), first: 24, last: 0 });
        let err = refused(&["rz-sh-b", "shard 100", "0 to 99"], |t| {
            unit_mut(t, "rz-sh-b").shards = vec![ShardRange::new(75, 120)]
        });
        assert_eq!(
            err,
            UnitTopologyError::ShardOutOfRange { unit: "rz-sh-b".into(), shard: 100, modulus: 100 }
        );
        let err = refused(&["rz-sh-b", "shard 150"], |t| {
            unit_mut(t, "rz-sh-b").shards = vec![ShardRange::new(75, 99), ShardRange::new(150, 160)]
        });
        assert!(matches!(err, UnitTopologyError::ShardOutOfRange { shard: 150, .. }));
    }

    #[test]
    fn overlapping_shards_name_both_units_and_the_first_shard() {
        let err = refused(&["shard 20", "rz-hz-a", "rz-sh-a"], |t| {
            unit_mut(t, "rz-sh-a").shards.push(ShardRange::new(20, 30))
        });
        assert_eq!(
            err,
            UnitTopologyError::OverlappingShards {
                shard: 20,
                first_unit: "rz-hz-a".into(),
                second_unit: "rz-sh-a".into()
            }
        );
        // The lowest shard owned twice, whatever the order ranges are listed in.
        let err = refused(&["shard 10"], |t| {
            unit_mut(t, "rz-sh-b").shards.push(ShardRange::new(60, 60));
            unit_mut(t, "rz-sh-b").shards.push(ShardRange::new(10, 12));
        });
        assert!(matches!(err, UnitTopologyError::OverlappingShards { shard: 10, .. }));
        // Twice in one unit.
        let err =
            refused(&["shard 5", "rz-hz-a"], |t| unit_mut(t, "rz-hz-a").shards.push(ShardRange::single(5)));
        assert!(matches!(err, UnitTopologyError::OverlappingShards { shard: 5, .. }));
    }

    #[test]
    fn missing_shards_are_listed() {
        let err = refused(&["shards 30-34, 90 are not owned by any rzone"], |t| {
            unit_mut(t, "rz-hz-b").shards = vec![ShardRange::new(25, 29), ShardRange::new(35, 49)];
            unit_mut(t, "rz-sh-b").shards = vec![ShardRange::new(75, 89), ShardRange::new(91, 99)];
        });
        assert_eq!(
            err,
            UnitTopologyError::MissingShards {
                shown: vec![ShardRange::new(30, 34), ShardRange::single(90)],
                count: 6
            }
        );
        let err = refused(&["shard 0 is not owned"], |t| {
            unit_mut(t, "rz-hz-a").shards = vec![ShardRange::new(1, 24)]
        });
        assert!(matches!(err, UnitTopologyError::MissingShards { count: 1, .. }));
        // Many gaps: the first few and the total.
        let err = refused(&["shards 0, 2, 4, 6, 8 and more (50 in all)"], |t| {
            t.units.retain(|u| u.kind != UnitKind::Rzone);
            let odd: Vec<ShardRange> = (0..50).map(|i| ShardRange::single(2 * i + 1)).collect();
            t.units.push(rzone("rz-odd", &odd, "hz-a", "sh-a"));
        });
        assert!(matches!(err, UnitTopologyError::MissingShards { count: 50, ref shown } if shown.len() == 5));
    }

    #[test]
    fn exactly_one_gzone() {
        let err = refused(&["no gzone"], |t| t.units.retain(|u| u.kind != UnitKind::Gzone));
        assert_eq!(err, UnitTopologyError::NoGzone);
        let err = refused(&["gz", "gz-2"], |t| {
            let mut second = unit_mut(t, "gz").clone();
            second.name = "gz-2".into();
            t.units.push(second);
        });
        assert!(matches!(err, UnitTopologyError::TwoGzones { .. }));
    }

    #[test]
    fn at_most_one_czone_per_city() {
        let err = refused(&["shanghai", "cz-shanghai", "cz-sh-2"], |t| {
            let mut second = unit_mut(t, "cz-shanghai").clone();
            second.name = "cz-sh-2".into();
            second.home_dc = "sh-b".into();
            t.units.push(second);
        });
        assert!(matches!(err, UnitTopologyError::TwoCzonesInCity { .. }));
        // A city may have none.
        let mut topology = UnitTopology::default_deployment();
        topology.units.retain(|u| u.name != "cz-shenzhen");
        assert_eq!(RoutingTable::new(topology).unwrap().czone_in_city("shenzhen"), None);
    }

    #[test]
    fn limits_are_enforced() {
        let err = refused(&["shard_rule.modulus is 0", "10000"], |t| t.shard_rule.modulus = 0);
        assert_eq!(err, UnitTopologyError::BadModulus { modulus: 0 });
        let err = refused(&["10001"], |t| t.shard_rule.modulus = SHARDS_MAX + 1);
        assert!(matches!(err, UnitTopologyError::BadModulus { .. }));
        let err = refused(&["1001 units", "1000"], |t| {
            let czone = unit_mut(t, "cz-shenzhen").clone();
            t.units.resize(UNITS_MAX + 1, czone);
        });
        assert_eq!(err, UnitTopologyError::TooManyUnits { count: UNITS_MAX + 1 });

        // The largest modulus works.
        let mut topology = UnitTopology::default_deployment();
        topology.shard_rule.modulus = SHARDS_MAX;
        topology.units[3].shards = vec![ShardRange::new(75, SHARDS_MAX - 1)];
        let table = RoutingTable::new(topology).unwrap();
        assert_eq!(table.unit_for_shard(SHARDS_MAX - 1).unwrap().name, "rz-sh-b");
    }

    #[test]
    fn default_lookups() {
        let table = table();
        assert_eq!(table.shard_count(), 100);
        assert_eq!(table.shard_of(1234), 34);
        assert_eq!(table.unit_for_shard(34).unwrap().name, "rz-hz-b");
        assert_eq!(table.unit_for_uid(1234).name, "rz-hz-b");
        assert_eq!(table.unit_for_uid(0).name, "rz-hz-a");
        assert_eq!(table.unit_for_uid(24).name, "rz-hz-a");
        assert_eq!(table.unit_for_uid(25).name, "rz-hz-b");
        assert_eq!(table.unit_for_uid(2_000_050).name, "rz-sh-a");
        assert_eq!(table.unit_for_uid(u64::MAX).name, "rz-hz-a"); // 18446744073709551615 % 100 = 15
        assert_eq!(table.shard_of(u64::MAX), 15);
        assert_eq!(table.unit_for_uid(99).name, "rz-sh-b");
        assert_eq!(table.unit_for_shard(100), None);
        for shard in 0..100 {
            let unit = table.unit_for_shard(shard).unwrap();
            assert!(unit.kind == UnitKind::Rzone && unit.owns(shard), "shard {shard}");
        }

        let unit = table.unit("rz-sh-b").unwrap();
        assert_eq!((unit.home_dc.as_str(), unit.standby_dc.as_deref()), ("sh-b", Some("hz-b")));
        assert_eq!(table.unit("nope"), None);
        assert_eq!(table.gzone().name, "gz");
        assert_eq!(table.gzone().standby_dc.as_deref(), Some("sh-a"));
        assert_eq!(table.czone_in_city("hangzhou").unwrap().name, "cz-hangzhou");
        assert_eq!(table.czone_in_city("shenzhen").unwrap().home_dc, "sz-a");
        assert_eq!(table.czone_in_city("beijing"), None);
        assert_eq!(table.city_of_dc("sh-b"), Some("shanghai"));
        assert_eq!(table.city_of_dc("sz-a"), Some("shenzhen"));
        assert_eq!(table.city_of_dc("xx"), None);

        let names = |city| table.units_homed_in_city(city).map(|u| u.name.as_str()).collect::<Vec<_>>();
        assert_eq!(names("hangzhou"), ["rz-hz-a", "rz-hz-b", "gz", "cz-hangzhou"]);
        assert_eq!(names("shanghai"), ["rz-sh-a", "rz-sh-b", "cz-shanghai"]);
        assert_eq!(names("shenzhen"), ["cz-shenzhen"]);
        assert!(names("beijing").is_empty());
        assert_eq!(table.units_homed_in_city("hangzhou").len(), 4);

        // Every rzone's standby is in another city.
        for unit in table.topology().units.iter().filter(|u| u.kind == UnitKind::Rzone) {
            let standby = unit.standby_dc.as_deref().unwrap();
            assert_ne!(table.city_of_dc(&unit.home_dc), table.city_of_dc(standby), "{}", unit.name);
        }
    }

    #[test]
    fn shard_is_uid_mod_modulus() {
        let mut topology = UnitTopology::default_deployment();
        topology.shard_rule.modulus = 7;
        topology.units.retain(|u| u.kind != UnitKind::Rzone);
        topology.units.push(rzone("rz-low", &[ShardRange::new(0, 2)], "hz-a", "sh-a"));
        topology.units.push(rzone(
            "rz-high",
            &[ShardRange::new(3, 5), ShardRange::single(6)],
            "sh-a",
            "hz-b",
        ));
        let table = RoutingTable::try_from(topology.clone()).unwrap();
        assert_eq!(table.shard_count(), 7);
        for uid in [0u64, 1, 6, 7, 13, 14, 1234, 1_000_003, u64::MAX] {
            let shard = table.shard_of(uid);
            assert_eq!(u64::from(shard), uid % 7, "uid {uid}");
            let expected = if shard <= 2 { "rz-low" } else { "rz-high" };
            assert_eq!(table.unit_for_uid(uid).name, expected, "uid {uid}");
        }
        assert_eq!(table.shard_of(1234), 2); // 1234 = 7 * 176 + 2
        assert_eq!(table.unit_for_shard(7), None);
        assert_eq!(table.topology(), &topology);
        assert_eq!(table.clone(), table);
        assert_eq!(table.into_topology(), topology);
    }
}
