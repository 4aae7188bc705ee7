//! The Raft state machine: committed entries applied to the MVCC store, and
//! snapshots of it.
//!
//! The MVCC database commits lazily: an apply's transaction may stay open for
//! later applies until something reads (`mvcc::ApplyBatch::finish`), and a
//! durable commit comes at most every `PERSIST_INTERVAL`; on restart openraft
//! re-applies the log from the applied id the database last made durable.
//!
//! Snapshots cost nothing until a follower needs one. The MVCC database is
//! itself the durable state, so "building" a snapshot (which openraft does to
//! purge the log) only makes the database durable and records the applied id
//! it holds (`snap/snapshot.meta`); openraft keeps only that meta. When the
//! current snapshot is asked for (to send to a follower, or at start to learn
//! its meta), it is a consistent view of the database at that moment, made
//! durable first, whose meta is the applied id and membership the view itself
//! holds — so meta and data always agree, and the log behind the meta is
//! never needed again. Its bytes are written to an unnamed file only when
//! read (`snapshot_data`), so neither a start nor a snapshot point copies the
//! state, and no snapshot is ever held in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_proto::fivefoldpb::{
    command, command_response, Command, CommandBatchResponse, CommandResponse, Empty,
};
use mvcc::MvccStore;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use serde::de::DeserializeOwned;

use crate::lessor::Lessor;
use crate::metrics::StoreMetrics;
use crate::snapshot_data::SnapshotFile;
use crate::types::{
    payload_bytes, Entry, LogId, Request, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::watch_hub::WatchHub;

/// Commands one apply may run on a runtime worker without handing it over.
pub const APPLY_INLINE_COMMANDS_MAX: usize = 64;

fn commands_in(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(Request(Command { kind: Some(command::Kind::Batch(batch)) })) => {
            batch.commands.len()
        }
        _ => 1,
    }
}

/// Runs `f` here when `inline`, else with the worker handed to the runtime.
fn on_worker_or_blocking<T>(inline: bool, f: impl FnOnce() -> T) -> T {
    if inline {
        f()
    } else {
        tokio::task::block_in_place(f)
    }
}

/// Longest time applied state may stay only in memory. Bounds how much log a
/// restart re-applies; durability itself comes from the log.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// Payload bytes applied after which a durable commit is due even before
/// `PERSIST_INTERVAL`: redb keeps the pages of non-durable commits in its
/// write buffer (up to half its cache) and writes them all at the durable
/// commit while applies wait. Loading 64 KiB values, those commits took
/// 210–330 ms once a second; with this bound, 20–100 ms.
pub const PERSIST_BYTES: usize = 8 * 1024 * 1024;
/// A durable commit of the state machine taking longer is logged (etcd's
/// threshold for a slow apply).
const SLOW_DURABLE_COMMIT: Duration = Duration::from_millis(100);

const META_APPLIED: &str = "ext/raft_applied";
const META_MEMBERSHIP: &str = "ext/raft_membership";
const SNAPSHOT_META_FILE: &str = "snapshot.meta";
/// Read buffer when installing a snapshot from its file.
const SNAPSHOT_READ_BUFFER_BYTES: usize = 1024 * 1024;
/// Written by versions that kept a full copy per snapshot; removed when seen.
const OLD_SNAPSHOT_DATA_FILE: &str = "snapshot.data";

fn sm_error(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, std::io::Error::other(e.to_string()))
}

