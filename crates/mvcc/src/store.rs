//! The MVCC store: the redb database, its tables, and the read entry points.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::{
    request_op, response_op, RangeRequest, RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use etcd_proto::fivefoldpb::MemberAttributes;
use prost::Message;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};

use crate::apply::ApplyBatch;
use crate::error::{MvccError, StorageError};
use crate::index::{KeyIndex, Ver};
use crate::limits::{COMPACT_REVISION_NONE, REVISION_INITIAL};
use crate::read::{self, ReadView, Source};
use crate::KvError;

/// Every version of every key, keyed by revision and sub-revision; see
/// `encoding`.
pub(crate) const KV_BY_REV: TableDefinition<u128, &[u8]> = TableDefinition::new("kv_by_rev");
/// Store-wide values: revisions, and opaque values of the layer above.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The legacy layout's rows, keyed by (key, revision); emptied into
/// `KV_BY_REV` when a store written before that layout opens.
pub(crate) const LEGACY_KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// The legacy layout's list of the keys each revision changed, in order.
pub(crate) const LEGACY_REVS: TableDefinition<u64, &[u8]> = TableDefinition::new("revs");
/// Published member attributes, by member id.
pub(crate) const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");

pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACT: &str = "compact_revision";
/// Meta keys owned by the layer above start with this.
pub const META_EXTERNAL_PREFIX: &str = "ext/";

pub struct MvccStore {
    /// Shared by every reader and the applier; taken exclusively only to
    /// defragment (redb's compaction needs the database to itself).
    db: RwLock<Database>,
    /// Which rows hold each key; see `index`. A read holds it shared while it
    /// finds its keys (a Range then lets it go; a read-only Txn and a history
    /// read keep it); an apply takes it exclusively for each command, for the
    /// commit of a batch that compacted, and to undo a batch that did not
    /// commit; a snapshot install takes it for its commit.
    index: RwLock<KeyIndex>,
    path: PathBuf,
    /// The revision of the last applied batch (committed to the engine, or
    /// in its open transaction), for cheap status reads.
    revision: AtomicI64,
    /// The file's length as of the last commit: the quota check reads it on
    /// every write, so it is not a file-system call per request.
    file_bytes: AtomicU64,
    /// Encoded bytes of the commands in the open apply transaction: the file
    /// grows by about this much when it commits, and the quota check must
    /// not wait for that to see it.
    open_bytes: AtomicU64,
    /// Applied commands whose engine transaction is still open (see
    /// `ApplyBatch::finish`). Taken by an apply for its whole batch, and by
    /// whoever commits the transaction: a reader, a writer of its own, or
    /// defragmentation, which holds it throughout so no apply begins.
    open: Mutex<Option<OpenApply>>,
    /// Whether `open` holds applied commands (or an apply continuing them
    /// does): a read commits them first; while false, reads skip the lock.
    has_open: AtomicBool,
    /// Set when applied commands were lost from the engine (their commit
    /// failed, or an apply continuing them failed): the engine no longer
    /// holds what clients were told, so every read and write is refused
    /// until the member restarts and applies its log again.
    failed: OnceLock<String>,
    /// How long applied commands may wait in an open transaction
    /// (`limits::APPLY_OPEN_MAX` unless set with `with_apply_open_max`).
    apply_open_max: Duration,
}

/// An apply transaction left open after its batch (`ApplyBatch::finish`):
/// its commands are applied and answered, and commit with a later batch or
/// when something reads.
pub(crate) struct OpenApply {
    pub txn: WriteTransaction,
    /// The store revision when the transaction began.
    pub base: u64,
    /// Keys that got a version in the transaction (to undo in the index).
    pub touched: Vec<Vec<u8>>,
    /// When the transaction began. The clock decides only when the engine
    /// commits, never what it holds.
    pub opened: Instant,
    /// Commands applied in it so far (their encoded bytes are the store's
    /// `open_bytes`).
    pub commands: usize,
}

