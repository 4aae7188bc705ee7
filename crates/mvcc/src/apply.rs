//! Applying committed commands: the write path. Each command that changes the
//! key space takes the next revision. A batch of log entries applies in one
//! redb write transaction, which may stay open for later batches
//! (`ApplyBatch::finish`): committing costs more than applying a few puts,
//! so, as etcd's backend does, the engine commits at most every
//! `APPLY_OPEN_MAX` while nothing reads — and at once when something does.

use std::sync::MutexGuard;
use std::time::Instant;

use etcd_proto::etcdserverpb::{
    request_op, response_op, AlarmRequest, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, PutResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use etcd_proto::fivefoldpb::{command, command_response, ApplyError, Command, CommandResponse, Empty};
use etcd_proto::mvccpb::{event, Event, KeyValue};
use prost::Message;
use redb::{ReadableTable, Table, WriteTransaction};

use crate::encoding::{encode_row, rev_row, Version};
use crate::error::{MvccError, StorageError};
use crate::index::{KeyIndex, Ver};
use crate::lease::{self, LeaseChange, LEASES, LEASE_KEYS};
use crate::limits::APPLY_OPEN_COMMANDS_MAX;
use crate::maintenance::ALARMS;
use crate::read::{self, ReadView, Source};
use crate::span::Span;
use crate::store::{MvccStore, OpenApply, KV_BY_REV, MEMBERS, META, META_COMPACT, META_REVISION};
use crate::KvError;

type KvTable<'t> = Table<'t, u128, &'static [u8]>;

/// Takes back what a transaction added to the key index unless it commits
/// or stays open: the index must never name a revision the engine does not
/// hold.
struct IndexUndo<'s> {
    store: &'s MvccStore,
    /// The store revision when the transaction began.
    base: u64,
    /// Keys that got a version in the transaction.
    touched: Vec<Vec<u8>>,
    /// The transaction holds commands of earlier batches, already answered:
    /// losing it loses them.
    continued: bool,
    armed: bool,
}

impl Drop for IndexUndo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.continued {
            let reason = "an apply continuing an open transaction failed".into();
            self.store.lose_applied(&self.touched, self.base, reason);
        } else if !self.touched.is_empty() {
            self.store.index_mut().truncate_after(&self.touched, self.base);
        }
    }
}

/// Writes the changes of one command: each takes the command's revision and
/// the next sub-revision, appends its row, and is indexed at once (so the
/// rest of the command and batch see it).
struct Writer<'w, 't> {
    kv: &'w mut KvTable<'t>,
    index: &'w mut KeyIndex,
    touched: &'w mut Vec<Vec<u8>>,
    rev: u64,
    sub: u32,
}

impl<'w, 't> Writer<'w, 't> {
    /// A writer for the command after `revision`.
    fn new(
        kv: &'w mut KvTable<'t>,
        index: &'w mut KeyIndex,
        touched: &'w mut Vec<Vec<u8>>,
        revision: i64,
    ) -> Writer<'w, 't> {
        Writer { kv, index, touched, rev: (revision + 1) as u64, sub: 0 }
    }

    /// Reads as the command sees the state: everything written so far.
    fn src(&self) -> Source<'_, KvTable<'_>> {
        Source { rows: &*self.kv, index: &*self.index, ceiling: u64::MAX }
    }

    /// Writes a deletion of `key`.
    fn write_tombstone(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.index(key, true);
        self.append(key, &Version::tombstone())
    }

    /// Writes the version of `key` that `make` builds from the key's live
    /// version before it (`None`: absent or deleted); returns that previous
    /// version and the new one. One index lookup finds the previous version
    /// and records the new one.
    fn write_put(
        &mut self,
        key: &[u8],
        make: impl FnOnce(Option<&KeyValue>) -> Version,
    ) -> Result<(Option<KeyValue>, Version), StorageError> {
        let prev = match self.index(key, false) {
            Some(before) if !before.tombstone => Some(read::fetch(&*self.kv, key, before)?),
            _ => None,
        };
        let version = make(prev.as_ref());
        self.append(key, &version)?;
        Ok((prev, version))
    }

