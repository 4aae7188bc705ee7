//! The whole state as one byte stream, for Raft snapshots.
//!
//! Format: the magic line, then records `tag u8 | key_len u32 | key | value_len
//! u32 | value` (lengths little-endian), then the end tag and a CRC-32 of every
//! byte before it. Installing verifies the checksum before the new state is
//! committed, so a torn or corrupt snapshot never replaces good state.

use std::io::{Read, Write};

use redb::{ReadableTable, TableDefinition};

use crate::error::StorageError;
use crate::lease::{LEASES, LEASE_KEYS};
use crate::maintenance::ALARMS;
use crate::store::{MvccStore, KV_BY_REV, LEGACY_KV, LEGACY_REVS, MEMBERS, META};

/// The stream's first line. Version 2 holds revision-keyed rows; version 1
/// (the legacy layout) is still read.
const MAGIC: &[u8] = b"FIVEFOLD-MVCC-SNAPSHOT-2\n";
const MAGIC_V1: &[u8] = b"FIVEFOLD-MVCC-SNAPSHOT-1\n";
/// A row of the legacy layout (key, revision); read, no longer written.
const TAG_LEGACY_KV: u8 = 1;
const TAG_META: u8 = 2;
const TAG_MEMBER: u8 = 3;
/// The legacy layout's keys of one revision; read, no longer written.
const TAG_LEGACY_REV: u8 = 4;
const TAG_LEASE: u8 = 5;
const TAG_LEASE_KEY: u8 = 6;
const TAG_ALARM: u8 = 7;
/// A row of the revision-keyed table: a 16-byte big-endian row key, the row.
const TAG_KV_BY_REV: u8 = 8;
const TAG_END: u8 = 0xFF;
/// No single record field may claim more than this (a corrupt length must not
/// make the reader allocate without bound).
const FIELD_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// What a written snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub rows: u64,
    pub bytes: u64,
}

/// The values of the layer above (keys under `META_EXTERNAL_PREFIX`) as of the
/// snapshot: Raft's applied log id and membership must describe exactly the
/// state the snapshot holds, so they are read in the same transaction.
pub type ExternalMeta = Vec<(String, Vec<u8>)>;

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.crc.update(data);
        self.bytes += data.len() as u64;
        self.inner.write_all(data)
    }

    fn record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.put(&[tag])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)
    }
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<R: Read> CrcReader<R> {
    fn take(&mut self, n: usize) -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0; n];
        self.inner.read_exact(&mut buf)?;
        self.crc.update(&buf);
        self.bytes += n as u64;
        Ok(buf)
    }

    fn field(&mut self) -> Result<Vec<u8>, StorageError> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default());
        if len > FIELD_BYTES_MAX {
            return Err(StorageError(format!("snapshot field of {len} bytes is corrupt")));
        }
        self.take(len as usize)
    }
}

/// A consistent view of the whole state, held open so that its bytes can be
/// written later (or never): taking one costs a read transaction, not a copy.
/// While it lives, the pages it sees are not reused, so the file may grow.
pub struct SnapshotView {
    txn: redb::ReadTransaction,
}

impl std::fmt::Debug for SnapshotView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotView").finish_non_exhaustive()
    }
}

impl MvccStore {
    /// Takes a consistent view of the state as it is now.
    ///
    /// Everything the view holds is made durable first, so that the log
    /// behind it may be purged: a restart never needs an entry it covers.
    pub fn snapshot_view(&self) -> Result<SnapshotView, StorageError> {
        let txn = self.begin_read()?;
        self.persist()?;
        Ok(SnapshotView { txn })
    }

    /// Writes a consistent snapshot of the whole state to `out`.
    pub fn write_snapshot(&self, out: impl Write) -> Result<(SnapshotSummary, ExternalMeta), StorageError> {
        let view = self.snapshot_view()?;
        let summary = view.write(out)?;
        Ok((summary, view.external_meta()?))
    }
}

impl SnapshotView {
    /// The values of the layer above as of this view.
    pub fn external_meta(&self) -> Result<ExternalMeta, StorageError> {
        let mut external = Vec::new();
        for row in self.txn.open_table(META)?.iter()? {
            let (k, v) = row?;
            if k.value().starts_with(crate::store::META_EXTERNAL_PREFIX) {
                external.push((k.value().to_string(), v.value().to_vec()));
            }
        }
        Ok(external)
    }

