//! Moves a Raft log kept by earlier versions (one redb file,
//! `raft-log.redb`) into the segment log (`raft-log/`), once, at start.
//!
//! The entries and the vote, committed id and purge point are copied byte for
//! byte (both formats hold bincode values) into a staging directory, which is
//! renamed into place: the rename is the commit point, so a crash part way
//! leaves the old file in charge and the next start does it again.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use wal::{meta, Wal, WalOptions};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// The old state keys and the files that now hold them.
const STATE_FILES: [(&str, &str); 3] =
    [("vote", "vote"), ("committed", "committed"), ("last_purged", "purged")];
/// Entries copied per append.
const CHUNK_ENTRIES: usize = 4096;

pub const OLD_FILE: &str = "raft-log.redb";

#[derive(Debug, thiserror::Error)]
#[error("moving the raft log from {OLD_FILE} to the segment log: {0}")]
pub struct MigrateError(String);

fn fail(e: impl std::fmt::Display) -> MigrateError {
    MigrateError(e.to_string())
}

/// Migrates `data_dir/raft-log.redb` into `log_dir` if there is one to move.
/// Returns how many entries were moved.
pub fn migrate(data_dir: &Path, log_dir: &Path) -> Result<Option<u64>, MigrateError> {
    let old = data_dir.join(OLD_FILE);
    if !old.exists() {
        return Ok(None);
    }
    if log_dir.exists() {
        // Renamed into place before a crash: only the removal was left.
        std::fs::remove_file(&old).map_err(fail)?;
        return Ok(None);
    }
    let staging = log_dir.with_extension("migrating");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(fail)?;
    }
    let db = redb::Database::open(&old).map_err(fail)?;
    let txn = db.begin_read().map_err(fail)?;
    let (mut wal, _) = Wal::open(&staging, WalOptions::default()).map_err(fail)?;
    let mut moved = 0u64;
    let entries = txn.open_table(ENTRIES).map_err(fail)?;
    let mut chunk: Vec<(u64, Vec<u8>)> = Vec::with_capacity(CHUNK_ENTRIES);
    let mut rows = entries.iter().map_err(fail)?.peekable();
    while rows.peek().is_some() {
        chunk.clear();
        for row in rows.by_ref().take(CHUNK_ENTRIES) {
            let (index, bytes) = row.map_err(fail)?;
            chunk.push((index.value(), bytes.value().to_vec()));
        }
        wal.append(chunk.iter().map(|(i, b)| (*i, b.as_slice()))).map_err(fail)?;
        moved += chunk.len() as u64;
    }
    wal.sync().map_err(fail)?;
    let state = txn.open_table(STATE).map_err(fail)?;
    for (key, file) in STATE_FILES {
        if let Some(bytes) = state.get(key).map_err(fail)? {
            meta::write(&staging.join(file), bytes.value(), true).map_err(fail)?;
        }
    }
    drop(rows);
    drop((wal, state, entries, txn, db));
    std::fs::rename(&staging, log_dir).map_err(fail)?;
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(fail)?;
    std::fs::remove_file(&old).map_err(fail)?;
    tracing::info!(entries = moved, "moved the raft log from {OLD_FILE} to the segment log");
    Ok(Some(moved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_store::LogStore;
    use crate::types::{Entry, LogId, Vote};
    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

    fn entry(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(2, 1), index), payload: EntryPayload::Blank }
    }

    /// Writes a log the way earlier versions did: one redb file.
    fn write_old_log(path: &Path, entries: std::ops::RangeInclusive<u64>, vote: &Vote, purged: &LogId) {
        let db = redb::Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ENTRIES).unwrap();
            for index in entries {
                table.insert(index, bincode::serialize(&entry(index)).unwrap().as_slice()).unwrap();
            }
            let mut state = txn.open_table(STATE).unwrap();
            state.insert("vote", bincode::serialize(vote).unwrap().as_slice()).unwrap();
            state.insert("last_purged", bincode::serialize(purged).unwrap().as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_old_redb_log_moves_to_the_segment_log_whole() {
        let data = tempfile::tempdir().unwrap();
        let log_dir = data.path().join("raft-log");
        let vote = Vote::new_committed(2, 1);
        let purged = LogId::new(CommittedLeaderId::new(1, 1), 9);
        write_old_log(&data.path().join(OLD_FILE), 10..=5_000, &vote, &purged);
        // A crash during an earlier attempt left a staging directory behind.
        std::fs::create_dir_all(log_dir.with_extension("migrating")).unwrap();
        std::fs::write(log_dir.with_extension("migrating").join("junk"), b"x").unwrap();

        assert_eq!(migrate(data.path(), &log_dir).unwrap(), Some(4_991));
        assert!(!data.path().join(OLD_FILE).exists(), "the old file is gone once moved");
        assert!(!log_dir.with_extension("migrating").exists());
        assert_eq!(migrate(data.path(), &log_dir).unwrap(), None, "nothing to move twice");

        let mut log = LogStore::open(&log_dir).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(purged));
        assert_eq!(state.last_log_id, Some(entry(5_000).log_id));
        let entries = log.try_get_log_entries(10..=5_000).await.unwrap();
        assert_eq!(entries.len(), 4_991);
        assert!(entries.iter().zip(10..).all(|(e, i)| *e == entry(i)));
    }

    #[test]
    fn a_finished_move_whose_removal_was_cut_short_only_removes() {
        let data = tempfile::tempdir().unwrap();
        let log_dir = data.path().join("raft-log");
        std::fs::create_dir_all(&log_dir).unwrap();
        std::fs::write(data.path().join(OLD_FILE), b"stale").unwrap();
        assert_eq!(migrate(data.path(), &log_dir).unwrap(), None);
        assert!(!data.path().join(OLD_FILE).exists());
    }
}
