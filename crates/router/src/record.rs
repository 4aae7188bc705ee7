//! The routing record of one unit: `/fivefold/routing/units/{unit}`, JSON.

use serde::{Deserialize, Serialize};
use topology::{UnitKind, UnitSpec};

use crate::RouterError;

/// Prefix of every unit's routing record.
pub const ROUTING_PREFIX: &str = "/fivefold/routing/units/";

/// The store key of `unit`'s routing record.
pub fn routing_key(unit: &str) -> String {
    format!("{ROUTING_PREFIX}{unit}")
}

/// Where a unit is served now, and under which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRouting {
    pub unit: String,
    pub kind: UnitKind,
    pub home_dc: String,
    pub standby_dc: Option<String>,
    /// The dc serving the unit now.
    pub current_dc: String,
    /// Grows by one with every move; business writes are fenced on it.
    pub epoch: u64,
}

impl UnitRouting {
    /// A new unit's record: served from home, epoch 1.
    pub fn at_home(spec: &UnitSpec) -> UnitRouting {
        UnitRouting {
            unit: spec.name.clone(),
            kind: spec.kind,
            home_dc: spec.home_dc.clone(),
            standby_dc: spec.standby_dc.clone(),
            current_dc: spec.home_dc.clone(),
            epoch: 1,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a routing record serializes")
    }

    pub fn from_json(key: &str, bytes: &[u8]) -> Result<UnitRouting, RouterError> {
        serde_json::from_slice(bytes)
            .map_err(|e| RouterError::BadRecord { key: key.to_string(), message: e.to_string() })
    }

    /// This record moved to `dc` under the next epoch.
    pub fn moved_to(&self, dc: &str) -> UnitRouting {
        let next = UnitRouting { current_dc: dc.to_string(), epoch: self.epoch + 1, ..self.clone() };
        assert!(next.epoch > self.epoch, "epochs only grow");
        next
    }
}

/// A record as read, with the `mod_revision` a conditional write compares.
#[derive(Debug, Clone)]
pub struct Stored {
    pub routing: UnitRouting,
    pub mod_revision: i64,
}

/// Every unit's routing record, by unit name (a linearizable read).
pub async fn read_all(
    client: &mut etcd_client::Client,
) -> Result<std::collections::BTreeMap<String, Stored>, RouterError> {
    read_all_with(client, false).await
}

/// [`read_all`], or served by the member asked without a leader round trip
/// (`serializable`: possibly stale, but answers while the store elects a leader).
pub async fn read_all_with(
    client: &mut etcd_client::Client,
    serializable: bool,
) -> Result<std::collections::BTreeMap<String, Stored>, RouterError> {
    let mut options = etcd_client::GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    let response = client.get(ROUTING_PREFIX, Some(options)).await?;
    let mut records = std::collections::BTreeMap::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).to_string();
        let routing = UnitRouting::from_json(&key, kv.value())?;
        records.insert(routing.unit.clone(), Stored { routing, mod_revision: kv.mod_revision() });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_bumps_the_epoch_and_keeps_the_rest() {
        let topology = topology::UnitTopology::default_deployment();
        let spec = topology.units.iter().find(|u| u.name == "rz-hz-a").unwrap();
        let home = UnitRouting::at_home(spec);
        assert_eq!((home.current_dc.as_str(), home.epoch), ("hz-a", 1));
        let moved = home.moved_to("sh-a");
        assert_eq!((moved.current_dc.as_str(), moved.epoch), ("sh-a", 2));
        assert_eq!(moved.home_dc, "hz-a");
        let key = routing_key("rz-hz-a");
        assert_eq!(UnitRouting::from_json(&key, &moved.to_json()).unwrap(), moved);
        assert!(matches!(UnitRouting::from_json(&key, b"{"), Err(RouterError::BadRecord { .. })));
    }
}