/// Commits `txn` to the engine, synced to disk when `durable`.
pub(crate) fn commit_engine(mut txn: WriteTransaction, durable: bool) -> Result<(), StorageError> {
    txn.set_durability(if durable { redb::Durability::Immediate } else { redb::Durability::None })?;
    Ok(txn.commit()?)
}

impl std::fmt::Debug for MvccStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccStore").field("path", &self.path).finish()
    }
}

pub(crate) fn read_revisions(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(i64, i64), StorageError> {
    let int = |key: &str, default: i64| -> Result<i64, StorageError> {
        match meta.get(key)? {
            None => Ok(default),
            Some(v) => {
                let bytes: [u8; 8] = v
                    .value()
                    .try_into()
                    .map_err(|_| StorageError(format!("corrupt meta value for {key}")))?;
                Ok(i64::from_be_bytes(bytes))
            }
        }
    };
    Ok((int(META_REVISION, REVISION_INITIAL)?, int(META_COMPACT, COMPACT_REVISION_NONE)?))
}

impl MvccStore {
    /// Opens (or creates) the store at `path` with the default cache.
    pub fn open(path: &Path) -> Result<MvccStore, StorageError> {
        MvccStore::open_with_cache(path, crate::limits::CACHE_BYTES_DEFAULT)
    }

    /// Opens (or creates) the store at `path`, keeping at most `cache_bytes`
    /// of pages in memory; the rest is read through the OS page cache.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<MvccStore, StorageError> {
        let db = Database::builder().set_cache_size(cache_bytes).create(path).map_err(StorageError::from)?;
        {
            let mut txn = db.begin_write()?;
            txn.open_table(KV_BY_REV)?;
            txn.open_table(META)?;
            txn.open_table(crate::lease::LEASES)?;
            txn.open_table(crate::lease::LEASE_KEYS)?;
            txn.open_table(crate::maintenance::ALARMS)?;
            txn.open_table(MEMBERS)?;
            let migrated = migrate_legacy(&txn)?;
            if migrated > 0 {
                tracing::info!(rows = migrated, "moved the key space to the revision-keyed layout");
                txn.set_durability(redb::Durability::Immediate)?;
            }
            txn.commit()?;
        }
        let (index, revision) = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            (build_index(&meta, &txn.open_table(KV_BY_REV)?)?, read_revisions(&meta)?.0)
        };
        let store = MvccStore {
            db: RwLock::new(db),
            index: RwLock::new(index),
            path: path.to_path_buf(),
            revision: AtomicI64::new(revision),
            file_bytes: AtomicU64::new(0),
            open_bytes: AtomicU64::new(0),
            open: Mutex::new(None),
            has_open: AtomicBool::new(false),
            failed: OnceLock::new(),
            apply_open_max: crate::limits::APPLY_OPEN_MAX,
        };
        store.note_file_size();
        Ok(store)
    }

    /// The same store with applied commands left open at most `max` (tests
    /// use it to look at the command bound alone).
    pub fn with_apply_open_max(mut self, max: Duration) -> MvccStore {
        self.apply_open_max = max;
        self
    }

    /// How long applied commands may wait in an open transaction.
    pub fn apply_open_max(&self) -> Duration {
        self.apply_open_max
    }

    /// A read transaction holding every applied command.
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.commit_open_apply()?;
        Ok(self.db.read().expect("database lock").begin_read()?)
    }

    /// A write transaction of its own (not an apply's), after every applied
    /// command is committed.
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        // Held until the transaction exists: an apply that came between
        // would leave its own open and this would wait for it.
        let _open = self.settled_slot()?;
        self.engine_write()
    }

    /// A write transaction straight from the engine: for an apply, which
    /// holds the open-transaction slot already.
    pub(crate) fn engine_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        Ok(self.db.read().expect("database lock").begin_write()?)
    }

    /// The open apply transaction's slot, waited for. A panic while it was
    /// held (in an apply or a commit) may have lost answered writes: the
    /// store is marked failed.
    pub(crate) fn open_apply(&self) -> MutexGuard<'_, Option<OpenApply>> {
        self.open.lock().unwrap_or_else(|poisoned| {
            self.fail("a panic while applying or committing".into());
            poisoned.into_inner()
        })
    }

    /// The open apply transaction's slot if it is free now (`None` while an
    /// apply or a commit holds it); a poisoned slot is handled as in
    /// `open_apply`.
    fn try_open_apply(&self) -> Option<MutexGuard<'_, Option<OpenApply>>> {
        match self.open.try_lock() {
            Ok(open) => Some(open),
            Err(std::sync::TryLockError::WouldBlock) => None,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                self.fail("a panic while applying or committing".into());
                Some(poisoned.into_inner())
            }
        }
    }

    /// The open apply transaction's slot, waited for, with what it held
    /// committed: no applied command is left out of the engine while the
    /// guard is held.
    fn settled_slot(&self) -> Result<MutexGuard<'_, Option<OpenApply>>, StorageError> {
        let mut open = self.open_apply();
        self.commit_open(&mut open, false)?;
        self.check_failed()?;
        Ok(open)
    }

    /// Marks that applied commands are held by an open transaction, whose
    /// commands came to `bytes` encoded.
    pub(crate) fn note_open(&self, bytes: u64) {
        self.open_bytes.store(bytes, Ordering::Release);
        self.has_open.store(true, Ordering::Release);
    }

    /// Encoded bytes of the commands in the open transaction.
    pub(crate) fn open_bytes(&self) -> u64 {
        self.open_bytes.load(Ordering::Acquire)
    }

    /// Marks that no applied command waits in an open transaction.
    pub(crate) fn note_closed(&self) {
        self.has_open.store(false, Ordering::Release);
        self.open_bytes.store(0, Ordering::Release);
    }

    /// Whether applied commands wait in an open transaction for their commit.
    pub fn is_apply_open(&self) -> bool {
        self.has_open.load(Ordering::Acquire)
    }

    /// Refuses service once applied commands were lost (see `failed`).
    pub(crate) fn check_failed(&self) -> Result<(), StorageError> {
        match self.failed.get() {
            None => Ok(()),
            Some(reason) => Err(StorageError(format!(
                "the engine lost applied writes ({reason}); restart this member, which applies them again from its log"
            ))),
        }
    }

    /// Takes the versions of `touched` above `base` (answered, but no longer
    /// in the engine) out of the key index and refuses service from now on.
    pub(crate) fn lose_applied(&self, touched: &[Vec<u8>], base: u64, reason: String) {
        if !touched.is_empty() {
            self.index_mut().truncate_after(touched, base);
        }
        self.fail(reason);
        self.note_closed();
    }

    /// Records that applied commands were lost from the engine.
    pub(crate) fn fail(&self, reason: String) {
        tracing::error!(%reason, "the engine lost applied writes; this member refuses reads and writes until restarted");
        let _ = self.failed.set(reason);
    }

    /// Commits the applied commands of an open apply transaction, if there
    /// are any, so that a read sees them.
    fn commit_open_apply(&self) -> Result<(), StorageError> {
        if self.is_apply_open() {
            let mut open = self.open_apply();
            self.commit_open(&mut open, false)?;
        }
        self.check_failed()
    }

    /// Commits the transaction in `slot`, if any. On failure its commands
    /// leave the key index and the store refuses service (`failed`) before
    /// reads stop committing first, so no read sees the loss.
    pub(crate) fn commit_open(
        &self,
        slot: &mut Option<OpenApply>,
        durable: bool,
    ) -> Result<(), StorageError> {
        let Some(open) = slot.take() else { return Ok(()) };
        let result = commit_engine(open.txn, durable);
        // The file's new size first: the quota never misses the commands.
        self.note_file_size();
        match &result {
            Err(e) => self.lose_applied(
                &open.touched,
                open.base,
                format!("committing {} applied commands: {e}", open.commands),
            ),
            Ok(()) => self.note_closed(),
        }
        result
    }

    /// Commits the open apply transaction if it has been open
    /// `APPLY_OPEN_MAX` or longer, unless an apply holds it (which then
    /// commits it itself): for a timer, so applies left open while nothing
    /// reads and nothing else is applied do not stay uncommitted.
    pub fn commit_stale_apply(&self) -> Result<(), StorageError> {
        if !self.is_apply_open() {
            return Ok(());
        }
        let Some(mut open) = self.try_open_apply() else { return Ok(()) };
        self.check_failed()?;
        if open.as_ref().is_some_and(|o| o.opened.elapsed() >= self.apply_open_max) {
            self.commit_open(&mut open, false)?;
        }
        Ok(())
    }

    pub(crate) fn index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.index.read().expect("key index lock")
    }

    pub(crate) fn index_mut(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.index.write().expect("key index lock")
    }

    /// Returns free pages to the file system (redb's compaction). Readers and
    /// the applier of this member wait while it runs; the other members go on
    /// serving. Gives up with an error if transactions stay open too long.
    pub fn defragment(&self) -> Result<(), StorageError> {
        const ATTEMPTS: u32 = 200;
        // Held throughout: no apply begins a transaction while redb compacts.
        let _open = self.settled_slot()?;
        let mut db = self.db.write().expect("database lock");
        for _ in 0..ATTEMPTS {
            match db.compact() {
                Ok(_) => {
                    self.note_file_size();
                    return Ok(());
                }
                Err(redb::CompactionError::TransactionInProgress) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(StorageError(e.to_string())),
            }
        }
        Err(StorageError("defragment: transactions stayed open; try again".into()))
    }

    /// The current and compacted revisions, read from the engine.
    pub fn revisions(&self) -> Result<(i64, i64), StorageError> {
        let txn = self.begin_read()?;
        read_revisions(&txn.open_table(META)?)
    }

    /// The revision of the last applied batch.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Records the revision of the last applied batch.
    pub(crate) fn note_applied(&self, revision: i64) {
        let before = self.revision.swap(revision, Ordering::AcqRel);
        assert!(revision >= before, "store revision never goes back: {before} -> {revision}");
    }

    /// Records a committed batch: its revision, and the file's size.
    pub(crate) fn note_commit(&self, revision: i64) {
        self.note_applied(revision);
        self.note_file_size();
    }

    /// Sets the cached revision after the state was replaced by a snapshot (which
    /// may move it in either direction).
    pub(crate) fn reset_revision(&self, revision: i64) {
        self.revision.store(revision, Ordering::Release);
        self.note_file_size();
    }

    /// Reads the file's length again; called after anything that may change
    /// it (commits may grow or shrink it). Two racing commits may store their
    /// reads out of order; the next commit corrects that.
    fn note_file_size(&self) {
        let bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        self.file_bytes.store(bytes, Ordering::Release);
    }

    /// Starts a batch of applies.
    pub fn begin_apply(&self) -> Result<ApplyBatch<'_>, StorageError> {
        ApplyBatch::begin(self)
    }

    /// Makes every applied command and earlier non-durable commit durable.
    pub fn persist(&self) -> Result<(), StorageError> {
        let mut open = self.open_apply();
        if open.is_some() {
            return self.commit_open(&mut open, true);
        }
        self.check_failed()?;
        commit_engine(self.engine_write()?, true)?;
        self.note_file_size();
        Ok(())
    }

    /// A read transaction with the key index as it stands: the index is
    /// taken first and the transaction begun under it, so the index covers
    /// every row the transaction holds and no compaction or snapshot install
    /// can come between the two (both change the index and the rows under
    /// the index's write lock).
    pub(crate) fn read_pair(&self) -> Result<ReadPair<'_>, StorageError> {
        self.commit_open_apply()?;
        let db = self.db.read().expect("database lock");
        let index = self.index();
        let txn = db.begin_read()?;
        Ok(ReadPair { txn, index })
    }

    /// `read_pair`, or `None` at once if an apply holds its transaction, or
    /// the database (defragmenting) or the index (an apply or install) is
    /// taken.
    fn try_read_pair(&self) -> Option<Result<ReadPair<'_>, StorageError>> {
        if self.is_apply_open() {
            let mut open = self.try_open_apply()?;
            if let Err(e) = self.commit_open(&mut open, false) {
                return Some(Err(e));
            }
        }
        if let Err(e) = self.check_failed() {
            return Some(Err(e));
        }
        let db = self.db.try_read().ok()?;
        let index = self.index.try_read().ok()?;
        Some(db.begin_read().map(|txn| ReadPair { txn, index }).map_err(StorageError::from))
    }

    /// Serves a Range from the last applied state.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        range_in(self.read_pair()?, req)
    }

    /// Serves a Txn that only reads (see `validate::txn_is_read_only`).
    pub fn read_only_txn(&self, req: &TxnRequest) -> Result<TxnResponse, KvError> {
        read_only_txn_in(self.read_pair()?, req)
    }

    /// Like `range`, but `None` at once instead of waiting while the
    /// database or the key index is taken: for callers that must not block
    /// (an async worker), which then wait elsewhere.
    pub fn try_range(&self, req: &RangeRequest) -> Option<Result<RangeResponse, KvError>> {
        Some(self.try_read_pair()?.map_err(KvError::from).and_then(|pair| range_in(pair, req)))
    }

    /// `read_only_txn` that does not wait; see `try_range`.
    pub fn try_read_only_txn(&self, req: &TxnRequest) -> Option<Result<TxnResponse, KvError>> {
        Some(self.try_read_pair()?.map_err(KvError::from).and_then(|pair| read_only_txn_in(pair, req)))
    }

    /// Reads a value stored by the layer above with `ApplyBatch::put_meta`.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Member attributes published through the log.
    pub fn member_attributes(&self) -> Result<Vec<MemberAttributes>, StorageError> {
        let txn = self.begin_read()?;
        let members = txn.open_table(MEMBERS)?;
        let mut out = Vec::new();
        for row in members.iter()? {
            let (_, value) = row?;
            out.push(MemberAttributes::decode(value.value())?);
        }
        Ok(out)
    }

    /// Size of the database in bytes: the file as of the last commit, plus
    /// the encoded commands applied in the open transaction since.
    pub fn db_size(&self) -> u64 {
        self.file_bytes.load(Ordering::Acquire) + self.open_bytes()
    }

    /// Bytes the database uses for data and metadata, as opposed to free space.
    pub fn db_size_in_use(&self) -> Result<u64, StorageError> {
        let txn = self.begin_write()?;
        let stats = txn.stats()?;
        let used = stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes();
        txn.abort()?;
        Ok(used)
    }
}

