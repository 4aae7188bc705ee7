//! AppendEntries, and a follower's forwarded writes, over a plain framed TCP
//! stream beside gRPC on the peer port.
//!
//! Replication is the hot path of every write: each AppendEntries is a round
//! trip the client's put waits for. Over gRPC a call crossed four tasks
//! besides the caller and the handler (tonic's channel buffer and hyper's
//! connection task on each side) and paid HTTP/2 framing and header
//! compression both ways. openraft sends to a follower one request at a time,
//! so a stream needs no multiplexing: the replication task writes a frame
//! and reads the answer itself, and on the follower the connection's task
//! calls Raft directly. A follower's forwarded writes take the same road to
//! the leader (`METHOD_PROPOSE`, see `forwarder`), over a few pooled
//! connections, one batch in flight on each.
//!
//! A connection opens with [`STREAM_MAGIC`]; the peer listener reads those
//! bytes to tell it from an HTTP/2 connection (whose preface differs), and
//! hands anything else to gRPC with the bytes put back ([`Replayed`]). The
//! member answers with the same bytes: a peer that answers anything else, or
//! hangs up first (a version without streams: its HTTP/2 server sends its
//! SETTINGS, then drops the connection), refuses streams
//! ([`StreamError::Refused`]), and the caller uses gRPC instead.
//!
//! Frames, both ways: `length u32 | id u64 | tag u8 | payload` (integers
//! big-endian; the length counts what follows it). A request's tag is its
//! method and its payload bincode (a forward: protobuf); an answer carries
//! its request's id, tag 0 and bincode (protobuf), tag 1 and a utf-8 error
//! message, or tag 2 and a gRPC status (`code i32 | message`). A member
//! that does not know a method answers tag 1, so the caller can fall back
//! to gRPC. The client checks the
//! id, and a call cut short (a timeout, a dropped future) drops the
//! connection with it, so no answer is ever taken for another request's.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_proto::fivefoldpb::Command;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;

use crate::node::StoreNode;

/// The first bytes a stream connection sends, and the member's answer. An
/// HTTP/2 connection starts with `PRI * HTTP/2.0`, so the two never share a
/// prefix.
pub const STREAM_MAGIC: &[u8; 8] = b"FFRAFT01";
/// How long the listener waits for a new connection's first bytes.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame either side accepts (after the length): the peer message
/// limit. The body is read as it arrives, never allocated up front.
pub const FRAME_BYTES_MAX: usize = crate::network::PEER_MESSAGE_BYTES_MAX;
/// Read buffer of a stream: one small frame per read call.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes of a frame before its payload: id and tag.
const FRAME_HEADER_BYTES: usize = 8 + 1;

/// The request kinds a stream carries.
pub const METHOD_APPEND_ENTRIES: u8 = 1;
/// A follower's forwarded writes to the leader: a protobuf `Command` (a
/// batch), answered with a protobuf `CommandResponse` or a gRPC status.
pub const METHOD_PROPOSE: u8 = 2;

/// How a member's error answer to a method it does not know begins.
pub const UNKNOWN_METHOD: &str = "unknown raft stream method";

const ANSWER_OK: u8 = 0;
const ANSWER_ERROR: u8 = 1;
/// An error answer carrying a gRPC status: `code i32 | utf-8 message`.
const ANSWER_STATUS: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("answer to request {got} while waiting for {wanted}")]
    Mismatch { wanted: u64, got: u64 },
    #[error("the peer answered: {0}")]
    Remote(String),
    /// The peer answered with a gRPC status (a forwarded write it refused).
    #[error("the peer answered {}: {message}", tonic::Code::from_i32(*code))]
    Status { code: i32, message: String },
    /// The peer did not answer the magic bytes with its own: a member that
    /// does not speak this transport.
    #[error("the peer does not take raft streams")]
    Refused,
}

impl StreamError {
    /// Whether the failure is the connection's (lost, timed out) rather
    /// than a malformed exchange.
    pub fn is_transport(&self) -> bool {
        matches!(self, StreamError::Io(_))
    }
}

/// A frame as read: its id, tag and payload.
#[derive(Debug)]
struct Frame {
    id: u64,
    tag: u8,
    payload: Vec<u8>,
}

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, StreamError> {
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
    if len < FRAME_HEADER_BYTES {
        return Err(StreamError::Short(len));
    }
    let mut header = [0u8; FRAME_HEADER_BYTES];
    reader.read_exact(&mut header).await?;
    let payload_len = len - FRAME_HEADER_BYTES;
    let mut payload = Vec::with_capacity(payload_len.min(READ_BUFFER_BYTES));
    let read = reader.take(payload_len as u64).read_to_end(&mut payload).await?;
    if read < payload_len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    let id = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    Ok(Some(Frame { id, tag: header[8], payload }))
}

/// What precedes a frame's payload: its length, id and tag.
fn frame_head(id: u64, tag: u8, payload_len: usize) -> Result<[u8; 4 + FRAME_HEADER_BYTES], StreamError> {
    let len = FRAME_HEADER_BYTES + payload_len;
    if len > FRAME_BYTES_MAX {
        return Err(StreamError::TooLarge(len));
    }
    let mut head = [0u8; 4 + FRAME_HEADER_BYTES];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4..12].copy_from_slice(&id.to_be_bytes());
    head[12] = tag;
    Ok(head)
}

