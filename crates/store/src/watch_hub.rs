//! The watch hub: the recent changes, kept in memory for watchers, and the
//! applied revision they follow.
//!
//! Pull, not push: apply appends a revision's events here and bumps the
//! published revision; each watch stream reads what it has not sent yet, from
//! here while the window still holds it, from disk (`MvccStore::history`)
//! after that. Apply never waits for a watcher, and a slow watcher only falls
//! back to disk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use etcd_proto::mvccpb::Event;
use tokio::sync::watch;

/// Events kept in memory for watchers that are close to the head.
pub const WATCH_WINDOW_EVENTS_MAX: usize = 65_536;
/// Bytes of keys and values those events may hold: with large values the
/// window is bounded by this, not by the event count (65,536 events of
/// 64 KiB values would be 4 GiB).
pub const WATCH_WINDOW_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What an event keeps in memory, roughly: its keys and values.
fn event_bytes(event: &Event) -> usize {
    const OVERHEAD: usize = 64;
    let kv_bytes =
        |kv: &Option<etcd_proto::mvccpb::KeyValue>| kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len());
    OVERHEAD + kv_bytes(&event.kv) + kv_bytes(&event.prev_kv)
}

/// One revision's events, shared by every watcher that reads them.
pub type RevisionEvents = (i64, Arc<[Event]>);

struct Window {
    revisions: VecDeque<RevisionEvents>,
    events: usize,
    bytes: usize,
    /// The window holds every change of every revision from here on.
    complete_from: i64,
    /// The store's compacted revision: history below it is gone for watchers,
    /// even where the window still holds it (as etcd answers).
    compacted: i64,
}

pub struct WatchHub {
    window: Mutex<Window>,
    published: watch::Sender<i64>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub").field("published", &*self.published.borrow()).finish()
    }
}

impl WatchHub {
    /// A hub for a store whose applied revision is `revision`.
    pub fn new(revision: i64) -> WatchHub {
        let window = Window {
            revisions: VecDeque::new(),
            events: 0,
            bytes: 0,
            complete_from: revision + 1,
            compacted: i64::MIN,
        };
        WatchHub { window: Mutex::new(window), published: watch::Sender::new(revision) }
    }

    /// The revision every published change is at or below.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.published.subscribe()
    }

    pub fn revision(&self) -> i64 {
        *self.published.borrow()
    }

    /// Publishes the events of a committed batch (revision order), the store
    /// revision after it and the compacted revision.
    pub fn publish(&self, events: Vec<Event>, revision: i64, compacted: i64) {
        {
            let mut window = self.window.lock().expect("watch window lock");
            window.compacted = compacted;
            let mut events = events.into_iter().peekable();
            while let Some(first) = events.next() {
                let rev = first.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                let mut group = vec![first];
                while events.peek().is_some_and(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision) == rev) {
                    group.extend(events.next());
                }
                if let Some((last, _)) = window.revisions.back() {
                    assert!(rev > *last, "watch events are published in revision order");
                }
                window.events += group.len();
                window.bytes += group.iter().map(event_bytes).sum::<usize>();
                window.revisions.push_back((rev, group.into()));
            }
            while window.events > WATCH_WINDOW_EVENTS_MAX || window.bytes > WATCH_WINDOW_BYTES_MAX {
                let Some((rev, events)) = window.revisions.pop_front() else { break };
                window.events -= events.len();
                window.bytes -= events.iter().map(event_bytes).sum::<usize>();
                window.complete_from = rev + 1;
            }
        }
        let before = self.published.send_replace(revision);
        assert!(revision >= before, "the published revision never goes back");
    }

    /// Forgets the window after the state was replaced by a snapshot.
    pub fn reset(&self, revision: i64, compacted: i64) {
        {
            let mut window = self.window.lock().expect("watch window lock");
            window.compacted = compacted;
            window.revisions.clear();
            window.events = 0;
            window.bytes = 0;
            window.complete_from = revision + 1;
        }
        self.published.send_replace(revision);
    }

    /// The compacted revision last published.
    pub fn compacted(&self) -> i64 {
        self.window.lock().expect("watch window lock").compacted
    }

    /// The changes from revision `from` up to `to`, whole revisions, stopping
    /// after the revision that reaches `events_max` events; and the last
    /// revision covered. `Ok(None)` means the window no longer holds `from`:
    /// read from disk. `Err(compacted)`: `from` is below the compacted revision.
    pub fn window(
        &self,
        from: i64,
        to: i64,
        events_max: usize,
    ) -> Result<Option<(Vec<RevisionEvents>, i64)>, i64> {
        let window = self.window.lock().expect("watch window lock");
        if from < window.compacted {
            return Err(window.compacted);
        }
        if from < window.complete_from {
            return Ok(None);
        }
        let start = window.revisions.partition_point(|(rev, _)| *rev < from);
        let mut out = Vec::new();
        let mut events = 0;
        for (rev, revision_events) in window.revisions.iter().skip(start).take_while(|(rev, _)| *rev <= to) {
            events += revision_events.len();
            out.push((*rev, revision_events.clone()));
            if events >= events_max {
                return Ok(Some((out, *rev)));
            }
        }
        Ok(Some((out, to)))
    }
}