/// A read transaction and the key index, taken together (`read_pair`).
pub(crate) struct ReadPair<'s> {
    pub txn: redb::ReadTransaction,
    pub index: RwLockReadGuard<'s, KeyIndex>,
}

/// A Range: the keys are found with the index held, then the index is let
/// go (an apply may go on) while their rows are read from the transaction,
/// which still holds every row found.
fn range_in(pair: ReadPair<'_>, req: &RangeRequest) -> Result<RangeResponse, KvError> {
    let (current, compacted) = read_revisions(&pair.txn.open_table(META)?)?;
    let view = ReadView { current, compacted };
    let plan = read::plan_range(&pair.index, current as u64, req, view)?;
    drop(pair.index);
    read::finish_range(&pair.txn.open_table(KV_BY_REV)?, req, view, plan)
}

/// A read-only Txn, with the index held throughout (its compares and ranges
/// are usually a few keys).
fn read_only_txn_in(pair: ReadPair<'_>, req: &TxnRequest) -> Result<TxnResponse, KvError> {
    assert!(crate::validate::txn_is_read_only(req), "only read-only txns are served off the log");
    let (current, compacted) = read_revisions(&pair.txn.open_table(META)?)?;
    let rows = pair.txn.open_table(KV_BY_REV)?;
    let src = Source { rows: &rows, index: &pair.index, ceiling: current as u64 };
    read_only_txn(&src, req, ReadView { current, compacted })
}

