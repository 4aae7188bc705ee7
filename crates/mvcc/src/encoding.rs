//! The on-disk layout of the key space.
//!
//! Every version of every key is one row, keyed by `escape(key) ++ 0x00 0x00 ++
//! revision (8 bytes, big-endian)`. The escaping (`0x00` → `0x00 0xFF`) keeps
//! byte order: rows sort by (key, revision), so a range of keys is one seek and
//! the newest version of a key at or below a revision is one reverse seek. No key
//! index has to live in memory.
//!
//! A row's value is a fixed header and the user value:
//! `flags u8 | create_revision i64 | version i64 | lease i64 | value`.

use crate::error::StorageError;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x00;

const FLAG_TOMBSTONE: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 8 + 8;

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

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.value.len());
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.lease.to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Version, StorageError> {
        if bytes.len() < HEADER_LEN {
            return Err(StorageError(format!("corrupt row value of {} bytes", bytes.len())));
        }
        let int = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        Ok(Version {
            tombstone: bytes[0] & FLAG_TOMBSTONE != 0,
            create_revision: int(1),
            version: int(9),
            lease: int(17),
            value: bytes[HEADER_LEN..].to_vec(),
        })
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
    fn versions_round_trip() {
        let v = Version { tombstone: false, create_revision: 5, version: 2, lease: -1, value: b"v".to_vec() };
        assert_eq!(Version::decode(&v.encode()).unwrap(), v);
        assert!(Version::decode(&Version::tombstone().encode()).unwrap().tombstone);
    }
}
