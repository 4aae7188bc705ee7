//! The bytes of a Raft snapshot, in an unnamed file instead of memory.
//!
//! A database may be larger than memory, so snapshot bytes never sit in a
//! buffer. An outgoing snapshot starts as a consistent view of the database
//! (`mvcc::SnapshotView`, a read transaction) and is written to a file only
//! when first read or sought — openraft asks for the current snapshot at every
//! start just to learn its meta, and that must cost nothing. An incoming one
//! is written to a file chunk by chunk and installed from it. The files are
//! unnamed (created and unlinked at once), so nothing is left behind by a
//! crash or a dropped transfer.

use std::future::Future;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// Buffer between the database reader and the snapshot file.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// Snapshot bytes: openraft's `SnapshotData` for this store.
pub struct SnapshotFile {
    state: State,
    /// A seek asked for before the file existed, done once it does.
    pending_seek: Option<SeekFrom>,
}

enum State {
    /// Not written yet: this view's bytes go to a new file in `dir`.
    Deferred {
        view: mvcc::SnapshotView,
        dir: PathBuf,
    },
    Writing(JoinHandle<io::Result<std::fs::File>>),
    Ready(tokio::fs::File),
    /// Writing the file failed; the error was returned once.
    Failed,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Deferred { .. } => "deferred",
            State::Writing(_) => "writing",
            State::Ready(_) => "ready",
            State::Failed => "failed",
        };
        f.debug_struct("SnapshotFile").field("state", &state).finish()
    }
}

/// A new file in `dir` that has no name: it lives as long as its handle.
pub fn unnamed_file(dir: &Path) -> io::Result<std::fs::File> {
    tempfile::tempfile_in(dir)
}

impl SnapshotFile {
    /// The bytes of `view`, written to a file in `dir` when first needed.
    pub fn deferred(view: mvcc::SnapshotView, dir: &Path) -> SnapshotFile {
        SnapshotFile { state: State::Deferred { view, dir: dir.to_path_buf() }, pending_seek: None }
    }

    /// An empty file in `dir`, to receive a snapshot into.
    pub fn empty_in(dir: &Path) -> io::Result<SnapshotFile> {
        let file = tokio::fs::File::from_std(unnamed_file(dir)?);
        Ok(SnapshotFile { state: State::Ready(file), pending_seek: None })
    }

    /// The file, positioned at its start (writing it first if deferred).
    pub async fn into_std(mut self) -> io::Result<std::fs::File> {
        std::future::poll_fn(|cx| self.poll_file(cx).map_ok(|_| ())).await?;
        let State::Ready(file) = std::mem::replace(&mut self.state, State::Failed) else {
            unreachable!("poll_file returned Ready only in the ready state");
        };
        let mut file = file.into_std().await;
        io::Seek::seek(&mut file, SeekFrom::Start(0))?;
        Ok(file)
    }

