//! Leases as replicated state: which leases exist, their granted TTL, and which
//! keys each one holds. Time is not here: when a lease expires is the leader's
//! business (the store crate's lessor), which then proposes a revoke.
//!
//! A key's lease is part of its version (`Version::lease`); the `lease_keys`
//! table is the reverse index, kept in step from the events of each command.

use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse,
};
use etcd_proto::mvccpb::{event, Event};
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::error::{MvccError, StorageError};
use crate::limits::LEASE_TTL_MAX_SECONDS;
use crate::store::MvccStore;
use crate::KvError;

/// Leases by id; the value is the granted TTL in seconds (8 bytes, big-endian).
pub(crate) const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
/// `lease id (8 bytes, big-endian) ++ key` for every key a lease holds.
pub(crate) const LEASE_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("lease_keys");

/// A lease as the replicated state holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub granted_ttl_seconds: i64,
    /// The keys attached to the lease, in key order.
    pub keys: Vec<Vec<u8>>,
}

/// A change to the set of leases, reported to the lessor after commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl_seconds: i64 },
    Revoked { id: i64 },
}

fn lease_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn decode_ttl(bytes: &[u8]) -> Result<i64, StorageError> {
    let raw: [u8; 8] = bytes.try_into().map_err(|_| StorageError("corrupt lease record".into()))?;
    Ok(i64::from_be_bytes(raw))
}

pub(crate) fn lease_exists(
    leases: &impl ReadableTable<i64, &'static [u8]>,
    id: i64,
) -> Result<bool, StorageError> {
    Ok(leases.get(id)?.is_some())
}

/// Applies a grant. No revision is taken: a lease is not a key.
pub(crate) fn grant(
    leases: &mut Table<'_, i64, &'static [u8]>,
    req: &LeaseGrantRequest,
) -> Result<(LeaseGrantResponse, LeaseChange), KvError> {
    if req.id == 0 {
        return Err(MvccError::LeaseNotFound.into());
    }
    if req.ttl > LEASE_TTL_MAX_SECONDS {
        return Err(MvccError::LeaseTtlTooLarge.into());
    }
    if lease_exists(leases, req.id)? {
        return Err(MvccError::LeaseExists.into());
    }
    leases.insert(req.id, req.ttl.to_be_bytes().as_slice())?;
    let response = LeaseGrantResponse { header: None, id: req.id, ttl: req.ttl, error: String::new() };
    Ok((response, LeaseChange::Granted { id: req.id, ttl_seconds: req.ttl }))
}

/// The keys a lease holds, in key order.
pub(crate) fn keys_of(
    lease_keys: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: i64,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let start = id.to_be_bytes();
    let mut keys = Vec::new();
    for row in lease_keys.range::<&[u8]>(start.as_slice()..)? {
        let (k, _) = row?;
        let k = k.value();
        if k.len() < 8 || k[..8] != start {
            break;
        }
        keys.push(k[8..].to_vec());
    }
    Ok(keys)
}

/// Removes a lease and its rows of the lease-key table (`keys`, from [`keys_of`]); the caller
/// deletes the keys first.
pub(crate) fn forget(
    leases: &mut Table<'_, i64, &'static [u8]>,
    lease_keys: &mut Table<'_, &'static [u8], &'static [u8]>,
    req: &LeaseRevokeRequest,
    keys: &[Vec<u8>],
) -> Result<(LeaseRevokeResponse, LeaseChange), KvError> {
    for key in keys {
        lease_keys.remove(lease_key(req.id, key).as_slice())?;
    }
    leases.remove(req.id)?;
    Ok((LeaseRevokeResponse { header: None }, LeaseChange::Revoked { id: req.id }))
}

/// The key an event moves between leases, with its old and new lease (0:
/// none); `None` when the event leaves the key's lease as it was.
fn lease_move(e: &Event) -> Option<(&[u8], i64, i64)> {
    let kv = e.kv.as_ref()?;
    let old = e.prev_kv.as_ref().map_or(0, |p| p.lease);
    let new = if e.r#type == event::EventType::Put as i32 { kv.lease } else { 0 };
    (old != new).then_some((kv.key.as_slice(), old, new))
}

/// Keeps the lease-key table in step with one command's events: a key leaves the
/// lease it had when deleted or moved, and joins the lease it is put with.
/// The table is opened only when an event moves a key between leases.
pub(crate) fn index_events(txn: &WriteTransaction, events: &[Event]) -> Result<(), StorageError> {
    let mut moves = events.iter().filter_map(lease_move).peekable();
    if moves.peek().is_none() {
        return Ok(());
    }
    let mut lease_keys = txn.open_table(LEASE_KEYS)?;
    for (key, old, new) in moves {
        if old != 0 {
            lease_keys.remove(lease_key(old, key).as_slice())?;
        }
        if new != 0 {
            lease_keys.insert(lease_key(new, key).as_slice(), [].as_slice())?;
        }
    }
    Ok(())
}

impl MvccStore {
    /// Every lease and its granted TTL.
    pub fn leases(&self) -> Result<Vec<(i64, i64)>, StorageError> {
        let txn = self.begin_read()?;
        let leases = txn.open_table(LEASES)?;
        let mut out = Vec::new();
        for row in leases.iter()? {
            let (id, ttl) = row?;
            out.push((id.value(), decode_ttl(ttl.value())?));
        }
        Ok(out)
    }

    /// A lease's granted TTL and its keys, if it exists.
    pub fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, StorageError> {
        let txn = self.begin_read()?;
        let leases = txn.open_table(LEASES)?;
        let Some(ttl) = leases.get(id)? else { return Ok(None) };
        let granted_ttl_seconds = decode_ttl(ttl.value())?;
        let keys = keys_of(&txn.open_table(LEASE_KEYS)?, id)?;
        Ok(Some(LeaseRecord { granted_ttl_seconds, keys }))
    }
}