    /// Indexes the next change of `key` (recorded for undo) and returns the
    /// version it follows.
    fn index(&mut self, key: &[u8], tombstone: bool) -> Option<Ver> {
        self.touched.push(key.to_vec());
        self.index.push(key, Ver { rev: self.rev, sub: self.sub, tombstone })
    }

    /// Appends the row of the change just indexed and moves to the next
    /// sub-revision.
    fn append(&mut self, key: &[u8], version: &Version) -> Result<(), StorageError> {
        self.kv.insert(rev_row(self.rev, self.sub), encode_row(key, version).as_slice())?;
        self.sub =
            self.sub.checked_add(1).ok_or_else(|| StorageError("too many changes in one revision".into()))?;
        Ok(())
    }
}

/// A batch of commands applied in one engine transaction (perhaps one an
/// earlier batch left open). Dropped unfinished, it takes back what its
/// transaction added. Fields drop in order: the transaction, then the undo,
/// then the slot, so no reader sees the slot empty before the undo is done.
pub struct ApplyBatch<'s> {
    txn: WriteTransaction,
    state: BatchState<'s>,
    /// The store's open-transaction slot, held for the whole batch.
    slot: MutexGuard<'s, Option<OpenApply>>,
    /// When the transaction began (in this batch or an earlier one).
    opened: Instant,
    /// Commands applied in the transaction, earlier batches' included.
    commands: usize,
    /// Their encoded bytes.
    command_bytes: u64,
}

/// Everything of a batch but its transaction, so that a command can borrow
/// the transaction's key table and the state apart.
struct BatchState<'s> {
    store: &'s MvccStore,
    revision: i64,
    compacted: i64,
    /// Every change of the batch, in revision order, for watchers.
    events: Vec<Event>,
    lease_changes: Vec<LeaseChange>,
    undo: IndexUndo<'s>,
    /// A compaction applied in this batch: the key index drops what it
    /// removed once the batch commits.
    compact_at: Option<u64>,
    /// Whether a NOSPACE alarm is active: read when the batch begins and
    /// again after each Alarm command, so writes check it without opening
    /// the alarms table each time.
    no_space: bool,
}

/// How an apply batch ends (`ApplyBatch::finish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Leave the transaction open for the next batch, unless a commit is due.
    Lazy,
    /// Commit now, durably: this and every earlier commit survive a crash of
    /// the machine.
    Durable,
}

/// What an applied batch changed.
#[derive(Debug, Default)]
pub struct Committed {
    /// Whether the engine committed the batch (else its transaction is open).
    pub engine_committed: bool,
    /// The store revision after the batch.
    pub revision: i64,
    /// The compacted revision after the batch.
    pub compacted: i64,
    /// Every change, in revision order; a revision's events are contiguous.
    pub events: Vec<Event>,
    /// Leases granted and revoked, in order.
    pub lease_changes: Vec<LeaseChange>,
}

/// How a path through a Txn was decided: the compare outcome of a Txn and of the
/// nested Txns in its taken branch, in order.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

