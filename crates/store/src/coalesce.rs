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

    pub fn get_ref(&self) -> &T {
        &self.inner
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
        self.buf.clear();
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
            if !self.yielded {
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

    #[tokio::test]
    async fn holds_writes_until_flush_and_passes_large_ones_through() {
        let (client, mut server) = tokio::io::duplex(4 * COALESCE_BYTES_MAX);
        let mut out = Coalesced::new(client);
        out.write_all(b"one ").await.unwrap();
        out.write_all(b"two").await.unwrap();
        let mut probe = [0u8; 16];
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut probe)).await;
        assert!(nothing.is_err(), "small writes wait for the flush");
        out.flush().await.unwrap();
        let n = server.read(&mut probe).await.unwrap();
        assert_eq!(&probe[..n], b"one two");

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
