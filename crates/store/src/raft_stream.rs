//! AppendEntries over a plain framed TCP stream, beside gRPC on the peer port.
//!
//! Replication is the hot path of every write: each AppendEntries is a round
//! trip the client's put waits for. Over gRPC a call crossed four tasks
//! besides the caller and the handler (tonic's channel buffer and hyper's
//! connection task on each side) and paid HTTP/2 framing and header
//! compression both ways. openraft sends to a follower one request at a time,
//! so a stream needs no multiplexing: the replication task writes a frame
//! and reads the answer itself, and on the follower the connection's task
//! calls Raft directly.
//!
//! A connection opens with [`STREAM_MAGIC`]; the peer listener reads those
//! bytes to tell it from an HTTP/2 connection (whose preface differs), and
//! hands anything else to gRPC with the bytes put back ([`Replayed`]).
//!
//! Frames, both ways: `length u32 (big-endian) | body`. A request body is
//! `method u8 | bincode payload`; a response body is `0 | bincode payload`
//! or `1 | utf-8 error message`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;

use crate::node::StoreNode;

/// The first bytes a stream connection sends. An HTTP/2 connection starts
/// with `PRI * HTTP/2.0`, so the two never share a prefix.
pub const STREAM_MAGIC: &[u8; 8] = b"FFRAFT01";
/// How long the listener waits for a new connection's first bytes.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame body either side accepts: the peer message limit.
pub const FRAME_BYTES_MAX: usize = crate::network::PEER_MESSAGE_BYTES_MAX;
/// Read buffer of a stream: one small frame per read call.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The request kinds a stream carries.
pub const METHOD_APPEND_ENTRIES: u8 = 1;

const RESPONSE_OK: u8 = 0;
const RESPONSE_ERROR: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("the peer answered: {0}")]
    Remote(String),
    /// The peer closed the connection before answering the first request:
    /// a member that does not speak this transport (gRPC hangs up on the
    /// magic bytes).
    #[error("the peer closed the stream without answering")]
    Refused,
}

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Vec<u8>>, StreamError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(StreamError::TooLarge(len));
    }
    if len == 0 {
        return Err(StreamError::Empty);
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// One frame: the length, `tag`, then `payload`, in one buffer (one write).
fn frame(tag: u8, payload: &[u8]) -> Result<Vec<u8>, StreamError> {
    let len = payload.len() + 1;
    if len > FRAME_BYTES_MAX {
        return Err(StreamError::TooLarge(len));
    }
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(tag);
    out.extend_from_slice(payload);
    Ok(out)
}

/// The client end, owned by one replication task.
pub struct RaftStream {
    stream: BufReader<TcpStream>,
    /// No request has been answered yet on this connection.
    fresh: bool,
}

impl RaftStream {
    /// Connects to `addr` (`host:port`) and sends the magic bytes.
    pub async fn connect(host: &str, port: u16) -> Result<RaftStream, StreamError> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        stream.write_all(STREAM_MAGIC).await?;
        Ok(RaftStream { stream, fresh: true })
    }

    /// Sends one request and waits for its answer (bincode bytes).
    pub async fn call(&mut self, method: u8, payload: &[u8]) -> Result<Vec<u8>, StreamError> {
        self.stream.write_all(&frame(method, payload)?).await?;
        let Some(mut body) = read_frame(&mut self.stream).await? else {
            return Err(if self.fresh {
                StreamError::Refused
            } else {
                io::Error::from(io::ErrorKind::UnexpectedEof).into()
            });
        };
        self.fresh = false;
        match body[0] {
            RESPONSE_OK => {
                body.remove(0);
                Ok(body)
            }
            _ => Err(StreamError::Remote(String::from_utf8_lossy(&body[1..]).into_owned())),
        }
    }
}

/// Serves one stream connection (the magic bytes already read) until the
/// peer closes it or `stop` fires.
pub async fn serve(node: Arc<StoreNode>, stream: TcpStream, mut stop: tokio::sync::watch::Receiver<bool>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    loop {
        let request = tokio::select! {
            request = read_frame(&mut stream) => request,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let body = match request {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "raft stream closed");
                return;
            }
        };
        let answer = match answer(&node, body[0], &body[1..]).await {
            Ok(payload) => frame(RESPONSE_OK, &payload),
            Err(message) => frame(RESPONSE_ERROR, message.as_bytes()),
        };
        let written = match answer {
            Ok(bytes) => stream.write_all(&bytes).await.map_err(StreamError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::debug!(%peer, error = %e, "raft stream closed");
            return;
        }
    }
}

async fn answer(node: &StoreNode, method: u8, payload: &[u8]) -> Result<Vec<u8>, String> {
    match method {
        METHOD_APPEND_ENTRIES => {
            let rpc = bincode::deserialize(payload).map_err(|e| format!("bad raft payload: {e}"))?;
            bincode::serialize(&node.raft.append_entries(rpc).await).map_err(|e| e.to_string())
        }
        other => Err(format!("unknown raft stream method {other}")),
    }
}