    /// Writes the view as a snapshot stream to `out`, a record at a time.
    pub fn write(&self, out: impl Write) -> Result<SnapshotSummary, StorageError> {
        let txn = &self.txn;
        let mut w = CrcWriter { inner: out, crc: crc32fast::Hasher::new(), bytes: 0 };
        w.put(MAGIC)?;
        let mut rows = 0;
        for row in txn.open_table(KV_BY_REV)?.iter()? {
            let (k, v) = row?;
            w.record(TAG_KV_BY_REV, &k.value().to_be_bytes(), v.value())?;
            rows += 1;
        }
        for row in txn.open_table(META)?.iter()? {
            let (k, v) = row?;
            w.record(TAG_META, k.value().as_bytes(), v.value())?;
        }
        for row in txn.open_table(MEMBERS)?.iter()? {
            let (k, v) = row?;
            w.record(TAG_MEMBER, &k.value().to_be_bytes(), v.value())?;
        }
        for row in txn.open_table(LEASES)?.iter()? {
            let (k, v) = row?;
            w.record(TAG_LEASE, &k.value().to_be_bytes(), v.value())?;
        }
        for row in txn.open_table(LEASE_KEYS)?.iter()? {
            let (k, v) = row?;
            w.record(TAG_LEASE_KEY, k.value(), v.value())?;
        }
        for row in txn.open_table(ALARMS)?.iter()? {
            let (k, v) = row?;
            w.record(TAG_ALARM, k.value(), v.value())?;
        }
        w.put(&[TAG_END])?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())?;
        w.inner.flush()?;
        Ok(SnapshotSummary { rows, bytes: w.bytes + 4 })
    }
}

impl MvccStore {
    /// Replaces the whole state with a snapshot read from `input`, durably.
    /// On any error the old state stays as it was.
    pub fn install_snapshot(&self, input: impl Read) -> Result<SnapshotSummary, StorageError> {
        let mut r = CrcReader { inner: input, crc: crc32fast::Hasher::new(), bytes: 0 };
        let magic = r.take(MAGIC.len())?;
        if magic != MAGIC && magic != MAGIC_V1 {
            return Err(StorageError("not a fivefold snapshot (bad magic)".into()));
        }
        let mut txn = self.begin_write()?;
        clear(&txn, KV_BY_REV)?;
        clear(&txn, LEGACY_KV)?;
        clear(&txn, META)?;
        clear(&txn, MEMBERS)?;
        clear(&txn, LEGACY_REVS)?;
        clear(&txn, LEASES)?;
        clear(&txn, LEASE_KEYS)?;
        clear(&txn, ALARMS)?;
        let mut rows = 0;
        {
            let mut kv = txn.open_table(KV_BY_REV)?;
            let mut legacy_kv = txn.open_table(LEGACY_KV)?;
            let mut meta = txn.open_table(META)?;
            let mut members = txn.open_table(MEMBERS)?;
            let mut legacy_revs = txn.open_table(LEGACY_REVS)?;
            let mut leases = txn.open_table(LEASES)?;
            let mut lease_keys = txn.open_table(LEASE_KEYS)?;
            let mut alarms = txn.open_table(ALARMS)?;
            loop {
                let tag = r.take(1)?[0];
                if tag == TAG_END {
                    break;
                }
                let key = r.field()?;
                let value = r.field()?;
                match tag {
                    TAG_KV_BY_REV => {
                        let row: [u8; 16] = key
                            .try_into()
                            .map_err(|_| StorageError("snapshot row key is not 16 bytes".into()))?;
                        crate::encoding::row_key_of(&value)?;
                        kv.insert(u128::from_be_bytes(row), value.as_slice())?;
                        rows += 1;
                    }
                    TAG_LEGACY_KV => {
                        legacy_kv.insert(key.as_slice(), value.as_slice())?;
                        rows += 1;
                    }
                    TAG_META => {
                        let name = String::from_utf8(key)
                            .map_err(|_| StorageError("snapshot meta key is not UTF-8".into()))?;
                        meta.insert(name.as_str(), value.as_slice())?;
                    }
                    TAG_MEMBER => {
                        let id: [u8; 8] = key
                            .try_into()
                            .map_err(|_| StorageError("snapshot member id is not 8 bytes".into()))?;
                        members.insert(u64::from_be_bytes(id), value.as_slice())?;
                    }
                    TAG_LEGACY_REV => {
                        let rev: [u8; 8] = key
                            .try_into()
                            .map_err(|_| StorageError("snapshot revision is not 8 bytes".into()))?;
                        legacy_revs.insert(u64::from_be_bytes(rev), value.as_slice())?;
                    }
                    TAG_LEASE => {
                        let id: [u8; 8] = key
                            .try_into()
                            .map_err(|_| StorageError("snapshot lease id is not 8 bytes".into()))?;
                        leases.insert(i64::from_be_bytes(id), value.as_slice())?;
                    }
                    TAG_LEASE_KEY => {
                        lease_keys.insert(key.as_slice(), value.as_slice())?;
                    }
                    TAG_ALARM => {
                        alarms.insert(key.as_slice(), value.as_slice())?;
                    }
                    other => return Err(StorageError(format!("unknown snapshot record tag {other}"))),
                }
            }
        }
        let expected = r.crc.clone().finalize();
        let mut stored = [0u8; 4];
        r.inner.read_exact(&mut stored)?;
        if u32::from_le_bytes(stored) != expected {
            return Err(StorageError("snapshot checksum mismatch".into()));
        }
        // A snapshot from a member still on the legacy layout.
        crate::store::migrate_legacy(&txn)?;
        // The new index is built before the commit, so a failure leaves the
        // old state and index as they were.
        let rebuilt = crate::store::build_index(&txn.open_table(META)?, &txn.open_table(KV_BY_REV)?)?;
        txn.set_durability(redb::Durability::Immediate)?;
        // Readers take the index before their transaction: none pairs the
        // new rows with the old index or the reverse.
        let mut index = self.index_mut();
        txn.commit()?;
        *index = rebuilt;
        drop(index);
        let (revision, _) = self.revisions()?;
        self.reset_revision(revision);
        Ok(SnapshotSummary { rows, bytes: r.bytes + 4 })
    }
}

