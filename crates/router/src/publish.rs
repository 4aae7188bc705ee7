//! Publishing a unit topology: `/fivefold/topology` and the routing records of
//! its units, changed together in one Txn.

use std::collections::BTreeSet;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use topology::{RoutingTable, UnitTopology, TOPOLOGY_KEY};

use crate::record::{read_all, routing_key, UnitRouting};
use crate::RouterError;

/// What a publish changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The store revision of the change.
    pub revision: i64,
    /// Units that got a new routing record (at home, epoch 1).
    pub created: Vec<String>,
    /// Units whose record was kept (current dc and epoch unchanged).
    pub kept: Vec<String>,
    /// Units no longer in the topology (their records stay, with their epochs).
    pub removed: Vec<String>,
}

/// The published topology and the `mod_revision` of its key (a linearizable read).
pub async fn read_topology(client: &mut Client) -> Result<(UnitTopology, i64), RouterError> {
    read_topology_with(client, false).await
}

/// [`read_topology`], or served locally by the member asked (`serializable`).
pub async fn read_topology_with(
    client: &mut Client,
    serializable: bool,
) -> Result<(UnitTopology, i64), RouterError> {
    let options = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
    let response = client.get(TOPOLOGY_KEY, options).await?;
    let kv = response.kvs().first().ok_or(RouterError::NoTopology { key: TOPOLOGY_KEY })?;
    Ok((UnitTopology::from_json(kv.value())?, kv.mod_revision()))
}

/// Validates `topology` and publishes it with its units' routing records: new
/// units start at home with epoch 1; existing units keep their current dc and
/// epoch (their home and standby follow the new topology); units that are gone
/// keep their record, so a unit that comes back continues from its epoch. One Txn that also checks nothing changed since it read, so
/// a concurrent publish or failover makes it fail with [`RouterError::Conflict`]
/// instead of undoing the other's work.
pub async fn publish(client: &mut Client, topology: &UnitTopology) -> Result<Published, RouterError> {
    let table = RoutingTable::new(topology.clone())?;
    let topology_revision = match read_topology(client).await {
        Ok((_, revision)) => revision,
        Err(RouterError::NoTopology { .. }) => 0,
        Err(e) => return Err(e),
    };
    let existing = read_all(client).await?;
    let mut compares = vec![Compare::mod_revision(TOPOLOGY_KEY, CompareOp::Equal, topology_revision)];
    let mut ops = vec![TxnOp::put(TOPOLOGY_KEY, topology.to_json(), None)];
    let (mut created, mut kept, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for spec in &topology.units {
        let key = routing_key(&spec.name);
        match existing.get(&spec.name) {
            None => {
                compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(key.as_str(), UnitRouting::at_home(spec).to_json(), None));
                created.push(spec.name.clone());
            }
            Some(stored) => {
                let current = &stored.routing;
                if table.city_of_dc(&current.current_dc).is_none() {
                    return Err(RouterError::ServedFromRemovedDc {
                        unit: spec.name.clone(),
                        dc: current.current_dc.clone(),
                    });
                }
                let updated = UnitRouting {
                    kind: spec.kind,
                    home_dc: spec.home_dc.clone(),
                    standby_dc: spec.standby_dc.clone(),
                    ..current.clone()
                };
                compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, stored.mod_revision));
                if updated != *current {
                    ops.push(TxnOp::put(key.as_str(), updated.to_json(), None));
                }
                kept.push(spec.name.clone());
            }
        }
    }
    // Units no longer in the topology keep their record (unrouted, since the
    // gateway routes by the topology): if one comes back it continues from its
    // epoch, so an epoch never starts over and old fences stay invalid.
    let names: BTreeSet<&str> = topology.units.iter().map(|u| u.name.as_str()).collect();
    for unit in existing.keys() {
        if !names.contains(unit.as_str()) {
            removed.push(unit.clone());
        }
    }
    let response = client.txn(Txn::new().when(compares).and_then(ops)).await?;
    if !response.succeeded() {
        return Err(RouterError::Conflict);
    }
    let revision = response.header().map_or(0, |h| h.revision());
    Ok(Published { revision, created, kept, removed })
}