impl<'s> ApplyBatch<'s> {
    pub(crate) fn begin(store: &'s MvccStore) -> Result<ApplyBatch<'s>, StorageError> {
        let mut slot = store.open_apply();
        store.check_failed()?;
        // Built before anything can fail, so an open transaction taken out
        // of the slot is undone (and the loss recorded) if it is dropped.
        let mut undo = IndexUndo { store, base: 0, touched: Vec::new(), continued: false, armed: true };
        let (txn, opened, commands, command_bytes) = match slot.take() {
            Some(open) => {
                undo.base = open.base;
                undo.touched = open.touched;
                undo.continued = true;
                (open.txn, open.opened, open.commands, store.open_bytes())
            }
            None => (store.engine_write()?, Instant::now(), 0, 0),
        };
        let (revision, compacted) = crate::store::read_revisions(&txn.open_table(META)?)?;
        let no_space = crate::maintenance::no_space(&txn.open_table(ALARMS)?)?;
        if !undo.continued {
            undo.base = revision as u64;
        }
        let state = BatchState {
            store,
            revision,
            compacted,
            events: Vec::new(),
            lease_changes: Vec::new(),
            undo,
            compact_at: None,
            no_space,
        };
        Ok(ApplyBatch { txn, state, slot, opened, commands, command_bytes })
    }

    /// The store revision as of the commands applied so far.
    pub fn revision(&self) -> i64 {
        self.state.revision
    }

    /// Applies one command. Client errors come back inside the response (the
    /// command still counts as applied); an `Err` is an engine failure.
    pub fn apply(&mut self, cmd: &Command) -> Result<CommandResponse, StorageError> {
        let mut kv = self.txn.open_table(KV_BY_REV)?;
        self.commands += 1;
        self.command_bytes += cmd.encoded_len() as u64;
        self.state.apply(&self.txn, &mut kv, cmd)
    }

    /// Applies commands in order, as `apply` does each, with the key table
    /// opened once for all of them.
    pub fn apply_all(&mut self, cmds: &[Command]) -> Result<Vec<CommandResponse>, StorageError> {
        let mut kv = self.txn.open_table(KV_BY_REV)?;
        self.commands += cmds.len();
        self.command_bytes += cmds.iter().map(|cmd| cmd.encoded_len() as u64).sum::<u64>();
        cmds.iter().map(|cmd| self.state.apply(&self.txn, &mut kv, cmd)).collect()
    }

    /// Stores a value the layer above owns (Raft's applied log id, membership).
    pub fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        assert!(key.starts_with(crate::store::META_EXTERNAL_PREFIX), "external meta keys are prefixed");
        self.txn.open_table(META)?.insert(key, value)?;
        Ok(())
    }

    /// Commits the batch. A non-durable commit is visible to readers at once and
    /// reaches the disk with the next durable one: the Raft log, not this
    /// database, is the durable record, and entries after the last durable commit
    /// are applied again on restart.
    pub fn commit(self, durable: bool) -> Result<Committed, StorageError> {
        self.write_revisions()?;
        let ApplyBatch { txn, mut state, slot, .. } = self;
        let committed = commit_txn(txn, &mut state, durable).map(|()| state.committed(true));
        // A failed commit's undo runs before the slot is let go.
        drop(state);
        drop(slot);
        committed
    }

    /// Ends the batch as `how` says. `Finish::Lazy` leaves the transaction
    /// open for the next batch unless a commit is due anyway (a compaction,
    /// `APPLY_OPEN_COMMANDS_MAX` commands in it, or open `APPLY_OPEN_MAX`).
    /// Either way the batch counts as applied: its revision is the store's,
    /// and a read commits it first. `Committed::engine_committed` says
    /// which it was.
    pub fn finish(self, how: Finish) -> Result<Committed, StorageError> {
        let due = self.state.compact_at.is_some()
            || self.commands >= APPLY_OPEN_COMMANDS_MAX
            || self.opened.elapsed() >= self.state.store.apply_open_max();
        match how {
            Finish::Durable => return self.commit(true),
            Finish::Lazy if due => return self.commit(false),
            Finish::Lazy => {}
        }
        self.write_revisions()?;
        let ApplyBatch { txn, mut state, mut slot, opened, commands, command_bytes } = self;
        state.undo.armed = false;
        let touched = std::mem::take(&mut state.undo.touched);
        *slot = Some(OpenApply { txn, base: state.undo.base, touched, opened, commands });
        state.store.note_open(command_bytes);
        state.store.note_applied(state.revision);
        Ok(state.committed(false))
    }

