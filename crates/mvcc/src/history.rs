//! Reading past changes in revision order, for watchers that start in the past
//! or fell behind the in-memory window.

use etcd_proto::mvccpb::{event, Event, KeyValue};

use crate::encoding::{decode_row, rev_row, split_rev_row};
use crate::error::MvccError;
use crate::read::{key_value, Source};
use crate::store::{read_revisions, MvccStore, KV_BY_REV, META};
use crate::KvError;

/// Changes read from disk.
#[derive(Debug, Default)]
pub struct History {
    /// Events in revision order, each with its previous key-value when one exists.
    pub events: Vec<Event>,
    /// The first revision not covered: read from here next time.
    pub next: i64,
}

impl MvccStore {
    /// The events of revisions `from..=to`, whole revisions only: stops after the
    /// revision that reaches `events_max` (so one revision is never split).
    /// `from` below the compacted revision fails with `Compacted`.
    pub fn history(&self, from: i64, to: i64, events_max: usize) -> Result<History, KvError> {
        let pair = self.read_pair()?;
        let txn = &pair.txn;
        let (current, compacted) = read_revisions(&txn.open_table(META)?)?;
        if from < compacted {
            return Err(MvccError::Compacted.into());
        }
        let to = to.min(current);
        let mut out = History { events: Vec::new(), next: from };
        if from > to || to < 1 {
            return Ok(out);
        }
        let rows = txn.open_table(KV_BY_REV)?;
        let src = Source { rows: &rows, index: &pair.index, ceiling: current as u64 };
        let mut last_rev = None;
        for row in rows.range(rev_row(from.max(0) as u64, 0)..=rev_row(to as u64, u32::MAX))? {
            let (row_key, stored) = row?;
            let (rev, _) = split_rev_row(row_key.value());
            if last_rev.is_some_and(|last| last != rev) && out.events.len() >= events_max {
                // Whole revisions only: the one before this is complete.
                return Ok(out);
            }
            last_rev = Some(rev);
            out.next = rev as i64 + 1;
            let (key, version) = decode_row(stored.value())?;
            let prev_kv = if rev > 1 { src.live_at(&key, rev - 1)? } else { None };
            let event = if version.tombstone {
                let kv = KeyValue { key, mod_revision: rev as i64, ..Default::default() };
                Event { r#type: event::EventType::Delete as i32, kv: Some(kv), prev_kv }
            } else {
                Event {
                    r#type: event::EventType::Put as i32,
                    kv: Some(key_value(key, rev, version)),
                    prev_kv,
                }
            };
            out.events.push(event);
        }
        out.next = to + 1;
        Ok(out)
    }
}
