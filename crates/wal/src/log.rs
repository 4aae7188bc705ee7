//! The segments together: one writer ([`Wal`]) and any number of readers
//! ([`WalReader`]). Readers see a record only once the writer synced it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::record;
use crate::segment::{self, Segment, SEGMENT_BYTES_TARGET};
use crate::{Result, WalError};

/// The segments, oldest first, and the purge point. Shared by the writer and
/// the readers; the writer takes it exclusively only to publish synced
/// records, cut the tail or drop the head.
struct Segments {
    list: Vec<Segment>,
    /// Indexes at or below this are gone even if a segment still holds them.
    purged: Option<u64>,
}

impl Segments {
    fn last_index(&self) -> Option<u64> {
        self.list.iter().rev().find_map(Segment::last_index)
    }

    fn first_index(&self) -> Option<u64> {
        let first = self.list.iter().find(|s| !s.offsets.is_empty())?.first_index;
        let first = match self.purged {
            Some(purged) => first.max(purged + 1),
            None => first,
        };
        (Some(first) <= self.last_index()).then_some(first)
    }
}

/// What opening the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub segments: usize,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// Bytes of a torn last append that were cut off (0 after a clean stop).
    pub torn_bytes: u64,
}

/// How the log is laid out.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment takes no new appends once it holds this many bytes.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions { segment_bytes: SEGMENT_BYTES_TARGET }
    }
}

/// The log's single writer.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    shared: Arc<RwLock<Segments>>,
    /// Encoding buffer, reused.
    buf: Vec<u8>,
    /// Records written to the last segment but not yet synced: their offsets,
    /// and where the next append goes.
    staged: Vec<u64>,
    staged_end: u64,
    /// The last segment's bytes before this have been written by this
    /// writer (records, or zeros ahead of them); see [`ZERO_AHEAD_BYTES`].
    written_end: u64,
    deleter: Deleter,
}

/// Zeros written ahead of the records in the last segment: at least half
/// this much is kept written past them. Preallocated space is allocated but
/// unwritten, and the first write to each block of it makes `fdatasync`
/// record the block as written too (a metadata write, an extra device round
/// trip): with batches of 8 KiB, every sync paid it. Writing zeros first
/// makes those syncs flush data alone; one sync per half of this carries
/// them. Measured on this machine's ext4
/// with 8 KiB appends each synced: 175 µs mean per sync over preallocated
/// space, 121 µs with zeros written 1 MiB ahead. Zeros after the last record
/// read as the end of the records, as preallocated space does.
pub const ZERO_AHEAD_BYTES: u64 = 1024 * 1024;
/// The zeros are written from a static buffer of this size.
const ZERO_CHUNK_BYTES: usize = 64 * 1024;

