//! Moving units between dcs: one unit, every unit served from a city, and back
//! home. Each command is one Txn over the records it changes, each record
//! compared on its `mod_revision` and written with epoch + 1.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use topology::RoutingTable;

use crate::publish::read_topology;
use crate::record::{read_all, routing_key, Stored, UnitRouting};
use crate::RouterError;

/// One unit moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub unit: String,
    pub from: String,
    pub to: String,
    /// The unit's epoch after the move.
    pub epoch: u64,
}

async fn load(client: &mut Client) -> Result<(RoutingTable, BTreeMap<String, Stored>), RouterError> {
    let (topology, _) = read_topology(client).await?;
    let table = RoutingTable::new(topology)?;
    Ok((table, read_all(client).await?))
}

fn known_units(table: &RoutingTable) -> String {
    table.topology().units.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn record<'a>(records: &'a BTreeMap<String, Stored>, unit: &str) -> Result<&'a Stored, RouterError> {
    records.get(unit).ok_or_else(|| RouterError::NoRecord { unit: unit.to_string(), key: routing_key(unit) })
}

/// Applies `moves` (record, target dc) in one Txn; a record that changed since
/// it was read — or a `fence` that no longer holds — fails the whole command
/// with [`RouterError::Conflict`].
async fn apply(
    client: &mut Client,
    moves: Vec<(&Stored, String)>,
    fence: Option<Compare>,
) -> Result<Vec<Move>, RouterError> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let mut compares: Vec<Compare> = fence.into_iter().collect();
    let mut ops = Vec::new();
    let mut done = Vec::new();
    for (stored, to) in moves {
        let key = routing_key(&stored.routing.unit);
        let next: UnitRouting = stored.routing.moved_to(&to);
        compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, stored.mod_revision));
        ops.push(TxnOp::put(key.as_str(), next.to_json(), None));
        done.push(Move {
            unit: next.unit.clone(),
            from: stored.routing.current_dc.clone(),
            to,
            epoch: next.epoch,
        });
    }
    let response = client.txn(Txn::new().when(compares).and_then(ops)).await?;
    if !response.succeeded() {
        return Err(RouterError::Conflict);
    }
    Ok(done)
}

/// Moves `unit` to `to`, or to its standby dc (from its home) or home (from its
/// standby). Nothing moves if it is served from the target already.
pub async fn failover_unit(
    client: &mut Client,
    unit: &str,
    to: Option<&str>,
) -> Result<Vec<Move>, RouterError> {
    let (table, records) = load(client).await?;
    let spec = table
        .unit(unit)
        .ok_or_else(|| RouterError::UnknownUnit { unit: unit.to_string(), known: known_units(&table) })?;
    let stored = record(&records, unit)?;
    let target = match to {
        Some(dc) => {
            if table.city_of_dc(dc).is_none() {
                let known: Vec<&str> =
                    table.topology().cities.iter().flat_map(|c| c.dcs.iter().map(String::as_str)).collect();
                return Err(RouterError::UnknownDc { dc: dc.to_string(), known: known.join(", ") });
            }
            dc.to_string()
        }
        None => {
            let standby =
                spec.standby_dc.clone().ok_or_else(|| RouterError::NoStandby { unit: unit.to_string() })?;
            if stored.routing.current_dc == standby {
                spec.home_dc.clone()
            } else {
                standby
            }
        }
    };
    if stored.routing.current_dc == target {
        return Ok(Vec::new());
    }
    apply(client, vec![(stored, target)], None).await
}

/// Moves every unit served from a dc of `city` to whichever of its home and
/// standby dcs is outside the city. Units with neither (a CZone of that city)
/// stay: they are that city's local copy.
pub async fn failover_city(client: &mut Client, city: &str) -> Result<Vec<Move>, RouterError> {
    failover_city_fenced(client, city, None).await
}

/// [`failover_city`] whose Txn also requires `fence` (the failover controller
/// passes "I still hold the leadership lease", so a deposed controller that
/// stalled cannot move units after someone else acted).
pub async fn failover_city_fenced(
    client: &mut Client,
    city: &str,
    fence: Option<Compare>,
) -> Result<Vec<Move>, RouterError> {
    let (table, records) = load(client).await?;
    if !table.topology().cities.iter().any(|c| c.name == city) {
        let known: Vec<&str> = table.topology().cities.iter().map(|c| c.name.as_str()).collect();
        return Err(RouterError::UnknownCity { city: city.to_string(), known: known.join(", ") });
    }
    let mut moves = Vec::new();
    for spec in &table.topology().units {
        let stored = record(&records, &spec.name)?;
        if table.city_of_dc(&stored.routing.current_dc) != Some(city) {
            continue;
        }
        let outside = [Some(&spec.home_dc), spec.standby_dc.as_ref()]
            .into_iter()
            .flatten()
            .find(|dc| table.city_of_dc(dc) != Some(city));
        if let Some(dc) = outside {
            moves.push((stored, dc.clone()));
        }
    }
    apply(client, moves, fence).await
}

/// Moves `unit` (or every unit) back to its home dc.
pub async fn failback(client: &mut Client, unit: Option<&str>) -> Result<Vec<Move>, RouterError> {
    let (table, records) = load(client).await?;
    if let Some(unit) = unit {
        if table.unit(unit).is_none() {
            return Err(RouterError::UnknownUnit { unit: unit.to_string(), known: known_units(&table) });
        }
    }
    let mut moves = Vec::new();
    for spec in table.topology().units.iter().filter(|u| unit.is_none_or(|name| u.name == name)) {
        let stored = record(&records, &spec.name)?;
        if stored.routing.current_dc != spec.home_dc {
            moves.push((stored, spec.home_dc.clone()));
        }
    }
    apply(client, moves, None).await
}
