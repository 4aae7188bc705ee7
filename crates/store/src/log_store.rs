//! The Raft log: the durable record of every write. Entries, the vote and the
//! committed id live in their own redb file, and every append is committed with
//! an fsync before openraft is told it is durable. openraft hands over every
//! entry that is waiting at once, so concurrent proposals share one fsync.

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

/// The log store. Cloned handles share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
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
        let db = Database::create(path).map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(ENTRIES).map_err(write_err)?;
        txn.open_table(STATE).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        Ok(LogStore { db: Arc::new(db) })
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
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(ENTRIES).map_err(read_err)?;
            let bounds: (Bound<u64>, Bound<u64>) = (range.start_bound().cloned(), range.end_bound().cloned());
            let mut out = Vec::new();
            for row in table.range(bounds).map_err(read_err)? {
                let (_, v) = row.map_err(read_err)?;
                out.push(decode::<Entry>(v.value())?);
            }
            Ok(out)
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        blocking(|| {
            let last_purged: Option<LogId> = self.get_state(KEY_LAST_PURGED)?;
            let last = self.last_entry_id()?.or(last_purged);
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
        let result = blocking(|| {
            let txn = self.db.begin_write().map_err(write_err)?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(write_err)?;
                let mut previous: Option<u64> = table.last().map_err(read_err)?.map(|(k, _)| k.value());
                for entry in entries {
                    let index = entry.log_id.index;
                    if let Some(prev) = previous {
                        assert!(index == prev + 1, "log indexes are contiguous: {prev} then {index}");
                    }
                    previous = Some(index);
                    table.insert(index, encode(&entry)?.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        });
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log");
        blocking(|| {
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
