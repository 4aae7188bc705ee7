//! Maintenance state and checks: the hash of the key space that members
//! compare (HashKV), and alarms (NOSPACE), which are replicated so every
//! member refuses the same writes.

use etcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
};
use redb::{ReadableTable, Table, TableDefinition};

use crate::encoding::{rev_row, row_key_of, split_rev_row};
use crate::error::{MvccError, StorageError};
use crate::store::{read_revisions, MvccStore, KV_BY_REV, META};
use crate::KvError;

/// Active alarms: `member id (8 bytes) ++ alarm type (4 bytes)`, big-endian.
pub(crate) const ALARMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("alarms");

/// A hash of the key space up to a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 over every stored version at or below `hash_revision`, in
    /// revision order and in key order within a revision: identical on
    /// members that applied the same log.
    pub hash: u32,
    pub hash_revision: i64,
    pub compact_revision: i64,
    pub current_revision: i64,
}

fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut out = member.to_be_bytes().to_vec();
    out.extend_from_slice(&alarm.to_be_bytes());
    out
}

fn decode_alarm(key: &[u8]) -> Result<AlarmMember, StorageError> {
    if key.len() != 12 {
        return Err(StorageError("corrupt alarm key".into()));
    }
    let member_id = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
    let alarm = i32::from_be_bytes(key[8..].try_into().unwrap_or_default());
    Ok(AlarmMember { member_id, alarm })
}

pub(crate) fn list_alarms(
    alarms: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<Vec<AlarmMember>, StorageError> {
    let mut out = Vec::new();
    for row in alarms.iter()? {
        out.push(decode_alarm(row?.0.value())?);
    }
    Ok(out)
}

/// Whether a NOSPACE alarm is active: writes that add data are then refused.
pub(crate) fn no_space(
    alarms: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<bool, StorageError> {
    Ok(list_alarms(alarms)?.iter().any(|a| a.alarm == AlarmType::Nospace as i32))
}

/// Applies an alarm change (ACTIVATE / DEACTIVATE; GET just lists).
pub(crate) fn apply_alarm(
    alarms: &mut Table<'_, &'static [u8], &'static [u8]>,
    req: &AlarmRequest,
) -> Result<AlarmResponse, KvError> {
    let action = AlarmAction::try_from(req.action)
        .map_err(|_| MvccError::InvalidRequest(format!("unknown alarm action {}", req.action)))?;
    let mut changed = Vec::new();
    match action {
        AlarmAction::Get => return Ok(AlarmResponse { header: None, alarms: list_alarms(alarms)? }),
        AlarmAction::Activate => {
            if req.alarm != AlarmType::None as i32 {
                alarms.insert(alarm_key(req.member_id, req.alarm).as_slice(), [].as_slice())?;
                changed.push(AlarmMember { member_id: req.member_id, alarm: req.alarm });
            }
        }
        AlarmAction::Deactivate => {
            let existed = alarms.remove(alarm_key(req.member_id, req.alarm).as_slice())?.is_some();
            if existed {
                changed.push(AlarmMember { member_id: req.member_id, alarm: req.alarm });
            }
        }
    }
    Ok(AlarmResponse { header: None, alarms: changed })
}

impl MvccStore {
    /// HashKV: the hash of every version at or below `revision` (0: the current).
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, KvError> {
        let txn = self.begin_read()?;
        let (current, compacted) = read_revisions(&txn.open_table(META)?)?;
        let at = if revision <= 0 { current } else { revision };
        if at > current {
            return Err(MvccError::FutureRevision.into());
        }
        if at < compacted {
            return Err(MvccError::Compacted.into());
        }
        let mut crc = crc32fast::Hasher::new();
        // Each revision's rows are hashed in key order with the revision, not
        // the sub-revision: stores moved from the legacy layout may number a
        // revision's changes differently on different members.
        let mut revision_rows: Vec<Vec<u8>> = Vec::new();
        let mut revision = None;
        let hash_revision = |crc: &mut crc32fast::Hasher, rev: u64, rows: &mut Vec<Vec<u8>>| {
            rows.sort_unstable_by(|a, b| {
                row_key_of(a).unwrap_or_default().cmp(row_key_of(b).unwrap_or_default())
            });
            for row in rows.drain(..) {
                crc.update(&rev.to_be_bytes());
                crc.update(&row);
            }
        };
        for row in txn.open_table(KV_BY_REV)?.range(..=rev_row(at as u64, u32::MAX))? {
            let (key, value) = row?;
            let (rev, _) = split_rev_row(key.value());
            row_key_of(value.value())?;
            if let Some(previous) = revision.filter(|&r| r != rev) {
                hash_revision(&mut crc, previous, &mut revision_rows);
            }
            revision = Some(rev);
            revision_rows.push(value.value().to_vec());
        }
        if let Some(last) = revision {
            hash_revision(&mut crc, last, &mut revision_rows);
        }
        Ok(KvHash {
            hash: crc.finalize(),
            hash_revision: at,
            compact_revision: compacted,
            current_revision: current,
        })
    }

    /// The active alarms.
    pub fn alarms(&self) -> Result<Vec<AlarmMember>, StorageError> {
        let txn = self.begin_read()?;
        list_alarms(&txn.open_table(ALARMS)?)
    }
}
