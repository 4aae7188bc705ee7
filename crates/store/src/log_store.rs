//! The Raft log: the durable record of every write. Entries, the vote and the
//! committed id live in their own redb file, and an append is reported to
//! openraft as flushed only once it is committed with an fsync.
//!
//! Group commit: appends go to one writer thread, which takes every append
//! waiting for it into one engine transaction and one fsync, then reports each
//! as flushed. Until then the entries stay readable from memory (`pending`),
//! because openraft replicates them to followers while they are written here.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// The log's page cache: replication reads recent entries, which are small
/// and mostly still in `pending` or the OS page cache.
const LOG_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Appends one writer transaction may take, at most.
const GROUP_COMMIT_APPENDS_MAX: usize = 1024;

/// Work for the writer thread, in the order openraft asked for it.
enum Write {
    Append(Vec<Entry>, LogFlushed<TypeConfig>),
    /// Waits until everything sent before it is durable.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// The log store. Cloned handles share the database, the writer and the
/// entries not yet durable.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    writer: std::sync::mpsc::Sender<Write>,
    /// Appended but not yet committed: index → entry.
    pending: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Entry>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the raft log writer stopped")]
struct WriterGone;

/// The writer thread: one transaction and one fsync for every append waiting.
/// Runs until every `LogStore` handle is dropped.
fn write_loop(
    db: &Database,
    pending: &std::sync::Mutex<std::collections::BTreeMap<u64, Entry>>,
    queue: &std::sync::mpsc::Receiver<Write>,
) {
    while let Ok(first) = queue.recv() {
        let mut appends = Vec::new();
        let mut barriers = Vec::new();
        let mut next = Some(first);
        while let Some(write) = next.take() {
            match write {
                Write::Append(entries, callback) => appends.push((entries, callback)),
                Write::Barrier(done) => barriers.push(done),
            }
            if appends.len() < GROUP_COMMIT_APPENDS_MAX {
                next = queue.try_recv().ok();
            }
        }
        let result = commit_appends(db, &appends);
        if result.is_ok() {
            let mut pending = pending.lock().expect("pending log lock");
            for (entries, _) in &appends {
                for entry in entries {
                    // A later truncate may have replaced this index: drop only what was written.
                    if pending.get(&entry.log_id.index).is_some_and(|e| e.log_id == entry.log_id) {
                        pending.remove(&entry.log_id.index);
                    }
                }
            }
        }
        for (_, callback) in appends {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(outcome);
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "raft log append failed; stopping the log writer");
            return;
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

fn commit_appends(
    db: &Database,
    appends: &[(Vec<Entry>, LogFlushed<TypeConfig>)],
) -> Result<(), StorageError> {
    if appends.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write().map_err(write_err)?;
    {
        let mut table = txn.open_table(ENTRIES).map_err(write_err)?;
        for (entries, _) in appends {
            for entry in entries {
                table.insert(entry.log_id.index, encode(entry)?.as_slice()).map_err(write_err)?;
            }
        }
    }
    txn.commit().map_err(write_err)
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(value).map_err(write_err)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    bincode::deserialize(bytes).map_err(read_err)
}

/// Runs blocking engine IO without stalling the other tasks of this worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        let db = Database::builder().set_cache_size(LOG_CACHE_BYTES).create(path).map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(ENTRIES).map_err(write_err)?;
        txn.open_table(STATE).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        let db = Arc::new(db);
        let pending = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let (writer, queue) = std::sync::mpsc::channel();
        let (thread_db, thread_pending) = (db.clone(), pending.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&thread_db, &thread_pending, &queue))
            .map_err(write_err)?;
        Ok(LogStore { db, writer, pending })
    }

    /// Waits until every append handed to the writer so far is durable.
    fn flush(&self) -> Result<(), StorageError> {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        self.writer.send(Write::Barrier(done_tx)).map_err(|_| write_err(WriterGone))?;
        done_rx.recv().map_err(|_| write_err(WriterGone))
    }

    fn get_state<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(STATE).map_err(read_err)?;
        let value = table.get(key).map_err(read_err)?;
        value.map(|v| decode(v.value())).transpose()
    }

    fn put_state<T: Serialize>(&self, key: &str, value: &T, durable: bool) -> Result<(), StorageError> {
        let bytes = encode(value)?;
        let mut txn = self.db.begin_write().map_err(write_err)?;
        if !durable {
            txn.set_durability(Durability::None).map_err(write_err)?;
        }
        txn.open_table(STATE).map_err(write_err)?.insert(key, bytes.as_slice()).map_err(write_err)?;
        txn.commit().map_err(write_err)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(ENTRIES).map_err(read_err)?;
        let last = table.last().map_err(read_err)?;
        match last {
            None => Ok(None),
            Some((_, v)) => Ok(Some(decode::<Entry>(v.value())?.log_id)),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        blocking(|| {
            let bounds: (Bound<u64>, Bound<u64>) = (range.start_bound().cloned(), range.end_bound().cloned());
            // Pending first: an entry leaves `pending` only after it is in the
            // engine, so reading in this order never misses one.
            let pending: Vec<Entry> = self
                .pending
                .lock()
                .expect("pending log lock")
                .range(bounds)
                .map(|(_, e)| e.clone())
                .collect();
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(ENTRIES).map_err(read_err)?;
            let mut out: std::collections::BTreeMap<u64, Entry> = std::collections::BTreeMap::new();
            for row in table.range(bounds).map_err(read_err)? {
                let (k, v) = row.map_err(read_err)?;
                out.insert(k.value(), decode::<Entry>(v.value())?);
            }
            for entry in pending {
                out.insert(entry.log_id.index, entry);
            }
            Ok(out.into_values().collect())
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        blocking(|| {
            let last_purged: Option<LogId> = self.get_state(KEY_LAST_PURGED)?;
            let last_pending =
                self.pending.lock().expect("pending log lock").values().next_back().map(|e| e.log_id);
            let last = last_pending.or(self.last_entry_id()?).or(last_purged);
            Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        blocking(|| self.put_state(KEY_VOTE, vote, true))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        blocking(|| self.get_state(KEY_VOTE))
    }

    /// The committed id need not be durable: it only lets a restarted member
    /// apply committed entries before it hears from a leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        blocking(|| self.put_state(KEY_COMMITTED, &committed, false))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        blocking(|| Ok(self.get_state::<Option<LogId>>(KEY_COMMITTED)?.flatten()))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut pending = self.pending.lock().expect("pending log lock");
            for entry in &entries {
                let index = entry.log_id.index;
                if let Some((last, _)) = pending.iter().next_back() {
                    assert!(index == last + 1, "log indexes are contiguous: {last} then {index}");
                }
                pending.insert(index, entry.clone());
            }
        }
        self.writer.send(Write::Append(entries, callback)).map_err(|_| write_err(WriterGone))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log");
        blocking(|| {
            self.flush()?;
            self.pending.lock().expect("pending log lock").retain(|index, _| *index < log_id.index);
            let txn = self.db.begin_write().map_err(write_err)?;
            txn.open_table(ENTRIES)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging the log");
        blocking(|| {
            self.flush()?;
            let txn = self.db.begin_write().map_err(write_err)?;
            {
                let mut state = txn.open_table(STATE).map_err(write_err)?;
                state.insert(KEY_LAST_PURGED, encode(&log_id)?.as_slice()).map_err(write_err)?;
                let mut table = txn.open_table(ENTRIES).map_err(write_err)?;
                table.retain_in(..=log_id.index, |_, _| false).map_err(write_err)?;
            }
            txn.commit().map_err(write_err)
        })
    }
}
