//! The log's contract, on real files: what was synced is read back after a
//! reopen, a torn tail is cut, damage elsewhere is refused, and truncate and
//! purge survive a reopen.

use std::path::Path;

use wal::{Wal, WalError, WalOptions};

fn small_segments() -> WalOptions {
    WalOptions { segment_bytes: 1024 }
}

fn payload(index: u64) -> Vec<u8> {
    format!("entry {index} {}", "x".repeat((index % 50) as usize)).into_bytes()
}

fn append(wal: &mut Wal, indexes: std::ops::Range<u64>) {
    let payloads: Vec<(u64, Vec<u8>)> = indexes.map(|i| (i, payload(i))).collect();
    wal.append(payloads.iter().map(|(i, p)| (*i, p.as_slice()))).unwrap();
    wal.sync().unwrap();
}

/// A log in small segments holding `indexes`, appended ten at a time.
fn filled(dir: &Path, indexes: std::ops::Range<u64>) -> Wal {
    let (mut wal, _) = Wal::open(dir, small_segments()).unwrap();
    for start in indexes.clone().step_by(10) {
        append(&mut wal, start..(start + 10).min(indexes.end));
    }
    wal
}

fn check_holds(wal: &Wal, from: u64, to: u64) {
    let read = wal.reader().read(0, u64::MAX).unwrap();
    let indexes: Vec<u64> = read.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, (from..=to).collect::<Vec<_>>());
    for (index, bytes) in read {
        assert_eq!(bytes, payload(index), "payload of {index}");
    }
    assert_eq!(wal.reader().bounds(), Some((from, to)));
}

fn segment_files(dir: &Path) -> Vec<String> {
    files_with(dir, ".wal", |name, pattern| name.ends_with(pattern))
}

/// The names in `dir` that `keep(name, pattern)` accepts, sorted.
fn files_with(dir: &Path, pattern: &str, keep: fn(&str, &str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| keep(n, pattern))
        .collect();
    names.sort();
    names
}

#[test]
fn synced_records_survive_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recovered) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!((recovered.first_index, recovered.last_index), (None, None));
    let wal = filled(dir.path(), 0..200);
    check_holds(&wal, 0, 199);
    assert!(segment_files(dir.path()).len() > 3, "small segments rotate");
    drop(wal);
    let (wal, recovered) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!((recovered.first_index, recovered.last_index, recovered.torn_bytes), (Some(0), Some(199), 0));
    check_holds(&wal, 0, 199);
    assert_eq!(wal.reader().get(57).unwrap(), payload(57));
    assert!(matches!(wal.reader().get(200), Err(WalError::Missing { index: 200, .. })));
}

#[test]
fn unsynced_records_are_not_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append(&mut wal, 1..4);
    wal.append([(4, &b"four"[..])]).unwrap();
    assert_eq!(wal.reader().bounds(), Some((1, 3)));
    wal.sync().unwrap();
    assert_eq!(wal.reader().bounds(), Some((1, 4)));
}

#[test]
fn out_of_order_appends_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append(&mut wal, 5..8);
    let err = wal.append([(9, &b"gap"[..])]).unwrap_err();
    assert!(matches!(err, WalError::OutOfOrder { last: 7, got: 9 }), "{err}");
    let err = wal.append([(7, &b"again"[..])]).unwrap_err();
    assert!(matches!(err, WalError::OutOfOrder { last: 7, got: 7 }), "{err}");
    append(&mut wal, 8..9);
    check_holds(&wal, 5, 8);
}

