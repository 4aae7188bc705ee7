//! Fencing a unit's business writes on its routing epoch.
//!
//! An instance takes a [`Fence`] when it starts serving a unit (and again after
//! each move it is told about). Every write it makes for the unit goes through
//! [`Fence::write`]: a Txn that, besides the caller's own conditions, compares
//! the unit's routing record with the `mod_revision` the fence saw. Once the
//! unit moves (the record is rewritten with epoch + 1), every such Txn fails, so
//! an instance in the old dc that still gets a stray request cannot write: the
//! split brain that would double-spend is impossible by construction, not by
//! timing.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};

use crate::record::{routing_key, UnitRouting};
use crate::RouterError;

/// A unit's routing record as an instance last saw it.
#[derive(Debug, Clone)]
pub struct Fence {
    pub routing: UnitRouting,
    key: String,
    mod_revision: i64,
}

/// How a fenced write ended.
#[derive(Debug)]
pub enum FencedWrite {
    /// The fence held and the caller's conditions held: the ops were applied.
    Done(TxnResponse),
    /// The fence held but one of the caller's conditions did not; nothing written.
    ConditionFailed,
    /// The unit moved since the fence was taken; nothing written. Holds the
    /// record now (None if it was deleted).
    Fenced(Option<UnitRouting>),
}

impl Fence {
    /// Reads `unit`'s routing record now.
    pub async fn acquire(client: &mut Client, unit: &str) -> Result<Fence, RouterError> {
        let key = routing_key(unit);
        let response = client.get(key.as_str(), None).await?;
        let kv = response
            .kvs()
            .first()
            .ok_or_else(|| RouterError::NoRecord { unit: unit.to_string(), key: key.clone() })?;
        Ok(Fence { routing: UnitRouting::from_json(&key, kv.value())?, mod_revision: kv.mod_revision(), key })
    }

    /// The epoch this fence writes under.
    pub fn epoch(&self) -> u64 {
        self.routing.epoch
    }

    /// `ops` if the unit has not moved and every one of `compares` holds.
    pub async fn write(
        &self,
        client: &mut Client,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<FencedWrite, RouterError> {
        let mut all = vec![Compare::mod_revision(self.key.as_str(), CompareOp::Equal, self.mod_revision)];
        all.extend(compares);
        let txn = Txn::new().when(all).and_then(ops).or_else([TxnOp::get(self.key.as_str(), None)]);
        let response = client.txn(txn).await?;
        if response.succeeded() {
            return Ok(FencedWrite::Done(response));
        }
        let now = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => {
                Some(get.kvs().first().map(|kv| (kv.mod_revision(), kv.value().to_vec())))
            }
            _ => None,
        });
        match now.flatten() {
            Some((revision, _)) if revision == self.mod_revision => Ok(FencedWrite::ConditionFailed),
            Some((_, value)) => Ok(FencedWrite::Fenced(Some(UnitRouting::from_json(&self.key, &value)?))),
            None => Ok(FencedWrite::Fenced(None)),
        }
    }
}