/// Deletes purged segments on a thread of its own: freeing a large file's
/// blocks takes tens of milliseconds (60–110 ms per purge measured after
/// loading 4 GiB), and appends must not wait for it — nor their syncs, which
/// the file system holds up while it frees blocks, so each segment is freed
/// a step at a time (`discard`). A purged segment is already unreadable and
/// the caller has recorded the purge point durably,
/// so a deletion cut short by a crash is simply done again when the log is
/// opened and purged to that point — as long as the files left are
/// contiguous with the live ones, which is why a purge that empties the log
/// deletes synchronously. Dropping the log waits for its deletions.
struct Deleter {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Job {
    Delete(Vec<Segment>),
    Settle(mpsc::SyncSender<()>),
}

impl Deleter {
    fn start(dir: &Path) -> Result<Deleter> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let owned = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("wal-deleter".into())
            .spawn(move || {
                for job in queue {
                    match job {
                        Job::Delete(segments) => {
                            // Oldest first, stopping at a failure: what is left
                            // stays contiguous with the live segments, so the
                            // log still opens (and purges it again).
                            for segment in &segments {
                                if let Err(e) = discard(segment) {
                                    tracing::warn!(error = %e, "deleting a purged wal segment; it goes at the next open");
                                    break;
                                }
                            }
                            // The handles close here (their blocks are freed).
                            drop(segments);
                            if let Err(e) = segment::sync_dir(&owned) {
                                tracing::warn!(error = %e, "syncing the wal directory after deletions");
                            }
                        }
                        Job::Settle(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(WalError::io(dir))?;
        Ok(Deleter { jobs: Some(jobs), thread: Some(thread) })
    }

    fn send(&self, job: Job) {
        // The thread lives as long as the log; it only stops on a panic.
        let _ = self.jobs.as_ref().expect("deleter runs while the log is open").send(job);
    }
}

impl Drop for Deleter {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads synced records; cheap to clone.
#[derive(Clone)]
pub struct WalReader {
    shared: Arc<RwLock<Segments>>,
}

fn read_lock(shared: &RwLock<Segments>) -> RwLockReadGuard<'_, Segments> {
    shared.read().expect("wal segments lock")
}

fn write_lock(shared: &RwLock<Segments>) -> RwLockWriteGuard<'_, Segments> {
    shared.write().expect("wal segments lock")
}

/// Before records that end at `end` are written to `tail`: keeps at least
/// half of `ZERO_AHEAD_BYTES` written past them, by writing zeros from
/// where the writer has written (`written_end`, or `end`) up to
/// `ZERO_AHEAD_BYTES` past `end` when less is left, never past `limit`
/// (the preallocated length, so the file's size does not change).
fn zero_ahead(tail: &Segment, end: u64, written_end: &mut u64, limit: u64) -> Result<()> {
    static ZEROS: [u8; ZERO_CHUNK_BYTES] = [0; ZERO_CHUNK_BYTES];
    let to = (end + ZERO_AHEAD_BYTES).min(limit);
    if *written_end >= (end + ZERO_AHEAD_BYTES / 2).min(to) {
        return Ok(());
    }
    let mut at = end.max(*written_end);
    while at < to {
        let len = (to - at).min(ZERO_CHUNK_BYTES as u64);
        tail.file.write_all_at(&ZEROS[..len as usize], at).map_err(WalError::io(&tail.path))?;
        at += len;
    }
    *written_end = end.max(to);
    Ok(())
}

/// Suffix of a purged segment being freed (`discard`); such files are not
/// segments, and one left by a crash is removed when the log opens.
const DISCARDED_SUFFIX: &str = ".wal.discarded";
/// A discarded segment is shortened this much at a time before it is
/// unlinked, with `DISCARD_PAUSE` between steps.
const DISCARD_STEP_BYTES: u64 = 8 * 1024 * 1024;
/// Freeing a whole 64 MiB segment at once (one unlink, about 17 ms here)
/// held up the log's concurrent `fdatasync` by up to 9.5 ms; freed 8 MiB at
/// a time with this pause between, the longest sync during it was 2.2 ms.
const DISCARD_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Frees a purged segment without holding up the log's syncs: renames it
/// out of the segments (so a crash part way leaves no short segment among
/// them; this counts on the file system keeping the rename before the
/// truncations that follow, as ext4's and xfs's journals do), gives its
/// blocks back a step at a time, the last step included (the open handle
/// would otherwise keep them until the whole job's segments close), then
/// unlinks it.
fn discard(segment: &Segment) -> Result<()> {
    let gone = segment.path.with_extension(DISCARDED_SUFFIX.trim_start_matches('.'));
    std::fs::rename(&segment.path, &gone).map_err(WalError::io(&segment.path))?;
    let mut length = segment.file.metadata().map_err(WalError::io(&gone))?.len();
    while length > 0 {
        length = length.saturating_sub(DISCARD_STEP_BYTES);
        segment.file.set_len(length).map_err(WalError::io(&gone))?;
        std::thread::sleep(DISCARD_PAUSE);
    }
    std::fs::remove_file(&gone).map_err(WalError::io(&gone))
}

fn remove(segment: &Segment) -> Result<()> {
    tracing::debug!(path = %segment.path.display(), "removing wal segment");
    std::fs::remove_file(&segment.path).map_err(WalError::io(&segment.path))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, checking every record.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered)> {
        std::fs::create_dir_all(dir).map_err(WalError::io(dir))?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(WalError::io(dir))? {
            let entry = entry.map_err(WalError::io(dir))?;
            let name = entry.file_name();
            let name = name.to_str();
            if name.is_some_and(|name| name.ends_with(DISCARDED_SUFFIX)) {
                // A purged segment a crash left half freed.
                std::fs::remove_file(entry.path()).map_err(WalError::io(entry.path()))?;
                continue;
            }
            if let Some(first) = name.and_then(segment::parse_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut list: Vec<Segment> = Vec::new();
        let mut torn_bytes = 0;
        let count = firsts.len();
        for (position, first) in firsts.into_iter().enumerate() {
            let path = dir.join(segment::file_name(first));
            let scan = Segment::open(&path, first, position + 1 == count)?;
            torn_bytes += scan.torn_bytes;
            let segment = scan.segment;
            if segment.offsets.is_empty() {
                // Created by a rotation that crashed before its first write.
                std::fs::remove_file(&path).map_err(WalError::io(&path))?;
                continue;
            }
            if let Some(previous) = list.last().and_then(Segment::last_index) {
                if segment.first_index != previous + 1 {
                    return Err(WalError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!("segment starts at {first}, the one before ends at {previous}"),
                    });
                }
            }
            list.push(segment);
        }
        if let Some(tail) = list.last() {
            tail.preallocate(options.segment_bytes)?;
        }
        segment::sync_dir(dir)?;
        let segments = Segments { list, purged: None };
        let recovered = Recovered {
            segments: segments.list.len(),
            first_index: segments.first_index(),
            last_index: segments.last_index(),
            torn_bytes,
        };
        let staged_end = segments.list.last().map_or(0, |s| s.end);
        let wal = Wal {
            dir: dir.to_path_buf(),
            options,
            shared: Arc::new(RwLock::new(segments)),
            buf: Vec::new(),
            staged: Vec::new(),
            staged_end,
            written_end: staged_end,
            deleter: Deleter::start(dir)?,
        };
        Ok((wal, recovered))
    }

    pub fn reader(&self) -> WalReader {
        WalReader { shared: self.shared.clone() }
    }

    /// The index the next append must start with, if the log holds any.
    fn next_index(&self, segments: &Segments) -> Option<u64> {
        let last = segments.list.last()?;
        let records = last.offsets.len() + self.staged.len();
        (records > 0).then(|| last.first_index + records as u64)
    }

    /// Writes records (consecutive indexes, continuing the log) to the page
    /// cache. They are durable, and visible to readers, after [`Wal::sync`].
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<()> {
        let (mut next, purged) = {
            let segments = read_lock(&self.shared);
            (self.next_index(&segments), segments.purged)
        };
        self.buf.clear();
        let mut relative = Vec::new();
        let mut first = None;
        for (index, payload) in records {
            let in_order = match next {
                Some(expected) => index == expected,
                None => purged.is_none_or(|p| index > p),
            };
            if !in_order {
                let last = next.map(|n| n - 1).or(purged).unwrap_or(0);
                return Err(WalError::OutOfOrder { last, got: index });
            }
            relative.push(self.buf.len() as u64);
            record::encode_into(&mut self.buf, index, payload)?;
            first.get_or_insert(index);
            next = Some(index + 1);
        }
        let Some(first) = first else { return Ok(()) };
        self.prepare_segment(first)?;
        let segments = read_lock(&self.shared);
        let tail = segments.list.last().expect("a segment to append to");
        let end = self.staged_end + self.buf.len() as u64;
        zero_ahead(tail, end, &mut self.written_end, self.options.segment_bytes)?;
        tail.file.write_all_at(&self.buf, self.staged_end).map_err(WalError::io(&tail.path))?;
        self.staged.extend(relative.into_iter().map(|r| self.staged_end + r));
        self.staged_end += self.buf.len() as u64;
        Ok(())
    }

    /// Makes sure the last segment can take records starting at `first`:
    /// seals a full one (synced) and starts the next, or replaces an empty
    /// one left by a failed write that was meant for other indexes.
    fn prepare_segment(&mut self, first: u64) -> Result<()> {
        let (full, stale_empty) = {
            let segments = read_lock(&self.shared);
            match segments.list.last() {
                None => (true, false),
                Some(tail) => {
                    let empty = tail.offsets.is_empty() && self.staged.is_empty();
                    (self.staged_end >= self.options.segment_bytes, empty && tail.first_index != first)
                }
            }
        };
        if !full && !stale_empty {
            return Ok(());
        }
        self.sync()?;
        let mut segments = write_lock(&self.shared);
        if stale_empty {
            let tail = segments.list.pop().expect("an empty tail");
            remove(&tail)?;
        } else if let Some(full) = segments.list.last() {
            // Sealed before the next exists: every segment but the last ends
            // exactly at its last record.
            full.seal()?;
        }
        segments.list.push(Segment::create(&self.dir, first, self.options.segment_bytes)?);
        (self.staged_end, self.written_end) = (0, 0);
        Ok(())
    }

    /// Makes every appended record durable (one `fdatasync`) and readable.
    pub fn sync(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let (file, path) = {
            let segments = read_lock(&self.shared);
            let tail = segments.list.last().expect("staged records have a segment");
            (tail.file.clone(), tail.path.clone())
        };
        file.sync_data().map_err(WalError::io(&path))?;
        let mut segments = write_lock(&self.shared);
        let tail = segments.list.last_mut().expect("staged records have a segment");
        tail.offsets.append(&mut self.staged);
        tail.end = self.staged_end;
        Ok(())
    }

    /// Removes every record at or after `index`, durably. Newest segments go
    /// first, so a crash part way leaves the log contiguous.
    pub fn truncate_from(&mut self, index: u64) -> Result<()> {
        self.sync()?;
        let mut segments = write_lock(&self.shared);
        let mut removed = false;
        while let Some(tail) = segments.list.last_mut() {
            if tail.first_index >= index {
                remove(tail)?;
                segments.list.pop();
                removed = true;
                continue;
            }
            tail.cut((index - tail.first_index) as usize)?;
            tail.preallocate(self.options.segment_bytes)?;
            break;
        }
        let end = segments.list.last().map_or(0, |s| s.end);
        (self.staged_end, self.written_end) = (end, end);
        drop(segments);
        if removed {
            segment::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Forgets every record at or below `index`: they are no longer readable,
    /// and segments holding nothing newer are deleted. The caller records the
    /// purge point durably itself (and passes it again after reopening).
    pub fn purge_to(&mut self, index: u64) -> Result<()> {
        self.sync()?;
        let mut segments = write_lock(&self.shared);
        segments.purged = segments.purged.max(Some(index));
        let gone = segments
            .list
            .iter()
            .take_while(|head| match head.last_index() {
                Some(last) => last <= index,
                None => head.first_index <= index,
            })
            .count();
        let removed: Vec<Segment> = segments.list.drain(..gone).collect();
        let emptied = segments.list.is_empty();
        // The tail is untouched unless the purge took it: then the next
        // append starts a new segment (`prepare_segment`).
        debug_assert!(emptied || segments.list.last().is_some_and(|tail| tail.end == self.staged_end));
        if emptied {
            (self.staged_end, self.written_end) = (0, 0);
        }
        drop(segments);
        if removed.is_empty() {
            return Ok(());
        }
        if emptied {
            // The next append starts a segment past a gap: were old files
            // still there after a crash, the log would not open. Delete them
            // now (this happens when a snapshot replaces the whole log).
            self.settle();
            for segment in &removed {
                remove(segment)?;
            }
            segment::sync_dir(&self.dir)?;
        } else {
            self.deleter.send(Job::Delete(removed));
        }
        Ok(())
    }

    /// Waits until the segment files purged so far are deleted.
    pub fn settle(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        self.deleter.send(Job::Settle(done));
        let _ = wait.recv();
    }
}

impl WalReader {
    /// `(first, last)` readable index, or `None` when the log is empty.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let segments = read_lock(&self.shared);
        Some((segments.first_index()?, segments.last_index()?))
    }

    /// The synced records with `from <= index < to`, in order. Indexes the
    /// log does not hold are simply absent.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let segments = read_lock(&self.shared);
        let Some(first) = segments.first_index() else { return Ok(Vec::new()) };
        let from = from.max(first);
        let mut out = Vec::new();
        for segment in &segments.list {
            let Some(last) = segment.last_index() else { continue };
            let (lo, hi) = (from.max(segment.first_index), to.min(last + 1));
            if lo < hi {
                let position = |index: u64| (index - segment.first_index) as usize;
                segment.read(position(lo), position(hi), &mut out)?;
            }
        }
        Ok(out)
    }

    /// Like `read`, but stops before the record whose payload would take the
    /// payloads read past `max_bytes` (the first record is read whatever its
    /// size).
    pub fn read_limited(&self, from: u64, to: u64, max_bytes: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let segments = read_lock(&self.shared);
        let Some(first) = segments.first_index() else { return Ok(Vec::new()) };
        let from = from.max(first);
        let mut out = Vec::new();
        let mut budget = max_bytes;
        for segment in &segments.list {
            let Some(last) = segment.last_index() else { continue };
            let (lo, hi) = (from.max(segment.first_index), to.min(last + 1));
            if lo >= hi {
                continue;
            }
            let position = |index: u64| (index - segment.first_index) as usize;
            if !out.is_empty() && segment.payload_len(position(lo)) > budget {
                break;
            }
            let end = segment.fit(position(lo), position(hi), budget);
            let before = out.len();
            segment.read(position(lo), end, &mut out)?;
            let read: u64 = out[before..].iter().map(|(_, p)| p.len() as u64).sum();
            if end < position(hi) || read >= budget {
                break;
            }
            budget -= read;
        }
        Ok(out)
    }

    /// One record, or `Missing`.
    pub fn get(&self, index: u64) -> Result<Vec<u8>> {
        match self.read(index, index + 1)?.pop() {
            Some((_, payload)) => Ok(payload),
            None => {
                let (first, last) = self.bounds().unwrap_or((0, 0));
                Err(WalError::Missing { index, first, last })
            }
        }
    }
}