    /// Records the batch's revisions in its transaction.
    fn write_revisions(&self) -> Result<(), StorageError> {
        let mut meta = self.txn.open_table(META)?;
        meta.insert(META_REVISION, self.state.revision.to_be_bytes().as_slice())?;
        meta.insert(META_COMPACT, self.state.compacted.to_be_bytes().as_slice())?;
        Ok(())
    }
}

/// Commits a batch's transaction and settles the index and the store.
fn commit_txn(txn: WriteTransaction, state: &mut BatchState<'_>, durable: bool) -> Result<(), StorageError> {
    // A compaction's rows go and its index versions go under the index's
    // write lock, so no reader pairs one state with the other.
    let index = state.compact_at.map(|at| (at, state.store.index_mut()));
    crate::store::commit_engine(txn, durable)?;
    state.undo.armed = false;
    if let Some((at, mut index)) = index {
        index.compact(at);
    }
    state.store.note_commit(state.revision);
    state.store.note_closed();
    Ok(())
}

impl<'s> BatchState<'s> {
    /// What the batch changed, taken out of it.
    fn committed(&mut self, engine_committed: bool) -> Committed {
        Committed {
            engine_committed,
            revision: self.revision,
            compacted: self.compacted,
            events: std::mem::take(&mut self.events),
            lease_changes: std::mem::take(&mut self.lease_changes),
        }
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        kv: &mut KvTable<'_>,
        cmd: &Command,
    ) -> Result<CommandResponse, StorageError> {
        let before = self.revision;
        let events_before = self.events.len();
        let result = match &cmd.kind {
            Some(command::Kind::Put(req)) => self.put_command(txn, kv, req),
            Some(command::Kind::DeleteRange(req)) => self.delete_command(kv, req),
            Some(command::Kind::Txn(req)) => self.txn_command(txn, kv, req),
            Some(command::Kind::Compaction(req)) => self.compact(kv, req),
            Some(command::Kind::MemberAttributes(attrs)) => {
                let mut members = txn.open_table(MEMBERS)?;
                members.insert(attrs.member_id, attrs.encode_to_vec().as_slice())?;
                Ok(command_response::Kind::Empty(Empty {}))
            }
            Some(command::Kind::LeaseGrant(req)) => self.lease_grant(txn, req),
            Some(command::Kind::LeaseRevoke(req)) => self.lease_revoke(txn, kv, req),
            Some(command::Kind::Alarm(req)) => self.alarm(txn, req),
            // A batch is unwrapped by the caller (`apply_all` over its commands).
            Some(command::Kind::Batch(_)) => {
                Err(MvccError::InvalidRequest("nested command batch".into()).into())
            }
            None => Err(KvError::Request(MvccError::InvalidRequest("empty command".into()))),
        };
        let kind = match result {
            Ok(kind) => kind,
            Err(KvError::Request(e)) => {
                command_response::Kind::Error(ApplyError { code: e.code() as i32, message: e.to_string() })
            }
            Err(KvError::Storage(e)) => return Err(e),
        };
        assert!(self.revision == before || self.revision == before + 1, "revision moves by one per command");
        assert_eq!(
            self.revision == before + 1,
            self.events.len() > events_before,
            "a command takes a revision exactly when it changes a key"
        );
        if self.revision == before + 1 {
            lease::index_events(txn, &self.events[events_before..])?;
        }
        Ok(CommandResponse { kind: Some(kind), revision: self.revision })
    }

    /// Writes that add data are refused while a NOSPACE alarm is active;
    /// deletes and compaction, which free space, are not.
    fn check_space(&self) -> Result<(), KvError> {
        if self.no_space {
            return Err(MvccError::NoSpace.into());
        }
        Ok(())
    }