    /// Drives the file into existence and returns it.
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut tokio::fs::File>> {
        loop {
            match &mut self.state {
                State::Ready(_) => break,
                State::Deferred { .. } => {
                    let State::Deferred { view, dir } = std::mem::replace(&mut self.state, State::Failed)
                    else {
                        unreachable!()
                    };
                    self.state = State::Writing(tokio::task::spawn_blocking(move || write_view(&view, &dir)));
                }
                State::Writing(handle) => {
                    let written = ready!(Pin::new(handle).poll(cx));
                    match written.map_err(io::Error::other).and_then(|r| r) {
                        Ok(file) => self.state = State::Ready(tokio::fs::File::from_std(file)),
                        Err(e) => {
                            self.state = State::Failed;
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                State::Failed => {
                    return Poll::Ready(Err(io::Error::other("snapshot file could not be written")))
                }
            }
        }
        let State::Ready(file) = &mut self.state else { unreachable!() };
        Poll::Ready(Ok(file))
    }
}

/// Writes what `fill` writes, through a buffer, to a new unnamed file in
/// `dir`; returns the file positioned at its start.
pub fn spill(
    dir: &Path,
    fill: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<std::fs::File> {
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, unnamed_file(dir)?);
    fill(&mut out)?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    io::Seek::seek(&mut file, SeekFrom::Start(0))?;
    Ok(file)
}

/// Writes `view` to a new unnamed file in `dir`.
fn write_view(view: &mvcc::SnapshotView, dir: &Path) -> io::Result<std::fs::File> {
    let started = std::time::Instant::now();
    let mut summary = None;
    let file = spill(dir, |out| {
        summary = Some(view.write(out).map_err(io::Error::other)?);
        Ok(())
    })?;
    if let Some(summary) = summary {
        tracing::info!(rows = summary.rows, bytes = summary.bytes, took = ?started.elapsed(), "wrote a snapshot of the state");
    }
    Ok(file)
}

impl AsyncRead for SnapshotFile {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let file = ready!(this.poll_file(cx))?;
        Pin::new(file).poll_read(cx, buf)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::Ready(file) => Pin::new(file).start_seek(position),
            _ => {
                this.pending_seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        let pending = this.pending_seek.take();
        let file = match this.poll_file(cx) {
            Poll::Ready(Ok(file)) => file,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                this.pending_seek = pending;
                return Poll::Pending;
            }
        };
        if let Some(position) = pending {
            Pin::new(&mut *file).start_seek(position)?;
        }
        Pin::new(file).poll_complete(cx)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let file = ready!(this.poll_file(cx))?;
        Pin::new(file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let file = ready!(this.poll_file(cx))?;
        Pin::new(file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let file = ready!(this.poll_file(cx))?;
        Pin::new(file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::*;

    fn store_with(dir: &Path, keys: usize) -> mvcc::MvccStore {
        let store = mvcc::MvccStore::open(&dir.join("db")).unwrap();
        let mut batch = store.begin_apply().unwrap();
        for i in 0..keys {
            let put = etcd_proto::etcdserverpb::PutRequest {
                key: format!("key/{i:05}").into_bytes(),
                value: vec![b'v'; 100],
                ..Default::default()
            };
            let cmd = etcd_proto::fivefoldpb::Command {
                kind: Some(etcd_proto::fivefoldpb::command::Kind::Put(put)),
            };
            batch.apply(&cmd).unwrap();
        }
        batch.commit(false).unwrap();
        store
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deferred_snapshot_is_written_on_first_seek_and_installs_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with(dir.path(), 500);
        let view = source.snapshot_view().unwrap();
        // Writes after the view are not in it.
        let mut later = source.begin_apply().unwrap();
        let put = etcd_proto::etcdserverpb::PutRequest { key: b"later".to_vec(), ..Default::default() };
        later
            .apply(&etcd_proto::fivefoldpb::Command {
                kind: Some(etcd_proto::fivefoldpb::command::Kind::Put(put)),
            })
            .unwrap();
        later.commit(false).unwrap();

        let mut data = SnapshotFile::deferred(view, dir.path());
        let end = data.seek(SeekFrom::End(0)).await.unwrap();
        assert!(end > 500 * 100, "the file holds every row: {end} bytes");
        // Read it in chunks from arbitrary offsets, as openraft's sender does.
        let mut copy = SnapshotFile::empty_in(dir.path()).unwrap();
        let mut offset = 0;
        while offset < end {
            data.seek(SeekFrom::Start(offset)).await.unwrap();
            let mut chunk = vec![0; 4096];
            let n = data.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            copy.seek(SeekFrom::Start(offset)).await.unwrap();
            copy.write_all(&chunk[..n]).await.unwrap();
            offset += n as u64;
        }
        copy.shutdown().await.unwrap();
        let file = copy.into_std().await.unwrap();

        let target = mvcc::MvccStore::open(&dir.path().join("target")).unwrap();
        let summary = target.install_snapshot(io::BufReader::new(file)).unwrap();
        assert_eq!(summary.rows, 500);
        let range = etcd_proto::etcdserverpb::RangeRequest {
            key: b"key/".to_vec(),
            range_end: b"key0".to_vec(),
            count_only: true,
            ..Default::default()
        };
        assert_eq!(target.range(&range).unwrap().count, 500);
        let later = etcd_proto::etcdserverpb::RangeRequest { key: b"later".to_vec(), ..Default::default() };
        assert_eq!(target.range(&later).unwrap().count, 0, "a write after the view is not in the snapshot");
        // Nothing named was left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "only the two databases: {names:?}");
    }
}