fn snap_error(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(None), verb, std::io::Error::other(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    bincode::deserialize(bytes).map_err(|e| sm_error(ErrorVerb::Read, e))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(value).map_err(|e| sm_error(ErrorVerb::Write, e))
}

pub struct StateMachine {
    mvcc: Arc<MvccStore>,
    watch_hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    snapshot_dir: PathBuf,
    last_durable: Instant,
    /// Payload bytes applied since the last durable commit.
    bytes_since_durable: usize,
    metrics: Arc<StoreMetrics>,
}

impl StateMachine {
    pub fn new(
        mvcc: Arc<MvccStore>,
        watch_hub: Arc<WatchHub>,
        lessor: Arc<Lessor>,
        snapshot_dir: &Path,
        metrics: Arc<StoreMetrics>,
    ) -> Result<StateMachine, std::io::Error> {
        std::fs::create_dir_all(snapshot_dir)?;
        let leases = mvcc.leases().map_err(|e| std::io::Error::other(e.to_string()))?;
        lessor.load(&leases);
        Ok(StateMachine {
            mvcc,
            watch_hub,
            lessor,
            snapshot_dir: snapshot_dir.to_path_buf(),
            last_durable: Instant::now(),
            bytes_since_durable: 0,
            metrics,
        })
    }

    /// Whether this apply commits durably: once `PERSIST_INTERVAL` has
    /// passed, or `PERSIST_BYTES` were applied since the last durable commit.
    fn durable_now(&self) -> bool {
        self.last_durable.elapsed() >= PERSIST_INTERVAL || self.bytes_since_durable >= PERSIST_BYTES
    }
}

fn empty_response(revision: i64) -> Response {
    Response(CommandResponse { kind: Some(command_response::Kind::Empty(Empty {})), revision })
}

/// Records `meta` as the latest snapshot (replaced atomically, durably), and
/// drops a data file left by earlier versions.
fn save_meta(dir: &Path, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let bytes = bincode::serialize(meta).map_err(|e| snap_error(ErrorVerb::Write, e))?;
    wal::meta::write(&dir.join(SNAPSHOT_META_FILE), &bytes, true)
        .map_err(|e| snap_error(ErrorVerb::Write, e))?;
    match std::fs::remove_file(dir.join(OLD_SNAPSHOT_DATA_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(snap_error(ErrorVerb::Write, e)),
        _ => Ok(()),
    }
}

/// The applied log id and membership the database holds (as of its last
/// commit).
fn applied_in(mvcc: &MvccStore) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    raft_meta(|key| mvcc.get_meta(key).map_err(|e| sm_error(ErrorVerb::Read, e)))
}

/// The applied log id and membership, decoded from what `read` finds under
/// their meta keys.
fn raft_meta(
    read: impl Fn(&str) -> Result<Option<Vec<u8>>, StorageError>,
) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let applied: Option<LogId> = read(META_APPLIED)?.map(|b| decode(&b)).transpose()?.flatten();
    let membership: StoredMembership =
        read(META_MEMBERSHIP)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
    Ok((applied, membership))
}

fn has_snapshot(dir: &Path) -> bool {
    dir.join(SNAPSHOT_META_FILE).exists()
}

/// A snapshot of the database as it is now: durable first, its meta read
/// from the same view its bytes will be written from.
fn current_snapshot(mvcc: &MvccStore, dir: &Path) -> Result<Snapshot, StorageError> {
    let view = mvcc.snapshot_view().map_err(|e| snap_error(ErrorVerb::Read, e))?;
    let external = view.external_meta().map_err(|e| snap_error(ErrorVerb::Read, e))?;
    let (last_log_id, last_membership) =
        raft_meta(|key| Ok(external.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())))?;
    // Two views at one applied id hold the same state, so the id names it.
    let snapshot_id = match last_log_id {
        Some(id) => format!("{}-{}", id.leader_id.term, id.index),
        None => "empty".to_string(),
    };
    let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
    Ok(Snapshot { meta, snapshot: Box::new(SnapshotFile::deferred(view, dir)) })
}

