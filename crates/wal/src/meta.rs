//! Small files holding one value each beside the log (the Raft vote, the
//! committed id, the purge point), replaced atomically: the new bytes go to a
//! temporary file that is renamed over the old one, so a reader finds either
//! the old value or the new, whole. Bytes: `crc32 (u32 le) | len (u32 le) | value`.

use std::io::Write;
use std::path::Path;

use crate::{segment, Result, WalError};

fn framed(value: &[u8]) -> Vec<u8> {
    let len = u32::try_from(value.len()).expect("meta values are small");
    let mut bytes = Vec::with_capacity(8 + value.len());
    bytes.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(value);
    bytes
}

/// Replaces the value at `path`. With `durable`, the value survives a crash
/// once this returns (file and directory synced); without, a crash may leave
/// the previous value.
pub fn write(path: &Path, value: &[u8], durable: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(WalError::io(&tmp))?;
    file.write_all(&framed(value)).map_err(WalError::io(&tmp))?;
    if durable {
        file.sync_all().map_err(WalError::io(&tmp))?;
    }
    drop(file);
    std::fs::rename(&tmp, path).map_err(WalError::io(path))?;
    if durable {
        if let Some(dir) = path.parent() {
            segment::sync_dir(dir)?;
        }
    }
    Ok(())
}

/// The value at `path`; `None` when there is no file. A file that fails its
/// checksum is `Corrupt`.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::Io { path: path.to_path_buf(), source: e }),
    };
    let corrupt =
        |reason: &str| WalError::Corrupt { path: path.to_path_buf(), offset: 0, reason: reason.into() };
    if bytes.len() < 8 {
        return Err(corrupt("shorter than its header"));
    }
    let crc = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let value = bytes.get(8..8 + len).ok_or_else(|| corrupt("shorter than its length"))?;
    if bytes.len() != 8 + len || crc32fast::hash(value) != crc {
        return Err(corrupt("checksum or length mismatch"));
    }
    Ok(Some(value.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_read_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, b"term 3", true).unwrap();
        write(&path, b"term 4", false).unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"term 4"[..]));
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path), Err(WalError::Corrupt { .. })));
        std::fs::write(&path, &bytes[..5]).unwrap();
        assert!(matches!(read(&path), Err(WalError::Corrupt { .. })));
    }
}