#[test]
fn a_torn_last_append_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append(&mut wal, 1..21);
    drop(wal);
    let last = dir.path().join(segment_files(dir.path()).pop().unwrap());
    let bytes = std::fs::read(&last).unwrap();
    assert_eq!(bytes.len() as u64, wal::SEGMENT_BYTES_TARGET, "the segment is preallocated");
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    // A crash mid-append: half a record after the last whole one.
    let mut torn = bytes.clone();
    torn[end..end + 6].copy_from_slice(b"\x20\x00\x00\x00\x01\x02");
    std::fs::write(&last, &torn).unwrap();
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.torn_bytes, 6);
    check_holds(&wal, 1, 20);
    drop(wal);
    let after = std::fs::read(&last).unwrap();
    assert!(after[end..].iter().all(|b| *b == 0), "the torn bytes are gone");
    let (mut wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(recovered.torn_bytes, 0, "preallocated zeros are not a torn append");
    append(&mut wal, 21..23);
    check_holds(&wal, 1, 22);
}

#[test]
fn damage_before_the_tail_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), 0..100);
    drop(wal);
    let files = segment_files(dir.path());
    let first = dir.path().join(&files[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    let err = Wal::open(dir.path(), small_segments()).err().expect("a damaged segment is refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&files[0]), "the error names the file: {err}");
}

#[test]
fn a_missing_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), 0..100);
    drop(wal);
    let files = segment_files(dir.path());
    std::fs::remove_file(dir.path().join(&files[1])).unwrap();
    let err = Wal::open(dir.path(), small_segments()).err().expect("a gap is refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

#[test]
fn truncate_cuts_across_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = filled(dir.path(), 1..201);
    let before = segment_files(dir.path()).len();
    wal.truncate_from(95).unwrap();
    check_holds(&wal, 1, 94);
    assert!(segment_files(dir.path()).len() < before, "whole segments after the cut are deleted");
    // The log continues from the cut with new entries.
    append(&mut wal, 95..120);
    drop(wal);
    let (mut wal, recovered) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(recovered.last_index, Some(119));
    check_holds(&wal, 1, 119);
    // Cutting at a segment's first index removes that segment entirely.
    let firsts: Vec<u64> = segment_files(dir.path()).iter().map(|n| n[..20].parse().unwrap()).collect();
    let boundary = firsts[2];
    wal.truncate_from(boundary).unwrap();
    check_holds(&wal, 1, boundary - 1);
    assert_eq!(segment_files(dir.path()).len(), 2);
}

#[test]
fn purge_drops_whole_segments_and_hides_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = filled(dir.path(), 1..201);
    let before = segment_files(dir.path()).len();
    wal.purge_to(100).unwrap();
    check_holds(&wal, 101, 200);
    wal.settle();
    let after = segment_files(dir.path());
    assert!(after.len() < before, "segments wholly below the purge point are deleted");
    let oldest: u64 = after[0][..20].parse().unwrap();
    assert!(oldest <= 101, "the segment holding 101 stays");
    assert!(wal.reader().read(50, 60).unwrap().is_empty());
    drop(wal);
    // After a reopen the caller passes its purge point again.
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    wal.purge_to(100).unwrap();
    check_holds(&wal, 101, 200);
    // Purging past the end empties the log; it then continues anywhere later.
    wal.purge_to(500).unwrap();
    assert_eq!(wal.reader().bounds(), None);
    // Deleted before it returns: a later segment must never follow old ones
    // across a gap, even after a crash.
    assert!(segment_files(dir.path()).is_empty());
    assert!(matches!(wal.append([(400, &b"old"[..])]), Err(WalError::OutOfOrder { .. })));
    append(&mut wal, 501..510);
    check_holds(&wal, 501, 509);
    drop(wal);
    let (wal, recovered) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!((recovered.first_index, recovered.last_index), (Some(501), Some(509)));
    check_holds(&wal, 501, 509);
}