#[cfg(test)]
mod tests {
    use etcd_proto::mvccpb::KeyValue;

    use super::*;

    fn event(rev: i64) -> Event {
        Event {
            kv: Some(KeyValue { key: b"k".to_vec(), mod_revision: rev, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn window_serves_what_it_holds_and_refers_older_reads_to_disk() {
        let hub = WatchHub::new(1);
        hub.publish(vec![event(2), event(2), event(3)], 3, -1);
        assert_eq!(hub.revision(), 3);
        let (got, reached) = hub.window(2, 3, 100).unwrap().unwrap();
        assert_eq!(got.iter().map(|(r, e)| (*r, e.len())).collect::<Vec<_>>(), [(2, 2), (3, 1)]);
        assert_eq!(reached, 3);
        // Whole revisions only, capped by events.
        let (got, reached) = hub.window(2, 3, 1).unwrap().unwrap();
        assert_eq!((got.len(), got[0].1.len(), reached), (1, 2, 2));
        assert_eq!(hub.window(3, 3, 100).unwrap().unwrap().0.len(), 1);
        assert!(hub.window(1, 3, 100).unwrap().is_none(), "revision 1 predates the hub");
        // Compaction hides history the window still holds.
        hub.publish(Vec::new(), 3, 3);
        assert_eq!(hub.window(2, 3, 100), Err(3));
        let many: Vec<Event> = (4..4 + WATCH_WINDOW_EVENTS_MAX as i64).map(event).collect();
        hub.publish(many, 3 + WATCH_WINDOW_EVENTS_MAX as i64, 3);
        assert!(hub.window(3, 10, 100).unwrap().is_none(), "evicted revisions are read from disk");
        assert!(hub.window(4, 10, 100).unwrap().is_some(), "the newest revisions stay");
        // Large values: the byte bound evicts long before the event count.
        let value_bytes = 1024 * 1024;
        let big = |rev: i64| Event {
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                value: vec![1; value_bytes],
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        };
        let first = 4 + WATCH_WINDOW_EVENTS_MAX as i64;
        let count = (2 * WATCH_WINDOW_BYTES_MAX / value_bytes) as i64;
        hub.publish((first..first + count).map(big).collect(), first + count - 1, 3);
        let held = hub.window.lock().unwrap().bytes;
        assert!(held <= WATCH_WINDOW_BYTES_MAX, "the window holds {held} bytes");
        assert!(hub.window(first, first, 100).unwrap().is_none(), "the oldest large revisions went to disk");
        assert!(hub.window(first + count - 1, first + count - 1, 100).unwrap().is_some());
        hub.reset(100_000, 3);
        assert!(hub.window(99_999, 100_000, 100).unwrap().is_none());
        assert_eq!(hub.window(100_001, 100_001, 100).unwrap().unwrap().0.len(), 0);
    }
}
