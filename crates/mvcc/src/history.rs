//! Reading past changes in revision order, for watchers that start in the past
//! or fell behind the in-memory window.

use etcd_proto::mvccpb::{event, Event, KeyValue};

use crate::encoding::{decode_keys, row_key, Version};
use crate::error::MvccError;
use crate::read::{key_value, live_at};
use crate::store::{read_revisions, MvccStore, KV, META, REVS};
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
        let txn = self.begin_read()?;
        let (current, compacted) = read_revisions(&txn.open_table(META)?)?;
        if from < compacted {
            return Err(MvccError::Compacted.into());
        }
        let to = to.min(current);
        let mut out = History { events: Vec::new(), next: from };
        if from > to {
            return Ok(out);
        }
        let kv = txn.open_table(KV)?;
        let revs = txn.open_table(REVS)?;
        for row in revs.range(from.max(0) as u64..=to as u64)? {
            let (rev, keys) = row?;
            let rev = rev.value();
            for key in decode_keys(keys.value())? {
                let Some(stored) = kv.get(row_key(&key, rev).as_slice())? else {
                    // A delete exactly at the compacted revision is compacted away.
                    continue;
                };
                let version = Version::decode(stored.value())?;
                let prev_kv = if rev > 1 { live_at(&kv, &key, rev - 1)? } else { None };
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
            out.next = rev as i64 + 1;
            if out.events.len() >= events_max {
                return Ok(out);
            }
        }
        out.next = to + 1;
        Ok(out)
    }
}
