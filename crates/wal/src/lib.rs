//! A segmented, append-only, checksummed write-ahead log.
//!
//! This crate owns the Raft log's disk format: numbered records (`index`,
//! bytes) appended to segment files, made durable with one `fdatasync` per
//! group of appends, read back by index, cut at the tail (`truncate_from`)
//! and dropped from the head (`purge_to`). It also owns the small files that
//! hold single values beside the log (`meta`: the vote, the committed id).
//!
//! It knows nothing about Raft, openraft or what the records mean: `store`
//! encodes entries and decides when to sync. It depends on no other fivefold
//! crate.
//!
//! Modules: `record` (the byte format of one record and its checksum),
//! `segment` (one file of records: create, scan and recover, cut), `log`
//! (the segments together: [`Wal`] for the one writer, [`WalReader`] for
//! everyone else), `meta` (atomically replaced single-value files).
//!
//! Crash consistency: a record is `len | crc | index | payload`, the crc
//! covering index and payload. Opening scans every segment; a torn or
//! half-written record at the end of the last segment (a crash during an
//! append that was never acknowledged) is cut off; a bad record anywhere else
//! is corruption and opening fails with where it is.

mod log;
pub mod meta;
mod record;
mod segment;

pub use log::{Recovered, Wal, WalOptions, WalReader, ZERO_AHEAD_BYTES};
pub use record::RECORD_BYTES_MAX;
pub use segment::SEGMENT_BYTES_TARGET;

use std::path::PathBuf;

/// What can go wrong with the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("wal io on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("wal corrupt: {path} at byte {offset}: {reason}; the log cannot be trusted, restore this member from a snapshot or replace it")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("wal append out of order: index {got} after {last}")]
    OutOfOrder { last: u64, got: u64 },
    #[error("wal record of {bytes} bytes exceeds the {max}-byte limit")]
    RecordTooLarge { bytes: usize, max: usize },
    #[error("wal entry {index} is not in the log (it holds {first}..={last})")]
    Missing { index: u64, first: u64, last: u64 },
}

impl WalError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> WalError {
        let path = path.into();
        move |source| WalError::Io { path, source }
    }
}

pub type Result<T> = std::result::Result<T, WalError>;