/// What a new peer connection turned out to be.
pub enum Accepted {
    /// A raft stream; its magic bytes are consumed.
    Stream(TcpStream),
    /// Anything else (gRPC): the bytes read so far are given back first.
    Grpc(Replayed<TcpStream>),
}

/// Reads a new connection's first bytes to tell a raft stream from gRPC.
pub async fn classify(mut stream: TcpStream) -> io::Result<Accepted> {
    let mut head = Vec::with_capacity(STREAM_MAGIC.len());
    let mut chunk = [0u8; STREAM_MAGIC.len()];
    while head.len() < STREAM_MAGIC.len() && STREAM_MAGIC.starts_with(&head) {
        let n = stream.read(&mut chunk[..STREAM_MAGIC.len() - head.len()]).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    if head.as_slice() == STREAM_MAGIC {
        Ok(Accepted::Stream(stream))
    } else {
        Ok(Accepted::Grpc(Replayed { head, pos: 0, inner: stream }))
    }
}

/// A stream whose first bytes were read already: reads give them back
/// before reading on.
pub struct Replayed<T> {
    head: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Replayed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.head.len() {
            let n = (self.head.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.head[start..start + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                self.head = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replayed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Replayed<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn the_magic_bytes_make_a_stream_and_are_consumed() {
        let (mut client, server) = pair().await;
        client.write_all(STREAM_MAGIC).await.unwrap();
        client.write_all(b"next").await.unwrap();
        let Accepted::Stream(mut stream) = classify(server).await.unwrap() else { panic!("not a stream") };
        let mut rest = [0u8; 4];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"next");
    }

    #[tokio::test]
    async fn anything_else_goes_to_grpc_with_its_bytes_given_back() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (mut client, server) = pair().await;
        // Sent in two pieces: classification must not depend on one read.
        client.write_all(&preface[..3]).await.unwrap();
        let classified = tokio::spawn(classify(server));
        client.write_all(&preface[3..]).await.unwrap();
        drop(client);
        let Accepted::Grpc(mut replayed) = classified.await.unwrap().unwrap() else { panic!("not grpc") };
        let mut all = Vec::new();
        replayed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, preface);
    }

    #[tokio::test]
    async fn a_magic_prefix_cut_short_is_not_a_stream() {
        let (mut client, server) = pair().await;
        client.write_all(&STREAM_MAGIC[..5]).await.unwrap();
        drop(client);
        let Accepted::Grpc(mut replayed) = classify(server).await.unwrap() else { panic!("not grpc") };
        let mut all = Vec::new();
        replayed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, &STREAM_MAGIC[..5]);
    }

    #[tokio::test]
    async fn frames_cross_and_errors_come_back_as_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let Accepted::Stream(stream) = classify(stream).await.unwrap() else { panic!("not a stream") };
            let mut stream = BufReader::new(stream);
            // Echo the first request's payload, refuse the second.
            let body = read_frame(&mut stream).await.unwrap().unwrap();
            assert_eq!(body[0], METHOD_APPEND_ENTRIES);
            stream.write_all(&frame(RESPONSE_OK, &body[1..]).unwrap()).await.unwrap();
            read_frame(&mut stream).await.unwrap().unwrap();
            stream.write_all(&frame(RESPONSE_ERROR, b"no such thing").unwrap()).await.unwrap();
            assert!(read_frame(&mut stream).await.unwrap().is_none(), "the client hung up");
        });
        let mut client = RaftStream::connect("127.0.0.1", port).await.unwrap();
        let big = vec![7u8; 300_000];
        assert_eq!(client.call(METHOD_APPEND_ENTRIES, &big).await.unwrap(), big);
        match client.call(9, b"x").await {
            Err(StreamError::Remote(message)) => assert_eq!(message, "no such thing"),
            other => panic!("expected the remote error, got {other:?}"),
        }
        drop(client);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_hanging_up_before_the_first_answer_refuses_streams() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // What a gRPC server does with bytes that are not an HTTP/2 preface.
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 8];
            stream.read_exact(&mut head).await.unwrap();
        });
        let mut client = RaftStream::connect("127.0.0.1", port).await.unwrap();
        server.await.unwrap();
        assert!(matches!(client.call(METHOD_APPEND_ENTRIES, b"x").await, Err(StreamError::Refused)));
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_reading_them() {
        let (mut client, server) = pair().await;
        client.write_all(&((FRAME_BYTES_MAX + 1) as u32).to_be_bytes()).await.unwrap();
        let mut server = BufReader::new(server);
        assert!(matches!(read_frame(&mut server).await, Err(StreamError::TooLarge(_))));
    }
}