fn read_only_txn(
    src: &Source<'_, impl read::Rows>,
    req: &TxnRequest,
    view: ReadView,
) -> Result<TxnResponse, KvError> {
    let mut succeeded = true;
    for c in &req.compare {
        if !read::compare_holds(src, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &req.success } else { &req.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(read::range(src, r, view)?)
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let mut resp = read_only_txn(src, t, view)?;
                resp.header = Some(ResponseHeader { revision: view.current, ..Default::default() });
                response_op::Response::ResponseTxn(resp)
            }
            _ => return Err(MvccError::InvalidRequest("write in a read-only txn".into()).into()),
        };
        responses.push(ResponseOp { response: Some(response) });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader { revision: view.current, ..Default::default() }),
        succeeded,
        responses,
    })
}

/// Builds the key index from every committed row, in revision order.
pub(crate) fn build_index(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    rows: &impl ReadableTable<u128, &'static [u8]>,
) -> Result<KeyIndex, StorageError> {
    let (current, compacted) = read_revisions(meta)?;
    let mut index = KeyIndex::new(compacted);
    for row in rows.iter()? {
        let (row_key, value) = row?;
        let (rev, sub) = crate::encoding::split_rev_row(row_key.value());
        if rev > current as u64 {
            return Err(StorageError(format!(
                "a row at revision {rev} is above the store's revision {current}: the data is corrupt"
            )));
        }
        let value = value.value();
        let key = crate::encoding::row_key_of(value)?;
        index.push(key, Ver { rev, sub, tombstone: crate::encoding::row_is_tombstone(value) });
    }
    Ok(index)
}