/// The sector size etcd's snapshot files are padded to.
const SEAL_ALIGN: usize = 512;
const SHA256_LEN: usize = 32;

/// Writes a snapshot sealed for `etcdctl snapshot save`, which expects etcd's
/// file shape: data padded to a multiple of 512 bytes, then its SHA-256.
/// Hashes what passes through; `finish` pads and appends the digest.
pub struct Sealer<W> {
    inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> Sealer<W> {
    /// A sealer writing to `inner`.
    pub fn new(inner: W) -> Sealer<W> {
        Sealer { inner, hasher: <sha2::Sha256 as sha2::Digest>::new(), bytes: 0 }
    }

    /// Pads the data to the seal's alignment, appends the digest, and returns
    /// the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        let pad = (self.bytes as usize).div_ceil(SEAL_ALIGN) * SEAL_ALIGN - self.bytes as usize;
        self.write_all(&vec![0; pad])?;
        let digest = sha2::Digest::finalize(self.hasher);
        self.inner.write_all(&digest)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks the seal of a sealed file and returns the snapshot inside; a file
/// without a seal (a raw snapshot) is returned as it is.
pub fn unseal(file: &[u8]) -> Result<&[u8], StorageError> {
    if file.len() % SEAL_ALIGN != SHA256_LEN {
        return Ok(file);
    }
    let (data, stored) = file.split_at(file.len() - SHA256_LEN);
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(data));
    if digest.as_slice() != stored {
        return Err(StorageError("snapshot file SHA-256 mismatch: the file is corrupt".into()));
    }
    Ok(data)
}

impl MvccStore {
    /// Forgets the values of the layer above (Raft's applied id and
    /// membership) and the published member attributes: what `snapshot
    /// restore` does so that a new cluster starts from the data alone.
    pub fn forget_cluster(&self) -> Result<(), StorageError> {
        let mut txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.retain(|k, _| !k.starts_with(crate::store::META_EXTERNAL_PREFIX))?;
        }
        clear(&txn, MEMBERS)?;
        clear(&txn, ALARMS)?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }
}

fn clear<K: redb::Key + 'static>(
    txn: &redb::WriteTransaction,
    table: TableDefinition<K, &'static [u8]>,
) -> Result<(), StorageError> {
    let mut t = txn.open_table(table)?;
    t.retain(|_, _| false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_have_etcds_shape_and_detect_corruption() {
        let raw = b"FIVEFOLD-MVCC-SNAPSHOT-1\nrest".to_vec();
        let mut sealer = Sealer::new(Vec::new());
        sealer.write_all(&raw).unwrap();
        let mut data = sealer.finish().unwrap();
        assert_eq!(data.len() % 512, 32);
        assert!(unseal(&data).unwrap().starts_with(&raw));
        data[3] ^= 1;
        assert!(unseal(&data).is_err());
        assert_eq!(unseal(&raw).unwrap(), &raw[..]);
    }
}