    fn put_command(
        &mut self,
        txn: &WriteTransaction,
        kv: &mut KvTable<'_>,
        req: &PutRequest,
    ) -> Result<command_response::Kind, KvError> {
        crate::validate::check_put(req)?;
        self.check_space()?;
        let mut index = self.store.index_mut();
        let mut w = Writer::new(kv, &mut index, &mut self.undo.touched, self.revision);
        if req.lease == 0 {
            check_put_key(&w.src(), req)?;
        } else {
            check_put_state(&w.src(), &txn.open_table(LEASES)?, req)?;
        }
        let resp = put(&mut w, req, &mut self.events)?;
        self.revision += 1;
        Ok(command_response::Kind::Put(PutResponse { header: Some(self.header()), ..resp }))
    }

    fn delete_command(
        &mut self,
        kv: &mut KvTable<'_>,
        req: &DeleteRangeRequest,
    ) -> Result<command_response::Kind, KvError> {
        crate::validate::check_delete_range(req)?;
        let mut index = self.store.index_mut();
        let mut w = Writer::new(kv, &mut index, &mut self.undo.touched, self.revision);
        let resp = delete_range(&mut w, req, &mut self.events)?;
        if resp.deleted > 0 {
            self.revision += 1;
        }
        Ok(command_response::Kind::DeleteRange(DeleteRangeResponse { header: Some(self.header()), ..resp }))
    }

    fn txn_command(
        &mut self,
        txn: &WriteTransaction,
        kv: &mut KvTable<'_>,
        req: &TxnRequest,
    ) -> Result<command_response::Kind, KvError> {
        crate::validate::check_txn(req, usize::MAX)?;
        if crate::validate::txn_has_put(req) {
            self.check_space()?;
        }
        let mut index = self.store.index_mut();
        let mut w = Writer::new(kv, &mut index, &mut self.undo.touched, self.revision);
        let path = decide_path(&w.src(), req)?;
        let view = ReadView { current: self.revision, compacted: self.compacted };
        check_path(&w.src(), &txn.open_table(LEASES)?, req, &path, view)?;
        let mut exec = Exec { changed: false, view, events: &mut self.events };
        let mut resp = exec.txn(&mut w, req, &path)?;
        if exec.changed {
            self.revision += 1;
        }
        resp.header = Some(self.header());
        Ok(command_response::Kind::Txn(resp))
    }

    fn alarm(
        &mut self,
        txn: &WriteTransaction,
        req: &AlarmRequest,
    ) -> Result<command_response::Kind, KvError> {
        let mut alarms = txn.open_table(ALARMS)?;
        let mut resp = crate::maintenance::apply_alarm(&mut alarms, req)?;
        self.no_space = crate::maintenance::no_space(&alarms)?;
        resp.header = Some(self.header());
        Ok(command_response::Kind::Alarm(resp))
    }

    fn lease_grant(
        &mut self,
        txn: &WriteTransaction,
        req: &LeaseGrantRequest,
    ) -> Result<command_response::Kind, KvError> {
        self.check_space()?;
        let (mut resp, change) = lease::grant(&mut txn.open_table(LEASES)?, req)?;
        self.lease_changes.push(change);
        resp.header = Some(self.header());
        Ok(command_response::Kind::LeaseGrant(resp))
    }

    /// Revokes a lease: its keys are deleted in one revision, then the lease.
    fn lease_revoke(
        &mut self,
        txn: &WriteTransaction,
        kv: &mut KvTable<'_>,
        req: &LeaseRevokeRequest,
    ) -> Result<command_response::Kind, KvError> {
        let mut leases = txn.open_table(LEASES)?;
        if !lease::lease_exists(&leases, req.id)? {
            return Err(MvccError::LeaseNotFound.into());
        }
        let mut lease_keys = txn.open_table(LEASE_KEYS)?;
        let keys = lease::keys_of(&lease_keys, req.id)?;
        let mut index = self.store.index_mut();
        let mut w = Writer::new(kv, &mut index, &mut self.undo.touched, self.revision);
        let mut deleted = 0;
        for key in &keys {
            let del = DeleteRangeRequest { key: key.clone(), ..Default::default() };
            deleted += delete_range(&mut w, &del, &mut self.events)?.deleted;
        }
        let (mut resp, change) = lease::forget(&mut leases, &mut lease_keys, req, &keys)?;
        if deleted > 0 {
            self.revision += 1;
        }
        self.lease_changes.push(change);
        resp.header = Some(self.header());
        Ok(command_response::Kind::LeaseRevoke(resp))
    }