/// "Builds" snapshots: makes the database durable and records what it holds.
pub struct SnapshotBuilder {
    mvcc: Arc<MvccStore>,
    snapshot_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// openraft keeps only the meta of a built snapshot (it reads data with
    /// `get_current_snapshot`), so none is produced here.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        tokio::task::block_in_place(|| {
            let started = Instant::now();
            let snapshot = current_snapshot(&self.mvcc, &self.snapshot_dir)?;
            save_meta(&self.snapshot_dir, &snapshot.meta)?;
            tracing::info!(
                last_log_id = ?snapshot.meta.last_log_id,
                took = ?started.elapsed(),
                "snapshot point recorded (state made durable)"
            );
            Ok(snapshot)
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        applied_in(&self.mvcc)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let durable = self.durable_now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        if !durable {
            // A durable commit starts the count again.
            self.bytes_since_durable += entries.iter().map(payload_bytes).sum::<usize>();
        }
        let commands: usize = entries.iter().map(commands_in).sum();
        // A small batch applies on this task: handing the worker thread over
        // (block_in_place) costs more than the work. A big one, or a durable
        // commit (an fsync), moves off the runtime's worker.
        let inline = !durable && commands <= APPLY_INLINE_COMMANDS_MAX;
        let responses = on_worker_or_blocking(inline, || {
            let apply_started = Instant::now();
            let mut batch = self.mvcc.begin_apply().map_err(|e| sm_error(ErrorVerb::Write, e))?;
            let mut responses = Vec::new();
            let mut last: Option<LogId> = None;
            let mut membership: Option<StoredMembership> = None;
            for entry in entries {
                if let Some(prev) = last {
                    assert!(
                        entry.log_id.index == prev.index + 1,
                        "entries are applied in order, without gaps"
                    );
                }
                last = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(empty_response(batch.revision())),
                    EntryPayload::Normal(Request(Command {
                        kind: Some(command::Kind::Batch(proposals)),
                    })) => {
                        let each = batch
                            .apply_all(&proposals.commands)
                            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
                        let kind = command_response::Kind::Batch(CommandBatchResponse { responses: each });
                        responses
                            .push(Response(CommandResponse { kind: Some(kind), revision: batch.revision() }));
                    }
                    EntryPayload::Normal(request) => {
                        let response = batch.apply(&request.0).map_err(|e| sm_error(ErrorVerb::Write, e))?;
                        responses.push(Response(response));
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                        responses.push(empty_response(batch.revision()));
                    }
                }
            }
            let put = |batch: &mut mvcc::ApplyBatch<'_>, key: &str, bytes: Vec<u8>| {
                batch.put_meta(key, &bytes).map_err(|e| sm_error(ErrorVerb::Write, e))
            };
            if last.is_some() {
                put(&mut batch, META_APPLIED, encode(&last)?)?;
            }
            if let Some(m) = &membership {
                put(&mut batch, META_MEMBERSHIP, encode(m)?)?;
            }
            let started = Instant::now();
            let how = if durable { mvcc::Finish::Durable } else { mvcc::Finish::Lazy };
            let committed = batch.finish(how).map_err(|e| sm_error(ErrorVerb::Write, e))?;
            if durable {
                let took = started.elapsed();
                self.metrics.backend_commit.observe(took);
                if took >= SLOW_DURABLE_COMMIT {
                    // Applies wait for it: clients see it as write latency.
                    tracing::warn!(?took, "making the applied state durable was slow");
                }
            }
            // Watchers see a change once it is applied; a read it prompts
            // commits it to the engine first, if its transaction is open.
            self.lessor.apply(&committed.lease_changes);
            self.watch_hub.publish(committed.events, committed.revision, committed.compacted);
            self.metrics.apply.observe(apply_started.elapsed());
            Ok::<_, StorageError>(responses)
        })?;
        if durable {
            self.last_durable = Instant::now();
            self.bytes_since_durable = 0;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { mvcc: self.mvcc.clone(), snapshot_dir: self.snapshot_dir.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let file = SnapshotFile::empty_in(&self.snapshot_dir).map_err(|e| snap_error(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await.map_err(|e| snap_error(ErrorVerb::Read, e))?;
        tokio::task::block_in_place(|| {
            let input = std::io::BufReader::with_capacity(SNAPSHOT_READ_BUFFER_BYTES, file);
            let summary = self.mvcc.install_snapshot(input).map_err(|e| snap_error(ErrorVerb::Write, e))?;
            // The snapshot carries the applied id and membership it was built at;
            // set them from the meta openraft trusts, durably.
            let mut batch = self.mvcc.begin_apply().map_err(|e| sm_error(ErrorVerb::Write, e))?;
            batch
                .put_meta(META_APPLIED, &encode(&meta.last_log_id)?)
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
            batch
                .put_meta(META_MEMBERSHIP, &encode(&meta.last_membership)?)
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
            batch.commit(true).map_err(|e| sm_error(ErrorVerb::Write, e))?;
            save_meta(&self.snapshot_dir, meta)?;
            let (revision, compacted) = self.mvcc.revisions().map_err(|e| sm_error(ErrorVerb::Read, e))?;
            self.watch_hub.reset(revision, compacted);
            self.lessor.load(&self.mvcc.leases().map_err(|e| sm_error(ErrorVerb::Read, e))?);
            tracing::info!(last_log_id = ?meta.last_log_id, rows = summary.rows, "installed snapshot");
            Ok(())
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        if !has_snapshot(&self.snapshot_dir) {
            return Ok(None);
        }
        tokio::task::block_in_place(|| current_snapshot(&self.mvcc, &self.snapshot_dir)).map(Some)
    }
}
