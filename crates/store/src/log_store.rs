//! The Raft log: the durable record of every write, kept in the `wal` crate's
//! segment files (directory `raft-log/`). Entries are bincode-encoded openraft
//! entries; beside them live the vote (replaced durably), the purge point
//! (replaced durably before any segment is deleted) and the committed id
//! (replaced lazily: it only saves a restarted member some waiting).
//!
//! Group commit: appends go to one writer thread, which writes every append
//! waiting for it with one `pwrite` and one `fdatasync`, then reports each to
//! openraft as flushed. Until then the entries are readable from memory
//! (`Recent`), because openraft replicates them to followers while they are
//! written here; after, the newest `RECENT_BYTES_MAX` of them stay there, so
//! replication to a follower a little behind reads no file and decodes
//! nothing. Truncate and purge go through the same thread, in order.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wal::{meta, Wal, WalOptions, WalReader};

use crate::metrics::StoreMetrics;
use crate::types::{payload_bytes, Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const PURGED_FILE: &str = "purged";

/// Appends one group commit may take, at most.
const GROUP_COMMIT_APPENDS_MAX: usize = 1024;

/// Encoded bytes of durable entries kept in memory for replication.
const RECENT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Payload bytes one AppendEntries carries at most (at least one entry is
/// always sent): the reader openraft replicates from stops there. openraft
/// bounds a message by entry count only; with large values a count-sized
/// message is read whole from disk and cannot cross the wire within the RPC
/// timeout (a heartbeat interval), so a lagging follower would never catch up.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 2 * 1024 * 1024;

/// How often, at most, the writer replaces the committed-id file.
const COMMITTED_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

type Done = SyncSender<Result<(), String>>;

/// Work for the writer thread, in the order openraft asked for it.
enum Write {
    Append(Vec<Entry>, LogFlushed<TypeConfig>),
    /// Answered on `Done` once carried out.
    Change(Change, Done),
}

/// What the writer does to the log besides appending.
enum Change {
    /// Removes every entry from this index on.
    Truncate(u64),
    /// Records the purge point durably, then drops what it covers.
    Purge(LogId),
}

/// The log store. Cloned handles share the reader, the writer and the
/// entries not yet durable.
#[derive(Clone)]
pub struct LogStore {
    dir: PathBuf,
    reader: WalReader,
    writer: Sender<Write>,
    /// The newest entries, durable or not.
    recent: Arc<Mutex<Recent>>,
    /// The purge point, as last recorded.
    purged: Arc<Mutex<Option<LogId>>>,
    /// The committed id openraft last reported; the writer persists it.
    committed: Arc<Mutex<Option<LogId>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the raft log writer stopped")]
struct WriterGone;

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(value).map_err(write_err)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    bincode::deserialize(bytes).map_err(read_err)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("raft log lock")
}

/// Runs blocking IO without stalling the other tasks of this worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn read_meta<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, StorageError> {
    meta::read(&dir.join(name)).map_err(read_err)?.map(|bytes| decode(&bytes)).transpose()
}

fn write_meta<T: Serialize>(dir: &Path, name: &str, value: &T, durable: bool) -> Result<(), StorageError> {
    meta::write(&dir.join(name), &encode(value)?, durable).map_err(write_err)
}

struct Cached {
    entry: Entry,
    /// Encoded size once durable; `None` while it is being written.
    durable_bytes: Option<usize>,
}

/// The newest entries: everything appended and not yet durable, then the
/// newest durable ones up to `RECENT_BYTES_MAX`. Contiguous by index.
#[derive(Default)]
struct Recent {
    entries: BTreeMap<u64, Cached>,
    durable_bytes: usize,
}

impl Recent {
    fn append(&mut self, entries: &[Entry]) {
        for entry in entries {
            let index = entry.log_id.index;
            if let Some((last, _)) = self.entries.iter().next_back() {
                assert!(index == last + 1, "log indexes are contiguous: {last} then {index}");
            }
            self.entries.insert(index, Cached { entry: entry.clone(), durable_bytes: None });
        }
    }

    /// `log_id` is durable, `bytes` long. A later truncate may have replaced
    /// its index: only the entry that was written counts.
    fn made_durable(&mut self, log_id: LogId, bytes: usize) {
        if let Some(cached) = self.entries.get_mut(&log_id.index) {
            if cached.entry.log_id == log_id && cached.durable_bytes.is_none() {
                cached.durable_bytes = Some(bytes);
                self.durable_bytes += bytes;
            }
        }
    }

    /// Drops the oldest durable entries beyond the memory budget.
    fn evict(&mut self) {
        while self.durable_bytes > RECENT_BYTES_MAX {
            let (_, oldest) = self.entries.pop_first().expect("durable bytes come from entries");
            let bytes = oldest.durable_bytes.expect("entries become durable oldest first");
            self.durable_bytes -= bytes;
        }
    }

    fn truncate(&mut self, from: u64) {
        for (_, gone) in self.entries.split_off(&from) {
            self.durable_bytes -= gone.durable_bytes.unwrap_or(0);
        }
    }

    fn purge(&mut self, to: u64) {
        let kept = self.entries.split_off(&(to + 1));
        for (_, gone) in std::mem::replace(&mut self.entries, kept) {
            self.durable_bytes -= gone.durable_bytes.unwrap_or(0);
        }
    }

    fn range(&self, from: u64, to: u64) -> Vec<Entry> {
        self.entries.range(from..to).map(|(_, c)| c.entry.clone()).collect()
    }

    /// The first cached index in `from..to`.
    fn first_in(&self, from: u64, to: u64) -> Option<u64> {
        self.entries.range(from..to).next().map(|(index, _)| *index)
    }

    fn last(&self) -> Option<LogId> {
        self.entries.values().next_back().map(|c| c.entry.log_id)
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    wal: Wal,
    metrics: Arc<StoreMetrics>,
    recent: Arc<Mutex<Recent>>,
    purged: Arc<Mutex<Option<LogId>>>,
    committed: Arc<Mutex<Option<LogId>>>,
    committed_written: Option<LogId>,
    committed_written_at: Instant,
    buf: Vec<Vec<u8>>,
}

impl Writer {
    /// Runs until every `LogStore` handle is dropped, or the disk fails.
    fn run(mut self, queue: &Receiver<Write>) {
        loop {
            let first = match queue.recv_timeout(COMMITTED_PERSIST_INTERVAL) {
                Ok(write) => write,
                Err(RecvTimeoutError::Timeout) => {
                    self.persist_committed(true);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Err(e) = self.serve(first, queue) {
                tracing::error!(error = %e, "raft log write failed; stopping the log writer");
                return;
            }
            self.persist_committed(false);
        }
        self.persist_committed(true);
    }

    /// Serves `first` and, when it is an append, every append queued behind
    /// it (one write, one sync), then what stopped the group.
    fn serve(&mut self, first: Write, queue: &Receiver<Write>) -> Result<(), StorageError> {
        let mut appends = Vec::new();
        let mut next = Some(first);
        while let Some(write) = next.take() {
            match write {
                Write::Append(entries, callback) => {
                    appends.push((entries, callback));
                    if appends.len() < GROUP_COMMIT_APPENDS_MAX {
                        next = queue.try_recv().ok();
                    }
                }
                Write::Change(change, done) => {
                    self.commit(std::mem::take(&mut appends))?;
                    self.change(change, done)?;
                }
            }
        }
        self.commit(appends)
    }

    fn commit(&mut self, appends: Vec<(Vec<Entry>, LogFlushed<TypeConfig>)>) -> Result<(), StorageError> {
        if appends.is_empty() {
            return Ok(());
        }
        let outcome = self.write_and_sync(&appends);
        if outcome.is_ok() {
            let mut recent = lock(&self.recent);
            let written = appends.iter().flat_map(|(entries, _)| entries);
            for (entry, encoded) in written.zip(&self.buf) {
                recent.made_durable(entry.log_id, encoded.len());
            }
            recent.evict();
        }
        for (_, callback) in appends {
            let reported = outcome.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(reported);
        }
        outcome
    }

    fn write_and_sync(
        &mut self,
        appends: &[(Vec<Entry>, LogFlushed<TypeConfig>)],
    ) -> Result<(), StorageError> {
        self.buf.clear();
        let mut indexes = Vec::new();
        for entry in appends.iter().flat_map(|(entries, _)| entries) {
            self.buf.push(encode(entry)?);
            indexes.push(entry.log_id.index);
        }
        let records = indexes.iter().copied().zip(self.buf.iter().map(Vec::as_slice));
        self.wal.append(records).map_err(write_err)?;
        let started = Instant::now();
        let synced = self.wal.sync().map_err(write_err);
        self.metrics.wal_fsync.observe(started.elapsed());
        synced
    }

    fn change(&mut self, change: Change, done: Done) -> Result<(), StorageError> {
        let outcome = match change {
            Change::Truncate(index) => {
                let outcome = self.wal.truncate_from(index).map_err(write_err);
                if outcome.is_ok() {
                    lock(&self.recent).truncate(index);
                }
                outcome
            }
            Change::Purge(log_id) => {
                let started = Instant::now();
                let outcome = write_meta(&self.dir, PURGED_FILE, &log_id, true)
                    .and_then(|()| self.wal.purge_to(log_id.index).map_err(write_err));
                tracing::debug!(to = log_id.index, took = ?started.elapsed(), "raft log purged");
                if outcome.is_ok() {
                    *lock(&self.purged) = Some(log_id);
                    lock(&self.recent).purge(log_id.index);
                }
                outcome
            }
        };
        let _ = done.send(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        outcome
    }

    /// Replaces the committed-id file when it changed, at most once per
    /// `COMMITTED_PERSIST_INTERVAL` unless `now`. Failing is harmless (the
    /// id is an optimisation), so it is logged, not returned.
    fn persist_committed(&mut self, now: bool) {
        let committed = *lock(&self.committed);
        if committed == self.committed_written
            || (!now && self.committed_written_at.elapsed() < COMMITTED_PERSIST_INTERVAL)
        {
            return;
        }
        match write_meta(&self.dir, COMMITTED_FILE, &committed, false) {
            Ok(()) => {
                self.committed_written = committed;
                self.committed_written_at = Instant::now();
            }
            Err(e) => tracing::warn!(error = %e, "could not record the committed log id"),
        }
    }
}

impl LogStore {
    /// Opens the log in `dir` (created if missing), checking every record.
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        LogStore::open_with_metrics(dir, Arc::default())
    }

    /// Same as [`LogStore::open`], timing each `fdatasync` into `metrics`.
    pub fn open_with_metrics(dir: &Path, metrics: Arc<StoreMetrics>) -> Result<LogStore, StorageError> {
        let (mut wal, recovered) = Wal::open(dir, WalOptions::default()).map_err(read_err)?;
        let purged: Option<LogId> = read_meta(dir, PURGED_FILE)?;
        if let Some(purged) = purged {
            wal.purge_to(purged.index).map_err(write_err)?;
        }
        // Only an optimisation: a damaged file (it is replaced without fsync) is ignored.
        let committed: Option<LogId> =
            read_meta::<Option<LogId>>(dir, COMMITTED_FILE).ok().flatten().flatten();
        tracing::info!(
            dir = %dir.display(), segments = recovered.segments, first = ?recovered.first_index,
            last = ?recovered.last_index, torn_bytes = recovered.torn_bytes, ?purged, "raft log opened"
        );
        let (writer, queue) = mpsc::channel();
        let store = LogStore {
            dir: dir.to_path_buf(),
            reader: wal.reader(),
            writer,
            recent: Arc::default(),
            purged: Arc::new(Mutex::new(purged)),
            committed: Arc::new(Mutex::new(committed)),
        };
        let thread = Writer {
            dir: dir.to_path_buf(),
            wal,
            metrics,
            recent: store.recent.clone(),
            purged: store.purged.clone(),
            committed: store.committed.clone(),
            committed_written: committed,
            committed_written_at: Instant::now(),
            buf: Vec::new(),
        };
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || thread.run(&queue))
            .map_err(write_err)?;
        Ok(store)
    }

    /// Has the writer carry out `change` after what it was sent before, and
    /// waits for it.
    fn ask(&self, change: Change) -> Result<(), StorageError> {
        let (done, answer) = mpsc::sync_channel(1);
        self.writer.send(Write::Change(change, done)).map_err(|_| write_err(WriterGone))?;
        answer.recv().map_err(|_| write_err(WriterGone))?.map_err(write_err)
    }

    fn last_durable_id(&self) -> Result<Option<LogId>, StorageError> {
        let Some((_, last)) = self.reader.bounds() else { return Ok(None) };
        let bytes = self.reader.get(last).map_err(read_err)?;
        Ok(Some(decode::<Entry>(&bytes)?.log_id))
    }
}

/// `[from, to)` of a range of indexes.
fn half_open(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = half_open(&range);
        if from >= to {
            return Ok(Vec::new());
        }
        // Memory first: an entry leaves `recent` only after it is readable
        // from the log, so reading in this order never misses one.
        let cached: Vec<Entry> = lock(&self.recent).range(from, to);
        let first_cached = cached.first().map_or(to, |e| e.log_id.index);
        let mut out = Vec::new();
        if from < first_cached {
            let records = blocking(|| self.reader.read(from, first_cached)).map_err(read_err)?;
            for (index, bytes) in records {
                let entry: Entry = decode(&bytes)?;
                assert_eq!(entry.log_id.index, index, "a log record holds the entry of its index");
                out.push(entry);
            }
        }
        out.extend(cached);
        Ok(out)
    }

    /// What replication sends: a prefix of `start..end` within
    /// `APPEND_ENTRIES_BYTES_MAX`, read from disk only as far as it goes.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let budget = APPEND_ENTRIES_BYTES_MAX;
        let first_cached = lock(&self.recent).first_in(start, end).unwrap_or(end);
        let mut out = Vec::new();
        let mut bytes = 0;
        if start < first_cached {
            out = self.read_from_disk(start, first_cached, budget)?;
            bytes = out.iter().map(payload_bytes).sum();
            let reaches_cache = out.last().is_some_and(|e| e.log_id.index + 1 == first_cached);
            if !reaches_cache || bytes >= budget {
                return Ok(starting_at(start, out));
            }
        }
        // The rest from memory, continuing exactly where the disk part ended.
        // An entry leaves `recent` only once readable from disk, so one
        // evicted meanwhile is simply not sent this time...
        {
            let recent = lock(&self.recent);
            for (index, cached) in recent.entries.range(first_cached.max(start)..end) {
                let next = out.last().map_or(start, |e: &Entry| e.log_id.index + 1);
                if *index != next {
                    break;
                }
                let size = payload_bytes(&cached.entry);
                if !out.is_empty() && bytes + size > budget {
                    break;
                }
                bytes += size;
                out.push(cached.entry.clone());
            }
        }
        // ...unless that left nothing: then it all comes from disk.
        if out.is_empty() {
            out = self.read_from_disk(start, end, budget)?;
        }
        Ok(starting_at(start, out))
    }
}

impl LogStore {
    fn read_from_disk(&self, from: u64, to: u64, budget: usize) -> Result<Vec<Entry>, StorageError> {
        let records = blocking(|| self.reader.read_limited(from, to, budget as u64)).map_err(read_err)?;
        records
            .into_iter()
            .map(|(index, record)| {
                let entry: Entry = decode(&record)?;
                assert_eq!(entry.log_id.index, index, "a log record holds the entry of its index");
                Ok(entry)
            })
            .collect()
    }
}

/// `entries` if they start at `start`; none if `start` was purged meanwhile
/// (openraft then asks again, and sends a snapshot once it sees the purge).
fn starting_at(start: u64, entries: Vec<Entry>) -> Vec<Entry> {
    match entries.first() {
        Some(first) if first.log_id.index != start => {
            tracing::debug!(start, first = first.log_id.index, "replication read found its start purged");
            Vec::new()
        }
        _ => entries,
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = *lock(&self.purged);
        let last_recent = lock(&self.recent).last();
        let last = match last_recent {
            Some(id) => Some(id),
            None => blocking(|| self.last_durable_id())?,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        blocking(|| write_meta(&self.dir, VOTE_FILE, vote, true))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        blocking(|| read_meta(&self.dir, VOTE_FILE))
    }

    /// Kept in memory; the writer replaces the file at most once a second.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        *lock(&self.committed) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(*lock(&self.committed))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        lock(&self.recent).append(&entries);
        self.writer.send(Write::Append(entries, callback)).map_err(|_| write_err(WriterGone))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the log");
        blocking(|| self.ask(Change::Truncate(log_id.index)))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging the log");
        blocking(|| self.ask(Change::Purge(log_id)))
    }
}