    fn compact(
        &mut self,
        kv: &mut KvTable<'_>,
        req: &CompactionRequest,
    ) -> Result<command_response::Kind, KvError> {
        if req.revision <= self.compacted {
            return Err(MvccError::Compacted.into());
        }
        if req.revision > self.revision {
            return Err(MvccError::FutureRevision.into());
        }
        let at = req.revision as u64;
        let doomed = self.store.index().doomed_by_compaction(at);
        let mut removed = 0u64;
        for ver in &doomed {
            if kv.remove(ver.row())?.is_some() {
                removed += 1;
            }
        }
        tracing::info!(revision = req.revision, rows_removed = removed, "compacted");
        self.compact_at = Some(at);
        self.compacted = req.revision;
        assert!(self.compacted <= self.revision, "compaction never passes the store revision");
        Ok(command_response::Kind::Compaction(CompactionResponse { header: Some(self.header()) }))
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader { revision: self.revision, ..Default::default() }
    }
}

/// The part of `check_put_state` that needs no lease: `ignore_*` needs an
/// existing key.
fn check_put_key(src: &Source<'_, impl read::Rows>, req: &PutRequest) -> Result<(), KvError> {
    if (req.ignore_value || req.ignore_lease) && src.index.live_at(&req.key, src.ceiling).is_none() {
        return Err(MvccError::KeyNotFound.into());
    }
    Ok(())
}

/// Checks a Put against the state: `ignore_*` needs an existing key; a lease
/// must exist.
fn check_put_state(
    src: &Source<'_, impl read::Rows>,
    leases: &impl ReadableTable<i64, &'static [u8]>,
    req: &PutRequest,
) -> Result<(), KvError> {
    check_put_key(src, req)?;
    if req.lease != 0 && !lease::lease_exists(leases, req.lease)? {
        return Err(MvccError::LeaseNotFound.into());
    }
    Ok(())
}

