//! The on-disk layout of the key space.
//!
//! Every version of every key is one row of the `kv_by_rev` table, keyed by
//! its revision and sub-revision (`rev << 32 | sub`, a `u128`): a write
//! appends at the end of the table, and a revision's changes are adjacent in
//! the order they were made. Which rows hold a key is the in-memory key index
//! (`index`), rebuilt from these rows when the store opens.
//!
//! A row's value is a fixed header, the key, and the user value:
//! `flags u8 | create_revision i64 | version i64 | lease i64 | key_len u32 |
//! key | value` (integers big-endian).
//!
//! Stores written before this layout kept rows keyed by `escape(key) ++ 0x00
//! 0x00 ++ revision` (the escaping maps `0x00` to `0x00 0xFF`) with the
//! version header and value, and a table of the keys each revision changed;
//! `row_key`, `split_row_key` and `decode_keys` read those for the one-time
//! migration (`store::migrate_legacy`).

use crate::error::StorageError;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x00;

const FLAG_TOMBSTONE: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 8 + 8;
const ROW_HEADER_LEN: usize = HEADER_LEN + 4;

/// The row key of the change `sub` of revision `rev`.
pub fn rev_row(rev: u64, sub: u32) -> u128 {
    (u128::from(rev) << 32) | u128::from(sub)
}

/// The revision and sub-revision of a row key.
pub fn split_rev_row(row: u128) -> (u64, u32) {
    ((row >> 32) as u64, row as u32)
}

/// Encodes a row: `version` of `key`.
pub fn encode_row(key: &[u8], version: &Version) -> Vec<u8> {
    let mut out = Vec::with_capacity(ROW_HEADER_LEN + key.len() + version.value.len());
    version.encode_header(&mut out);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&version.value);
    out
}

/// The key a row holds, without decoding its value.
pub fn row_key_of(bytes: &[u8]) -> Result<&[u8], StorageError> {
    let corrupt = || StorageError(format!("corrupt row of {} bytes", bytes.len()));
    let len_bytes: [u8; 4] =
        bytes.get(HEADER_LEN..ROW_HEADER_LEN).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    bytes.get(ROW_HEADER_LEN..ROW_HEADER_LEN + len).ok_or_else(corrupt)
}

/// Decodes a row into its key and version.
pub fn decode_row(bytes: &[u8]) -> Result<(Vec<u8>, Version), StorageError> {
    let key = row_key_of(bytes)?;
    let mut version = Version::decode_header(bytes)?;
    version.value = bytes[ROW_HEADER_LEN + key.len()..].to_vec();
    Ok((key.to_vec(), version))
}

/// Whether a row is a deletion, without decoding it.
pub fn row_is_tombstone(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|flags| flags & FLAG_TOMBSTONE != 0)
}

/// Encodes the row key of `key` at `revision`.
pub fn row_key(key: &[u8], revision: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10 + 8);
    for &byte in key {
        out.push(byte);
        if byte == ESCAPE {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(ESCAPE);
    out.push(TERMINATOR);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// Splits a row key into the user key and the revision.
pub fn split_row_key(row: &[u8]) -> Result<(Vec<u8>, u64), StorageError> {
    let corrupt = || StorageError(format!("corrupt row key of {} bytes", row.len()));
    if row.len() < 10 {
        return Err(corrupt());
    }
    let (body, rev) = row.split_at(row.len() - 8);
    let mut key = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let byte = body[i];
        if byte != ESCAPE {
            key.push(byte);
            i += 1;
            continue;
        }
        match body.get(i + 1) {
            Some(&ESCAPED_ZERO) => {
                key.push(0);
                i += 2;
            }
            Some(&TERMINATOR) if i + 2 == body.len() => {
                let revision = u64::from_be_bytes(rev.try_into().map_err(|_| corrupt())?);
                return Ok((key, revision));
            }
            _ => return Err(corrupt()),
        }
    }
    Err(corrupt())
}

/// One stored version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub tombstone: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl Version {
    pub fn tombstone() -> Version {
        Version { tombstone: true, create_revision: 0, version: 0, lease: 0, value: Vec::new() }
    }

    fn encode_header(&self, out: &mut Vec<u8>) {
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.lease.to_be_bytes());
    }

    /// The header fields of an encoded version, with an empty value.
    fn decode_header(bytes: &[u8]) -> Result<Version, StorageError> {
        if bytes.len() < HEADER_LEN {
            return Err(StorageError(format!("corrupt row value of {} bytes", bytes.len())));
        }
        let int = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        Ok(Version {
            tombstone: bytes[0] & FLAG_TOMBSTONE != 0,
            create_revision: int(1),
            version: int(9),
            lease: int(17),
            value: Vec::new(),
        })
    }

    /// Encodes a version as the legacy layout's row value (header, value).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.value.len());
        self.encode_header(&mut out);
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes a legacy row value.
    pub fn decode(bytes: &[u8]) -> Result<Version, StorageError> {
        let mut version = Version::decode_header(bytes)?;
        version.value = bytes[HEADER_LEN..].to_vec();
        Ok(version)
    }
}

