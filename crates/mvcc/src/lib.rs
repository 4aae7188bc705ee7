//! MVCC: etcd's key-value semantics on an ordered on-disk engine.
//!
//! Owns revisions (one per committed write), per-key `create_revision`,
//! `mod_revision` and `version`, reads at past revisions, Range with etcd's
//! count/filter/sort/limit rules, Txn compares and branches (nested too), the
//! duplicate-key and op-count checks, compaction, and snapshots of the whole
//! state as a byte stream.
//!
//! The layout is etcd's: every version of every key is a row of one redb
//! table keyed by revision, so a write appends at the table's end and the
//! pages a commit touches do not grow with the data; an in-memory index of
//! each key's revisions (`index`) finds the rows of a key, a range, or a past
//! revision, and is rebuilt from the rows when the store opens (see
//! `encoding`).
//!
//! Deterministic: given the same commands in the same order, every member
//! reaches byte-identical state. No async, no networking, and no knowledge of
//! Raft: the layer above stores its own bookkeeping through `put_meta`.
//!
//! Modules: `encoding` (row layout), `index` (each key's revisions, in
//! memory), `span` (key ranges), `validate`
//! (stateless request checks), `read` (range, compare), `apply` (the write
//! path, which also yields the events of each change), `history` (past
//! changes in revision order, for watchers), `lease` (leases and the keys
//! they hold; expiry timing is not here), `maintenance` (HashKV, alarms),
//! `snapshot` (export and install), `store` (the database), `error` (etcd's
//! codes and messages), `limits` (named limits).

pub mod apply;
pub mod encoding;
pub mod error;
pub mod history;
pub mod index;
pub mod lease;
pub mod limits;
pub mod maintenance;
pub mod read;
pub mod snapshot;
pub mod span;
pub mod store;
pub mod validate;

pub use apply::{ApplyBatch, Committed, Finish};
pub use error::{GrpcCode, MvccError, StorageError};
pub use lease::LeaseChange;
pub use snapshot::SnapshotView;
pub use store::{MvccStore, META_EXTERNAL_PREFIX};

/// A read or apply failure: a client error, or an engine failure.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(transparent)]
    Request(#[from] MvccError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<redb::StorageError> for KvError {
    fn from(e: redb::StorageError) -> Self {
        KvError::Storage(e.into())
    }
}
impl From<redb::TableError> for KvError {
    fn from(e: redb::TableError) -> Self {
        KvError::Storage(e.into())
    }
}
impl From<redb::TransactionError> for KvError {
    fn from(e: redb::TransactionError) -> Self {
        KvError::Storage(e.into())
    }
}