/// Moves the rows of a store written in the legacy layout (keyed by key,
/// then revision) into `KV_BY_REV`, in the write transaction `txn`; returns
/// the number of rows moved (0 when there were none). A row's sub-revision
/// is its key's position in its revision's list of changed keys; compaction
/// removed the lists below the compacted revision, and rows there are
/// numbered in key order. (Members that moved at different compaction points
/// may number a revision below the compacted one differently; HashKV hashes
/// a revision's rows in key order, and history below the compacted revision
/// is never read.)
pub(crate) fn migrate_legacy(txn: &redb::WriteTransaction) -> Result<u64, StorageError> {
    use crate::encoding::{decode_keys, encode_row, rev_row, row_key, split_row_key, Version};
    let mut legacy = txn.open_table(LEGACY_KV)?;
    if legacy.is_empty()? {
        return Ok(0);
    }
    let mut revs = txn.open_table(LEGACY_REVS)?;
    let mut rows = txn.open_table(KV_BY_REV)?;
    let mut moved = 0;
    // Listed revisions: each listed key's row, in list order.
    for listed in revs.iter()? {
        let (rev, keys) = listed?;
        let rev = rev.value();
        for (sub, key) in decode_keys(keys.value())?.iter().enumerate() {
            // A delete exactly at the compacted revision was compacted away.
            if let Some(stored) = legacy.get(row_key(key, rev).as_slice())? {
                let version = Version::decode(stored.value())?;
                rows.insert(rev_row(rev, sub as u32), encode_row(key, &version).as_slice())?;
                moved += 1;
            }
        }
    }
    // Rows whose revision has no list: numbered in key order.
    let mut next_sub: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    for row in legacy.iter()? {
        let (row_key, value) = row?;
        let (key, rev) = split_row_key(row_key.value())?;
        if revs.get(rev)?.is_some() {
            continue;
        }
        let sub = next_sub.entry(rev).or_insert(0);
        let version = Version::decode(value.value())?;
        rows.insert(rev_row(rev, *sub), encode_row(&key, &version).as_slice())?;
        *sub += 1;
        moved += 1;
    }
    legacy.retain(|_, _| false)?;
    revs.retain(|_, _| false)?;
    Ok(moved)
}
