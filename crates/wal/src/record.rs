//! One record's bytes: `len (u32 le) | crc32 (u32 le) | index (u64 le) | payload`.
//! `len` counts the payload; the crc covers the index and the payload, so a
//! record moved to the wrong place or cut short never passes.

use crate::{Result, WalError};

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 16;

/// Largest payload one record may carry. The store's batches are far smaller
/// (a few MiB); anything near this is a bug or garbage, and recovery treats a
/// length above it as a torn record rather than allocating it.
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one record to `buf`.
pub fn encode_into(buf: &mut Vec<u8>, index: u64, payload: &[u8]) -> Result<()> {
    if payload.len() > RECORD_BYTES_MAX {
        return Err(WalError::RecordTooLarge { bytes: payload.len(), max: RECORD_BYTES_MAX });
    }
    let len = u32::try_from(payload.len()).expect("RECORD_BYTES_MAX fits in u32");
    buf.reserve(HEADER_BYTES + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// What the bytes at some offset hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record of `bytes` bytes (header included).
    Record { index: u64, payload: &'a [u8], bytes: usize },
    /// Nothing: the clean end of the records.
    End,
    /// Something that is not a whole record: a crash mid-append, or damage.
    Torn(&'static str),
}

pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    if bytes.is_empty() {
        return Decoded::End;
    }
    if bytes.len() < HEADER_BYTES {
        return Decoded::Torn("partial record header");
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let len = word(0) as usize;
    let crc = word(4);
    let index = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if len == 0 {
        // Payloads are never empty; zeros are preallocated or lost space.
        return Decoded::Torn("zero-length record");
    }
    if len > RECORD_BYTES_MAX {
        return Decoded::Torn("record length beyond the limit");
    }
    let Some(payload) = bytes.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Decoded::Torn("partial record");
    };
    if checksum(index, payload) != crc {
        return Decoded::Torn("checksum mismatch");
    }
    Decoded::Record { index, payload, bytes: HEADER_BYTES + len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_damage_is_detected() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 7, b"hello").unwrap();
        assert_eq!(decode(&buf), Decoded::Record { index: 7, payload: b"hello", bytes: buf.len() });
        assert_eq!(decode(&[]), Decoded::End);
        for cut in 1..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Decoded::Torn(_)), "cut at {cut}");
        }
        for at in 0..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x40;
            assert!(matches!(decode(&bad), Decoded::Torn(_)), "flipped byte {at}");
        }
        assert_eq!(decode(&[0u8; 32]), Decoded::Torn("zero-length record"));
    }

    #[test]
    fn oversized_payload_is_refused() {
        let big = vec![0u8; RECORD_BYTES_MAX + 1];
        assert!(matches!(encode_into(&mut Vec::new(), 1, &big), Err(WalError::RecordTooLarge { .. })));
    }
}