/// Encodes the keys one revision changed (the `revs` table's value):
/// `count u32 | (len u32 | key)*`, little-endian.
pub fn encode_keys(keys: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + keys.iter().map(|k| 4 + k.len()).sum::<usize>());
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for key in keys {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
    }
    out
}

pub fn decode_keys(bytes: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
    let corrupt = || StorageError(format!("corrupt revision key list of {} bytes", bytes.len()));
    let int = |at: usize| -> Result<usize, StorageError> {
        let raw: [u8; 4] = bytes.get(at..at + 4).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?;
        Ok(u32::from_le_bytes(raw) as usize)
    };
    let count = int(0)?;
    let mut at = 4;
    let mut keys = Vec::with_capacity(count.min(bytes.len()));
    for _ in 0..count {
        let len = int(at)?;
        at += 4;
        keys.push(bytes.get(at..at + len).ok_or_else(corrupt)?.to_vec());
        at += len;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_keys_round_trip() {
        for key in [&b""[..], b"a", b"\x00", b"a\x00b", b"\x00\x00\xff", b"\xff\xff"] {
            for rev in [0, 1, 77, u64::MAX] {
                assert_eq!(split_row_key(&row_key(key, rev)).unwrap(), (key.to_vec(), rev));
            }
        }
    }

    #[test]
    fn rows_sort_by_key_then_revision() {
        let keys: [&[u8]; 7] = [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00", b"b"];
        let mut rows = Vec::new();
        for key in keys {
            for rev in [1u64, 2, 300] {
                rows.push(row_key(key, rev));
            }
        }
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(rows, sorted);
    }

    #[test]
    fn corrupt_rows_are_errors_not_panics() {
        assert!(split_row_key(b"").is_err());
        assert!(split_row_key(b"abc\x00\x05\x00\x00\x00\x00\x00\x00\x00\x01").is_err());
        assert!(Version::decode(b"\x00\x01").is_err());
    }

    #[test]
    fn key_lists_round_trip_and_reject_truncation() {
        let keys: [&[u8]; 3] = [b"a", b"", b"\x00zz"];
        let encoded = encode_keys(&keys);
        assert_eq!(decode_keys(&encoded).unwrap(), keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
        assert!(decode_keys(&encoded[..encoded.len() - 1]).is_err());
        assert!(decode_keys(&[9, 0, 0, 0]).is_err());
    }

    #[test]
    fn revision_rows_sort_by_revision_then_sub_and_round_trip() {
        assert!(rev_row(1, u32::MAX) < rev_row(2, 0));
        assert_eq!(split_rev_row(rev_row(u64::MAX, 7)), (u64::MAX, 7));
        let v =
            Version { tombstone: false, create_revision: 3, version: 1, lease: 9, value: b"val".to_vec() };
        let row = encode_row(b"k\x00ey", &v);
        assert_eq!(decode_row(&row).unwrap(), (b"k\x00ey".to_vec(), v));
        assert_eq!(row_key_of(&row).unwrap(), b"k\x00ey");
        assert!(!row_is_tombstone(&row));
        assert!(row_is_tombstone(&encode_row(b"k", &Version::tombstone())));
        assert!(decode_row(&row[..HEADER_LEN + 2]).is_err());
        assert!(decode_row(&row[..ROW_HEADER_LEN + 2]).is_err());
    }

    #[test]
    fn versions_round_trip() {
        let v = Version { tombstone: false, create_revision: 5, version: 2, lease: -1, value: b"v".to_vec() };
        assert_eq!(Version::decode(&v.encode()).unwrap(), v);
        assert!(Version::decode(&Version::tombstone().encode()).unwrap().tombstone);
    }
}
