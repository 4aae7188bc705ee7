//! The peer transport: openraft's RPCs over gRPC (`fivefoldpb.Peer`), each
//! payload serialized with bincode, one lazily connected channel per peer;
//! AppendEntries goes over a `raft_stream` when the peer takes one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use etcd_proto::fivefoldpb::peer_client::PeerClient;
use etcd_proto::fivefoldpb::RaftPayload;
use hyper_util::rt::TokioIo;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::coalesce::Coalesced;
use crate::raft_stream::{RaftStream, StreamError, METHOD_APPEND_ENTRIES};
use crate::types::{Member, NodeId, TypeConfig};

/// Largest peer message: a batch of entries or a snapshot chunk.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long a peer connection attempt may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Opens a lazily connected channel to a peer or member URL. Its socket
/// writes are coalesced like the listeners' (`coalesce`): a request's
/// HEADERS, DATA and end-of-stream frames leave in one write, not three.
pub fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(connect)))
}

/// Connects to the peer at `uri` behind a write-coalescing wrapper.
async fn connect(uri: http::Uri) -> std::io::Result<TokioIo<Coalesced<TcpStream>>> {
    Ok(TokioIo::new(Coalesced::new(dial(peer_addr(&uri.to_string())?).await?)))
}

/// The address of a peer URL, checked as the flags are (`http://ip:port`).
pub(crate) fn peer_addr(url: &str) -> std::io::Result<SocketAddr> {
    crate::config::parse_url("peer URL", url)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// A TCP connection to a peer, without Nagle's delay (small Raft messages
/// must not wait for delayed ACKs).
pub(crate) async fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// After a peer hung up on a raft stream without answering (a member of a
/// version without them), or did not know a stream method, AppendEntries or
/// forwarded writes (whichever it refused) go over gRPC this long before the
/// stream is tried again.
pub const STREAM_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A peer channel that sends each request body whole (see [`WholeBodies`]).
pub type PeerChannel = WholeBodies<Channel>;

pub fn peer_client(url: &str) -> Result<PeerClient<PeerChannel>, tonic::transport::Error> {
    Ok(PeerClient::new(WholeBodies(channel(url)?))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}

/// Peer channels by URL, shared by everything that talks to peers: openraft
/// asks for a new client per heartbeat round of a linearizable read, and a
/// channel per call would mean a TCP and HTTP/2 handshake per read.
#[derive(Debug, Clone, Default)]
pub struct PeerChannels {
    clients: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, PeerClient<PeerChannel>>>>,
    /// Test-only rules for what is sent (see `faults`).
    pub faults: std::sync::Arc<crate::faults::PeerFaults>,
}

impl PeerChannels {
    /// The shared client for `url`; the fault rules are the caller's.
    pub fn get(&self, url: &str) -> Result<PeerClient<PeerChannel>, tonic::transport::Error> {
        let mut clients = self.clients.lock().expect("peer channel map lock");
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let client = peer_client(url)?;
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }
}

/// Hands a request to the channel with its body already gathered, so the
/// last DATA frame carries END_STREAM. tonic's encoder learns that its one
/// message was the last only when polled again, so hyper followed each
/// request with an empty DATA frame of its own, written after a task switch;
/// the peer dispatches a unary call only once it has that frame, so every
/// AppendEntries waited for it (and cost each side a syscall).
#[derive(Debug, Clone)]
pub struct WholeBodies<S>(S);

impl<S> tower::Service<http::Request<tonic::body::Body>> for WholeBodies<S>
where
    S: tower::Service<http::Request<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The ready handle goes with the call; a fresh clone stays behind.
        let fresh = self.0.clone();
        let mut ready = std::mem::replace(&mut self.0, fresh);
        Box::pin(async move {
            type Error = Box<dyn std::error::Error + Send + Sync>;
            let (parts, body) = request.into_parts();
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .map_err(|status| -> Error { Box::new(status) })?
                .to_bytes();
            let body = tonic::body::Body::new(http_body_util::Full::new(bytes));
            ready.call(http::Request::from_parts(parts, body)).await.map_err(Into::into)
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Network {
    pub channels: PeerChannels,
}

pub struct PeerConnection {
    target: NodeId,
    url: String,
    client: Option<PeerClient<PeerChannel>>,
    channels: PeerChannels,
    /// The AppendEntries stream (`raft_stream`), connected on first use and
    /// dropped on any failure.
    stream: Option<RaftStream>,
    /// When the peer last refused a stream (see `STREAM_RETRY_AFTER`).
    stream_refused_at: Option<Instant>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        let url = node.peer_urls.first().cloned().unwrap_or_default();
        PeerConnection {
            target,
            url,
            client: None,
            channels: self.channels.clone(),
            stream: None,
            stream_refused_at: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerConnection {
    fn client(&mut self) -> Result<PeerClient<PeerChannel>, TransportError> {
        if self.client.is_none() {
            let client = self
                .channels
                .get(&self.url)
                .map_err(|e| TransportError(format!("peer {}: {e}", self.url)))?;
            self.client = Some(client);
        }
        Ok(self.client.clone().expect("set above"))
    }

    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = self.encode_and_pass(request).await?;
        self.send(method, data, option).await
    }

    /// `request` encoded, once the fault rules let a message through.
    async fn encode_and_pass<Req: Serialize, E>(
        &self,
        request: &Req,
    ) -> Result<Vec<u8>, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
    {
        let data = bincode::serialize(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.channels
            .faults
            .pass(&self.url)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        Ok(data)
    }

    /// A peer's encoded answer: its response, or the Raft error it returned.
    fn decode_reply<Resp, E>(
        &self,
        reply: &[u8],
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends an encoded request over gRPC (the fault rules already passed).
    async fn send<Resp, E>(
        &mut self,
        method: Method,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| {
            let e = TransportError(format!("peer {}: {}", self.url, status.message()));
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            }
        })?;
        self.decode_reply(&reply.into_inner().data)
    }
}

impl PeerConnection {
    /// Whether AppendEntries should try the stream (not refused lately).
    fn stream_usable(&self) -> bool {
        self.stream_refused_at.is_none_or(|at| at.elapsed() >= STREAM_RETRY_AFTER)
    }

    /// One encoded AppendEntries over the raft stream. `None`: the peer
    /// does not take streams; use gRPC.
    async fn append_on_stream(
        &mut self,
        data: &[u8],
        option: &RPCOption,
    ) -> Option<Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>>> {
        // The stream travels inside the exchange: if the call is cut short
        // (here, or by openraft dropping this future), it is dropped with it
        // and never carries a stale answer into the next call.
        let stream = self.stream.take();
        let url = &self.url;
        let exchange = async move {
            let mut stream = match stream {
                Some(stream) => stream,
                None => RaftStream::connect(peer_addr(url)?).await?,
            };
            let reply = stream.call(METHOD_APPEND_ENTRIES, data).await?;
            Ok::<_, StreamError>((stream, reply))
        };
        let url = &self.url;
        let failed = |e: &dyn std::fmt::Display, transport: bool| {
            let e = TransportError(format!("peer {url}: {e}"));
            if transport {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(Ok((stream, reply))) => {
                self.stream = Some(stream);
                reply
            }
            Ok(Err(StreamError::Refused)) => {
                tracing::info!(peer = %self.url, "peer does not take raft streams; replicating over gRPC");
                self.stream_refused_at = Some(Instant::now());
                return None;
            }
            Ok(Err(e)) => return Some(Err(failed(&e, e.is_transport()))),
            Err(_) => return Some(Err(failed(&"timed out", true))),
        };
        Some(self.decode_reply(&reply))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let data = self.encode_and_pass(&rpc).await?;
        if self.stream_usable() {
            if let Some(reply) = self.append_on_stream(&data, &option).await {
                return reply;
            }
        }
        self.send(Method::AppendEntries, data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
