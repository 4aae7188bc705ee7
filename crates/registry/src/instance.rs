//! The instance record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// Prefix of every instance record.
pub const REGISTRY_PREFIX: &str = "/fivefold/registry/";
/// Longest accepted metadata, in bytes of JSON, so one record stays small.
pub const METADATA_BYTES_MAX: usize = 4096;

/// The store key of an instance.
pub fn instance_key(service: &str, id: &str) -> String {
    format!("{REGISTRY_PREFIX}{service}/{id}")
}

/// Whether an instance takes traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Up,
    /// Registered but taking no traffic (starting, draining).
    Down,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub service: String,
    /// Unique within the service (e.g. `host-port`).
    pub id: String,
    /// `host:port` where it serves.
    pub address: String,
    /// The unit it serves (RZone, GZone or CZone name).
    pub unit: String,
    pub dc: String,
    pub city: String,
    #[serde(default)]
    pub version: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Health,
}

fn default_weight() -> u32 {
    100
}

impl Instance {
    pub fn key(&self) -> String {
        instance_key(&self.service, &self.id)
    }

    /// Checks names (service, id, unit, dc, city), the address and the size.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let name = |what: &'static str, value: &str| {
            topology::validate_name(what, value).map_err(|e| RegistryError::Invalid(e.to_string()))
        };
        name("service", &self.service)?;
        name("instance id", &self.id)?;
        name("unit", &self.unit)?;
        name("dc", &self.dc)?;
        name("city", &self.city)?;
        let port = self.address.rsplit_once(':').and_then(|(host, port)| {
            (!host.is_empty()).then_some(())?;
            port.parse::<u16>().ok()
        });
        if port.is_none_or(|port| port == 0) {
            return Err(RegistryError::Invalid(format!(
                "address {:?} is not host:port with a port 1..=65535",
                self.address
            )));
        }
        let metadata: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if metadata > METADATA_BYTES_MAX {
            return Err(RegistryError::Invalid(format!(
                "metadata is {metadata} bytes, more than {METADATA_BYTES_MAX}"
            )));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an instance serializes")
    }

    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Instance, RegistryError> {
        serde_json::from_slice(bytes)
            .map_err(|e| RegistryError::BadRecord { key: key.to_string(), message: e.to_string() })
    }
}

/// `(service, id)` of a record key, if it is one.
pub(crate) fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(REGISTRY_PREFIX)?;
    let (service, id) = rest.split_once('/')?;
    (!service.is_empty() && !id.is_empty() && !id.contains('/')).then_some((service, id))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Instance {
        Instance {
            service: "account".into(),
            id: "hz-a-1".into(),
            address: "127.0.0.1:8080".into(),
            unit: "rz-hz-a".into(),
            dc: "hz-a".into(),
            city: "hangzhou".into(),
            version: "1.0.0".into(),
            weight: 100,
            metadata: BTreeMap::new(),
            health: Health::Up,
        }
    }

    #[test]
    fn valid_records_round_trip_and_keys_parse() {
        let instance = sample();
        instance.validate().unwrap();
        let key = instance.key();
        assert_eq!(key, "/fivefold/registry/account/hz-a-1");
        assert_eq!(parse_key(&key), Some(("account", "hz-a-1")));
        assert_eq!(parse_key("/fivefold/registry/account"), None);
        assert_eq!(Instance::from_json(&key, &instance.to_json()).unwrap(), instance);
        // Optional fields default.
        let minimal = br#"{"service":"a","id":"b","address":"h:1","unit":"u","dc":"d","city":"c"}"#;
        let parsed = Instance::from_json("k", minimal).unwrap();
        assert_eq!((parsed.weight, parsed.health), (100, Health::Up));
    }

    #[test]
    fn bad_instances_are_refused_with_the_reason() {
        for (mutate, expected) in [
            (
                Box::new(|i: &mut Instance| i.address = "no-port".into()) as Box<dyn Fn(&mut Instance)>,
                "host:port",
            ),
            (Box::new(|i: &mut Instance| i.address = "h:0".into()), "host:port"),
            (Box::new(|i: &mut Instance| i.address = ":80".into()), "host:port"),
            (Box::new(|i: &mut Instance| i.service = "Bad/Name".into()), "service"),
            (Box::new(|i: &mut Instance| i.id = String::new()), "instance id"),
            (
                Box::new(|i: &mut Instance| {
                    i.metadata.insert("k".into(), "v".repeat(METADATA_BYTES_MAX));
                }),
                "metadata",
            ),
        ] {
            let mut instance = sample();
            mutate(&mut instance);
            let error = instance.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{error} should mention {expected}");
        }
    }
}