/// Writes one frame: head and payload in one vectored write, the payload
/// not copied.
async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    id: u64,
    tag: u8,
    payload: &[u8],
) -> Result<(), StreamError> {
    let head = frame_head(id, tag, payload.len())?;
    writer.write_all_buf(&mut bytes::Buf::chain(&head[..], payload)).await?;
    Ok(())
}

/// The client end, owned by one replication task or one forward at a time.
pub struct RaftStream {
    stream: BufReader<TcpStream>,
    /// The id of the last request sent.
    last_id: u64,
}

impl RaftStream {
    /// Connects to `addr` and trades magic bytes; `Refused` when the peer
    /// answers otherwise or hangs up first.
    pub async fn connect(addr: std::net::SocketAddr) -> Result<RaftStream, StreamError> {
        let stream = crate::network::dial(addr).await?;
        let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        stream.write_all(STREAM_MAGIC).await?;
        let mut answer = [0u8; STREAM_MAGIC.len()];
        match stream.read_exact(&mut answer).await {
            Ok(_) if &answer == STREAM_MAGIC => Ok(RaftStream { stream, last_id: 0 }),
            Ok(_) => Err(StreamError::Refused),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                Err(StreamError::Refused)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends one request and waits for its answer's payload.
    pub async fn call(&mut self, method: u8, payload: &[u8]) -> Result<Vec<u8>, StreamError> {
        self.last_id += 1;
        let id = self.last_id;
        write_frame(&mut self.stream, id, method, payload).await?;
        let Some(answer) = read_frame(&mut self.stream).await? else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        };
        if answer.id != id {
            return Err(StreamError::Mismatch { wanted: id, got: answer.id });
        }
        match answer.tag {
            ANSWER_OK => Ok(answer.payload),
            ANSWER_STATUS if answer.payload.len() >= 4 => {
                let code = i32::from_be_bytes(answer.payload[..4].try_into().expect("4 bytes"));
                let message = String::from_utf8_lossy(&answer.payload[4..]).into_owned();
                Err(StreamError::Status { code, message })
            }
            _ => Err(StreamError::Remote(String::from_utf8_lossy(&answer.payload).into_owned())),
        }
    }

    /// Whether the peer hung up (or sent something unasked) while this
    /// stream sat idle: such a stream is not to be used again. One
    /// non-blocking read at most.
    pub fn is_stale(&mut self) -> bool {
        if !self.stream.buffer().is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        !matches!(self.stream.get_ref().try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Serves one stream connection (its magic bytes already read) until the
/// peer closes it or `stop` fires.
pub async fn serve(node: Arc<StoreNode>, stream: TcpStream, mut stop: tokio::sync::watch::Receiver<bool>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    if let Err(e) = stream.write_all(STREAM_MAGIC).await {
        tracing::debug!(%peer, error = %e, "raft stream closed");
        return;
    }
    loop {
        let request = tokio::select! {
            request = read_frame(&mut stream) => request,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "raft stream closed");
                return;
            }
        };
        let (tag, payload) = answer(&node, request.tag, &request.payload).await;
        let written = write_frame(&mut stream, request.id, tag, &payload).await;
        if let Err(e) = written {
            tracing::debug!(%peer, error = %e, "raft stream closed");
            return;
        }
    }
}

/// The answer to one request: its tag and payload.
async fn answer(node: &StoreNode, method: u8, payload: &[u8]) -> (u8, Vec<u8>) {
    match method {
        METHOD_APPEND_ENTRIES => {
            let answered = match bincode::deserialize(payload) {
                Ok(rpc) => {
                    bincode::serialize(&node.raft.append_entries(rpc).await).map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("bad raft payload: {e}")),
            };
            match answered {
                Ok(payload) => (ANSWER_OK, payload),
                Err(message) => (ANSWER_ERROR, message.into_bytes()),
            }
        }
        METHOD_PROPOSE => {
            let answered = match Command::decode(payload) {
                Ok(command) => node.propose_forwarded(command).await,
                Err(e) => Err(tonic::Status::invalid_argument(format!("bad forwarded command: {e}"))),
            };
            match answered {
                Ok(response) => (ANSWER_OK, response.encode_to_vec()),
                Err(status) => (ANSWER_STATUS, status_payload(&status)),
            }
        }
        other => (ANSWER_ERROR, format!("{UNKNOWN_METHOD} {other}").into_bytes()),
    }
}

/// A status as an `ANSWER_STATUS` payload.
fn status_payload(status: &tonic::Status) -> Vec<u8> {
    let mut out = (status.code() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(status.message().as_bytes());
    out
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

    /// A whole frame in one buffer, as `write_frame` sends it.
    fn frame(id: u64, tag: u8, payload: &[u8]) -> Result<Vec<u8>, StreamError> {
        let mut out = frame_head(id, tag, payload.len())?.to_vec();
        out.extend_from_slice(payload);
        Ok(out)
    }

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

    /// A server speaking the stream protocol: acknowledges the magic, then
    /// answers each request with `reply(request)`.
    async fn fake_member(reply: fn(Frame) -> Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let Accepted::Stream(stream) = classify(stream).await.unwrap() else { panic!("not a stream") };
            let mut stream = BufReader::new(stream);
            stream.write_all(STREAM_MAGIC).await.unwrap();
            while let Some(request) = read_frame(&mut stream).await.unwrap() {
                stream.write_all(&reply(request)).await.unwrap();
            }
        });
        (port, server)
    }

    #[tokio::test]
    async fn frames_cross_and_errors_come_back_as_errors() {
        let (port, server) = fake_member(|request| match request.tag {
            METHOD_APPEND_ENTRIES => frame(request.id, ANSWER_OK, &request.payload).unwrap(),
            _ => frame(request.id, ANSWER_ERROR, b"no such thing").unwrap(),
        })
        .await;
        let mut client = RaftStream::connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let big = vec![7u8; 300_000];
        assert_eq!(client.call(METHOD_APPEND_ENTRIES, &big).await.unwrap(), big);
        assert_eq!(client.call(METHOD_APPEND_ENTRIES, b"").await.unwrap(), b"");
        match client.call(9, b"x").await {
            Err(StreamError::Remote(message)) => assert_eq!(message, "no such thing"),
            other => panic!("expected the remote error, got {other:?}"),
        }
        drop(client);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_status_answer_keeps_its_code_and_message() {
        let (port, _server) = fake_member(|request| {
            frame(request.id, ANSWER_STATUS, &status_payload(&tonic::Status::unavailable("not here")))
                .unwrap()
        })
        .await;
        let mut client = RaftStream::connect(([127, 0, 0, 1], port).into()).await.unwrap();
        match client.call(METHOD_PROPOSE, b"x").await {
            Err(StreamError::Status { code, message }) => {
                assert_eq!(tonic::Code::from_i32(code), tonic::Code::Unavailable);
                assert_eq!(message, "not here");
            }
            other => panic!("expected the status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_idle_stream_whose_peer_hung_up_is_stale() {
        let (port, server) = fake_member(|request| frame(request.id, ANSWER_OK, b"").unwrap()).await;
        let mut client = RaftStream::connect(([127, 0, 0, 1], port).into()).await.unwrap();
        client.call(METHOD_PROPOSE, b"x").await.unwrap();
        assert!(!client.is_stale(), "a live idle stream is usable");
        server.abort();
        let _ = server.await;
        // The hang-up reaches the client's socket a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !client.is_stale() {
            assert!(std::time::Instant::now() < deadline, "the hang-up was never seen");
            tokio::task::yield_now().await;
            client.stream.get_ref().readable().await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_answer_to_another_request_is_an_error() {
        let (port, _server) = fake_member(|request| frame(request.id + 1, ANSWER_OK, b"late").unwrap()).await;
        let mut client = RaftStream::connect(([127, 0, 0, 1], port).into()).await.unwrap();
        assert!(matches!(
            client.call(METHOD_APPEND_ENTRIES, b"x").await,
            Err(StreamError::Mismatch { wanted: 1, got: 2 })
        ));
    }

    #[tokio::test]
    async fn a_member_without_streams_refuses_them() {
        // An HTTP/2 server's first bytes (an empty SETTINGS frame), then it
        // hangs up on a preface it does not recognise.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let mut head = [0u8; 8];
            stream.read_exact(&mut head).await.unwrap();
        });
        assert!(matches!(
            RaftStream::connect(([127, 0, 0, 1], port).into()).await,
            Err(StreamError::Refused)
        ));
        server.await.unwrap();
        // One that hangs up without a word.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 8];
            stream.read_exact(&mut head).await.unwrap();
        });
        assert!(matches!(
            RaftStream::connect(([127, 0, 0, 1], port).into()).await,
            Err(StreamError::Refused)
        ));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn bad_lengths_are_refused_and_cut_frames_are_errors() {
        let (mut client, server) = pair().await;
        client.write_all(&((FRAME_BYTES_MAX + 1) as u32).to_be_bytes()).await.unwrap();
        let mut server = BufReader::new(server);
        assert!(matches!(read_frame(&mut server).await, Err(StreamError::TooLarge(_))));

        let (mut client, server) = pair().await;
        client.write_all(&3u32.to_be_bytes()).await.unwrap();
        let mut server = BufReader::new(server);
        assert!(matches!(read_frame(&mut server).await, Err(StreamError::Short(3))));

        // Announces 1 MiB, sends 10 bytes, hangs up.
        let (mut client, server) = pair().await;
        let mut cut = frame(1, METHOD_APPEND_ENTRIES, &vec![0u8; 1 << 20]).unwrap();
        cut.truncate(4 + FRAME_HEADER_BYTES + 10);
        client.write_all(&cut).await.unwrap();
        drop(client);
        let mut server = BufReader::new(server);
        match read_frame(&mut server).await {
            Err(StreamError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected an early end, got {other:?}"),
        }
    }
}