fn put(w: &mut Writer<'_, '_>, req: &PutRequest, events: &mut Vec<Event>) -> Result<PutResponse, KvError> {
    let rev = w.rev;
    let (prev, version) = w.write_put(&req.key, |prev| Version {
        tombstone: false,
        create_revision: prev.map_or(rev as i64, |p| p.create_revision),
        version: prev.map_or(1, |p| p.version + 1),
        lease: match (prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        },
        value: match (prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        },
    })?;
    let written = read::key_value(req.key.clone(), rev, version);
    // The event keeps the previous version; the response copies it only when asked.
    let prev_kv = if req.prev_kv { prev.clone() } else { None };
    events.push(Event { r#type: event::EventType::Put as i32, kv: Some(written), prev_kv: prev });
    Ok(PutResponse { header: None, prev_kv })
}

fn delete_range(
    w: &mut Writer<'_, '_>,
    req: &DeleteRangeRequest,
    events: &mut Vec<Event>,
) -> Result<DeleteRangeResponse, KvError> {
    let span = Span::new(&req.key, &req.range_end);
    let mut doomed = Vec::new();
    w.src().for_each_live(&span, u64::MAX, |found| {
        doomed.push(found);
        true
    })?;
    for found in &doomed {
        w.write_tombstone(&found.key)?;
        let gone = KeyValue { key: found.key.clone(), mod_revision: w.rev as i64, ..Default::default() };
        events.push(Event {
            r#type: event::EventType::Delete as i32,
            kv: Some(gone),
            prev_kv: Some(found.clone()),
        });
    }
    Ok(DeleteRangeResponse {
        header: None,
        deleted: doomed.len() as i64,
        prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
    })
}

/// Decides every compare on the path before anything is written, as etcd does.
fn decide_path(src: &Source<'_, impl read::Rows>, req: &TxnRequest) -> Result<Path, StorageError> {
    let mut succeeded = true;
    for c in &req.compare {
        if !read::compare_holds(src, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &req.success } else { &req.failure };
    let mut nested = Vec::new();
    for op in ops {
        if let Some(request_op::Request::RequestTxn(t)) = &op.request {
            nested.push(decide_path(src, t)?);
        }
    }
    Ok(Path { succeeded, nested })
}

/// Checks the ops on the taken path against the state before the Txn, so that a
/// Txn that fails does so before its first write.
fn check_path(
    src: &Source<'_, impl read::Rows>,
    leases: &impl ReadableTable<i64, &'static [u8]>,
    req: &TxnRequest,
    path: &Path,
    view: ReadView,
) -> Result<(), KvError> {
    let ops = if path.succeeded { &req.success } else { &req.failure };
    let mut nested = path.nested.iter();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                if r.revision > view.current {
                    return Err(MvccError::FutureRevision.into());
                }
                if r.revision > 0 && r.revision < view.compacted {
                    return Err(MvccError::Compacted.into());
                }
            }
            Some(request_op::Request::RequestPut(p)) => check_put_state(src, leases, p)?,
            Some(request_op::Request::RequestTxn(t)) => {
                let sub = nested.next().expect("a decided path has a node for each nested txn");
                check_path(src, leases, t, sub, view)?;
            }
            Some(request_op::Request::RequestDeleteRange(_)) | None => {}
        }
    }
    Ok(())
}

/// Executes a Txn along a decided path.
struct Exec<'e> {
    changed: bool,
    view: ReadView,
    events: &'e mut Vec<Event>,
}

impl Exec<'_> {
    fn txn(&mut self, w: &mut Writer<'_, '_>, req: &TxnRequest, path: &Path) -> Result<TxnResponse, KvError> {
        let ops = if path.succeeded { &req.success } else { &req.failure };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.op(w, op, &mut nested)?);
        }
        Ok(TxnResponse { header: None, succeeded: path.succeeded, responses })
    }

    fn op<'p>(
        &mut self,
        w: &mut Writer<'_, '_>,
        op: &RequestOp,
        nested: &mut impl Iterator<Item = &'p Path>,
    ) -> Result<ResponseOp, KvError> {
        let header = |changed: bool, view: ReadView| ResponseHeader {
            revision: view.current + i64::from(changed),
            ..Default::default()
        };
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                let view = ReadView { current: self.view.current + i64::from(self.changed), ..self.view };
                let mut resp = read::range(&w.src(), r, view)?;
                resp.header = Some(header(self.changed, self.view));
                response_op::Response::ResponseRange(resp)
            }
            Some(request_op::Request::RequestPut(p)) => {
                let mut resp = put(w, p, self.events)?;
                self.changed = true;
                resp.header = Some(header(true, self.view));
                response_op::Response::ResponsePut(resp)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                let mut resp = delete_range(w, d, self.events)?;
                self.changed |= resp.deleted > 0;
                resp.header = Some(header(self.changed, self.view));
                response_op::Response::ResponseDeleteRange(resp)
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let sub = nested.next().expect("a decided path has a node for each nested txn");
                let mut resp = self.txn(w, t, sub)?;
                resp.header = Some(header(self.changed, self.view));
                response_op::Response::ResponseTxn(resp)
            }
            None => return Err(MvccError::KeyNotFound.into()),
        };
        Ok(ResponseOp { response: Some(response) })
    }
}
