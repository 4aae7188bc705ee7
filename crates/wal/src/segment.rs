//! One segment file: records with consecutive indexes, named by the first.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::record::{self, Decoded};
use crate::{Result, WalError};

/// A segment takes no new appends once it holds this many bytes; the next
/// append starts a new file. Purging drops whole segments, so this is also
/// the granularity at which disk space comes back.
pub const SEGMENT_BYTES_TARGET: u64 = 64 * 1024 * 1024;

const SUFFIX: &str = ".wal";

pub fn file_name(first_index: u64) -> String {
    format!("{first_index:020}{SUFFIX}")
}

/// The first index a segment file name carries, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Makes a directory's entries (files created, renamed, removed) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(WalError::io(dir))
}

pub struct Segment {
    pub path: PathBuf,
    pub file: Arc<File>,
    pub first_index: u64,
    /// Start of each record; record `i` holds `first_index + i`.
    pub offsets: Vec<u64>,
    /// End of the last whole record: where the next append goes.
    pub end: u64,
}

/// What opening a segment found.
pub struct Scan {
    pub segment: Segment,
    /// Bytes cut off the end (a torn last append), 0 when clean.
    pub torn_bytes: u64,
}

impl Segment {
    /// Creates an empty segment whose first record will be `first_index`,
    /// with `bytes` of space preallocated.
    pub fn create(dir: &Path, first_index: u64, bytes: u64) -> Result<Segment> {
        let path = dir.join(file_name(first_index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(WalError::io(&path))?;
        let segment = Segment { path, file: Arc::new(file), first_index, offsets: Vec::new(), end: 0 };
        segment.preallocate(bytes)?;
        sync_dir(dir)?;
        Ok(segment)
    }

    /// Makes the file at least `bytes` long with allocated (zeroed) space,
    /// durably, so appends within it change no file metadata but the extent
    /// state. Zeros after the last record read as the end of the records.
    pub fn preallocate(&self, bytes: u64) -> Result<()> {
        let length = self.file.metadata().map_err(WalError::io(&self.path))?.len();
        if length >= bytes {
            return Ok(());
        }
        rustix::fs::fallocate(&*self.file, rustix::fs::FallocateFlags::empty(), length, bytes - length)
            .map_err(|e| WalError::Io { path: self.path.clone(), source: e.into() })?;
        self.file.sync_all().map_err(WalError::io(&self.path))
    }

    /// Gives back the preallocated space after the last record (a segment
    /// that takes no more appends), durably.
    pub fn seal(&self) -> Result<()> {
        self.file.set_len(self.end).map_err(WalError::io(&self.path))?;
        self.file.sync_all().map_err(WalError::io(&self.path))
    }

    /// Opens and checks a segment. A damaged tail is cut off when `last` (it
    /// can only be an append that never finished, so never acknowledged);
    /// anywhere else it is corruption.
    pub fn open(path: &Path, first_index: u64, last: bool) -> Result<Scan> {
        let bytes = std::fs::read(path).map_err(WalError::io(path))?;
        let corrupt = |offset: usize, reason: String| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let mut offsets = Vec::new();
        let mut at = 0usize;
        let torn = loop {
            match record::decode(&bytes[at..]) {
                Decoded::End => break None,
                // Preallocated space never written.
                Decoded::Torn(_) if bytes[at..].iter().all(|b| *b == 0) => break None,
                Decoded::Torn(reason) => break Some(reason),
                Decoded::Record { index, bytes: len, .. } => {
                    let expected = first_index + offsets.len() as u64;
                    if index != expected {
                        return Err(corrupt(at, format!("record holds index {index}, expected {expected}")));
                    }
                    offsets.push(at as u64);
                    at += len;
                }
            }
        };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(WalError::io(path))?;
        let mut torn_bytes = 0;
        if let Some(reason) = torn {
            if !last {
                return Err(corrupt(at, reason.to_string()));
            }
            let dirty_end = bytes.iter().rposition(|b| *b != 0).map_or(at, |p| p + 1);
            torn_bytes = (dirty_end - at) as u64;
            tracing::warn!(path = %path.display(), offset = at, torn_bytes, reason, "cutting a torn append off the log's tail");
            file.set_len(at as u64).map_err(WalError::io(path))?;
            file.sync_all().map_err(WalError::io(path))?;
        }
        let segment =
            Segment { path: path.to_path_buf(), file: Arc::new(file), first_index, offsets, end: at as u64 };
        Ok(Scan { segment, torn_bytes })
    }

    pub fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first_index + self.offsets.len() as u64 - 1)
    }

    /// Byte range of the records `from..to` (positions in this segment).
    fn span(&self, from: usize, to: usize) -> (u64, u64) {
        let start = self.offsets[from];
        let end = self.offsets.get(to).copied().unwrap_or(self.end);
        (start, end)
    }

    /// The end position `hi` in `from + 1..=to` of the longest run of records
    /// from `from` whose payloads fit in `bytes` (always at least one record).
    pub fn fit(&self, from: usize, to: usize, bytes: u64) -> usize {
        let header = crate::record::HEADER_BYTES as u64;
        let start = self.offsets[from];
        // Records `from..hi` span up to where record `hi` starts, one header each.
        let payloads = |hi: usize| {
            let (_, end) = self.span(from, hi);
            end - start - header * (hi - from) as u64
        };
        (from + 2..=to).find(|&hi| payloads(hi) > bytes).map_or(to, |hi| hi - 1)
    }

    /// The payload length of the record at `position`.
    pub fn payload_len(&self, position: usize) -> u64 {
        let (start, end) = self.span(position, position + 1);
        end - start - crate::record::HEADER_BYTES as u64
    }

    /// Reads the records at positions `from..to`, checking each.
    pub fn read(&self, from: usize, to: usize, out: &mut Vec<(u64, Vec<u8>)>) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let (start, end) = self.span(from, to);
        let mut bytes = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut bytes, start).map_err(WalError::io(&self.path))?;
        let mut at = 0usize;
        for position in from..to {
            let expected = self.first_index + position as u64;
            match record::decode(&bytes[at..]) {
                Decoded::Record { index, payload, bytes: len } if index == expected => {
                    out.push((index, payload.to_vec()));
                    at += len;
                }
                other => {
                    return Err(WalError::Corrupt {
                        path: self.path.clone(),
                        offset: start + at as u64,
                        reason: format!("reading index {expected}: {other:?}"),
                    })
                }
            }
        }
        Ok(())
    }

    /// Keeps only the records before position `keep`, durably.
    pub fn cut(&mut self, keep: usize) -> Result<()> {
        if keep >= self.offsets.len() {
            return Ok(());
        }
        let end = self.offsets[keep];
        self.file.set_len(end).map_err(WalError::io(&self.path))?;
        self.file.sync_all().map_err(WalError::io(&self.path))?;
        self.offsets.truncate(keep);
        self.end = end;
        Ok(())
    }
}