#[test]
fn limited_reads_stop_at_the_byte_budget_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), 0..200);
    let reader = wal.reader();
    let all = reader.read(0, 200).unwrap();
    let sizes: Vec<u64> = all.iter().map(|(_, p)| p.len() as u64).collect();
    for budget in [1, 100, 500, 1500, 4000] {
        let read = reader.read_limited(0, 200, budget).unwrap();
        assert!(!read.is_empty(), "budget {budget}: at least one record");
        assert_eq!(read[..], all[..read.len()], "budget {budget}: a prefix, in order");
        let held: u64 = sizes[..read.len()].iter().sum();
        // Within the budget (unless one record alone is larger), and short of
        // it only by less than the next record.
        assert!(held <= budget || read.len() == 1, "budget {budget}: {held} bytes read");
        assert!(held + sizes[read.len()] > budget, "budget {budget}: stopped early at {held}");
    }
    assert_eq!(reader.read_limited(10, 20, u64::MAX).unwrap(), reader.read(10, 20).unwrap());
}

/// Blocks of `path` the file system holds as allocated but never written
/// (`filefrag -v`'s "unwritten" extents), as `(first, last)` block numbers;
/// `None` when the tool or the file system cannot tell.
fn unwritten_blocks(path: &Path) -> Option<Vec<(u64, u64)>> {
    let tool = ["/usr/sbin/filefrag", "/sbin/filefrag"].into_iter().find(|p| Path::new(p).exists())?;
    let out = std::process::Command::new(tool).arg("-v").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("logical_offset") {
        return None;
    }
    let mut unwritten = Vec::new();
    for line in text.lines().filter(|l| l.contains("unwritten")) {
        // "   1:        2..     255:   55132930..  55133183:    254:   last,unwritten,eof"
        let logical = line.split(':').nth(1)?;
        let (first, last) = logical.split_once("..")?;
        unwritten.push((first.trim().parse().ok()?, last.trim().parse().ok()?));
    }
    Some(unwritten)
}

#[test]
fn space_ahead_of_the_records_is_written_before_they_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    // 3 MiB of records in 8 KiB appends: each sync starts new blocks.
    let record = vec![7u8; 1024];
    for start in (1..=3072u64).step_by(8) {
        wal.append((start..start + 8).map(|i| (i, record.as_slice()))).unwrap();
        wal.sync().unwrap();
    }
    let path = dir.path().join(segment_files(dir.path()).pop().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    match unwritten_blocks(&path) {
        None => eprintln!("skipped the extent check: filefrag cannot read this file system's extents"),
        Some(unwritten) => {
            let ahead_last_block = (end + wal::ZERO_AHEAD_BYTES / 2) / 4096 - 1;
            for (first, last) in unwritten {
                assert!(
                    first > ahead_last_block,
                    "blocks {first}..={last} are unwritten, but everything up to block {ahead_last_block} \
                     (the records' end {end} and {} bytes ahead) should be written",
                    wal::ZERO_AHEAD_BYTES / 2
                );
            }
        }
    }
    drop(wal);
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(
        (recovered.last_index, recovered.torn_bytes),
        (Some(3072), 0),
        "the zeros ahead are no torn append"
    );
    let read = wal.reader().read(1, 3073).unwrap();
    assert_eq!(read.len(), 3072);
    assert!(read.iter().all(|(_, payload)| payload == &record));
}

#[test]
fn purged_segments_are_freed_and_a_half_freed_one_is_cleared_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = filled(dir.path(), 1..201);
    let names = segment_files(dir.path());
    wal.purge_to(150).unwrap();
    wal.settle();
    let left = files_with(dir.path(), ".wal", |name, pattern| name.contains(pattern));
    assert!(left.iter().all(|n| n.ends_with(".wal")), "nothing half freed stays: {left:?}");
    assert!(left.len() < names.len());
    drop(wal);
    // A crash while freeing: the purged segment renamed and cut short.
    let gone = dir.path().join(format!("{:020}.wal.discarded", 1));
    std::fs::write(&gone, b"half freed").unwrap();
    let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    assert!(!gone.exists(), "a half-freed segment goes when the log opens");
    let first = wal.reader().bounds().unwrap().0;
    assert!(first <= 151, "the segments after the purge point stay");
}
