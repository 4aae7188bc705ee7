//! Socket writes gathered across the streams of one connection.
//!
//! An HTTP/2 connection is one task; every response on it (a unary reply, a
//! watch event) is written by that task when a request's task wakes it. Woken
//! once per response, it wrote once per response: with 10,000 watch streams
//! on 30 connections, one revision cost 10,000 `writev` calls of 88 bytes
//! each, and a put load cost a socket write per reply (etcd's single writer
//! per connection writes about half as often).
//!
//! [`Coalesced`] holds what the connection writes until it flushes, and lets
//! a flush wait for one pass of the scheduler first: the tasks that are
//! already runnable add their frames, and the lot goes out in one write. A
//! connection with nothing else runnable pays one extra poll.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes to the socket without waiting for the
/// flush; a single write at least this large skips the buffer.
pub const COALESCE_BYTES_MAX: usize = 256 * 1024;
/// A flush with at least this much held writes at once instead of waiting a
/// scheduler pass: HTTP/2 flushes after every large DATA frame, and a bulk
/// transfer (a large Range reply, a snapshot) must not wait a pass per frame.
pub const COALESCE_WAIT_BYTES_MAX: usize = 16 * 1024;
/// A drained buffer larger than this is given back to the allocator, so
/// thousands of idle connections hold no burst-sized buffers.
const COALESCE_KEEP_BYTES: usize = 8 * 1024;

pub struct Coalesced<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
    /// The current flush has already let the scheduler run once.
    yielded: bool,
}

impl<T> Coalesced<T> {
    pub fn new(inner: T) -> Coalesced<T> {
        Coalesced { inner, buf: Vec::new(), written: 0, yielded: false }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.buf.capacity() > COALESCE_KEEP_BYTES {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: drains the buffer if they would
    /// overflow it. `Ok(false)`: the write is large and the buffer empty, so
    /// it goes straight to the socket.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if !self.buf.is_empty() && self.buf.len() + len > COALESCE_BYTES_MAX {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(!(self.buf.is_empty() && len >= COALESCE_BYTES_MAX)))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if !ready!(self.poll_room(cx, data.len()))? {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = slices.iter().map(|s| s.len()).sum();
        if !ready!(self.poll_room(cx, len))? {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, slices);
        }
        for slice in slices {
            self.buf.extend_from_slice(slice);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            if !self.yielded && self.buf.len() < COALESCE_WAIT_BYTES_MAX {
                // Runs again after the tasks already queued, which may write.
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_drain(cx))?;
        }
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Polls `out`'s flush once, with a waker that does nothing.
    fn flush_once<T: AsyncWrite + Unpin>(out: &mut Coalesced<T>) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        Pin::new(out).poll_flush(&mut cx)
    }

    /// Whether `reader` has bytes ready now.
    fn readable<R: AsyncRead + Unpin>(reader: &mut R) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        Pin::new(reader).poll_read(&mut cx, &mut buf).is_ready()
    }

    #[tokio::test]
    async fn small_writes_wait_one_pass_and_leave_together() {
        let (client, mut server) = tokio::io::duplex(4 * COALESCE_BYTES_MAX);
        let mut out = Coalesced::new(client);
        out.write_all(b"one ").await.unwrap();
        out.write_all(b"two").await.unwrap();
        assert!(!readable(&mut server), "writes are held until the flush");
        assert!(flush_once(&mut out).is_pending(), "the first flush lets the scheduler run once");
        assert!(!readable(&mut server));
        out.write_all(b" three").await.unwrap();
        assert!(matches!(flush_once(&mut out), Poll::Ready(Ok(()))), "the second flush writes");
        let mut got = [0u8; 13];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two three");
        assert!(matches!(flush_once(&mut out), Poll::Ready(Ok(()))), "nothing held: nothing to wait for");
    }

    #[tokio::test]
    async fn a_bulk_flush_does_not_wait() {
        let (client, mut server) = tokio::io::duplex(4 * COALESCE_BYTES_MAX);
        let mut out = Coalesced::new(client);
        let frame = vec![3u8; COALESCE_WAIT_BYTES_MAX];
        out.write_all(&frame).await.unwrap();
        assert!(matches!(flush_once(&mut out), Poll::Ready(Ok(()))), "a full frame goes out at once");
        let mut got = vec![0u8; frame.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame);
    }

    #[tokio::test]
    async fn large_writes_keep_their_order_and_shutdown_sends_the_rest() {
        let (client, mut server) = tokio::io::duplex(4 * COALESCE_BYTES_MAX);
        let mut out = Coalesced::new(client);
        // A write that fills the buffer sends what was held first, in order.
        out.write_all(b"head").await.unwrap();
        let large = vec![7u8; COALESCE_BYTES_MAX];
        out.write_all(&large).await.unwrap();
        out.flush().await.unwrap();
        let mut got = vec![0u8; 4 + large.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..].iter().all(|b| *b == 7));

        out.write_all(b"tail").await.unwrap();
        out.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"tail", "shutdown sends what is held");
    }
}
