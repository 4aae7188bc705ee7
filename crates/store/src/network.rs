//! The peer transport: openraft's RPCs over gRPC (`fivefoldpb.Peer`), each
//! payload serialized with bincode. One lazily connected channel per peer.

use std::time::Duration;

use etcd_proto::fivefoldpb::peer_client::PeerClient;
use etcd_proto::fivefoldpb::RaftPayload;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Member, NodeId, TypeConfig};

/// Largest peer message: a batch of entries or a snapshot chunk.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long a peer connection attempt may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Opens a lazily connected channel to a peer or member URL.
pub fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

pub fn peer_client(url: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
    Ok(PeerClient::new(channel(url)?)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}

/// Peer channels by URL, shared by everything that talks to peers: openraft
/// asks for a new client per heartbeat round of a linearizable read, and a
/// channel per call would mean a TCP and HTTP/2 handshake per read.
#[derive(Debug, Clone, Default)]
pub struct PeerChannels {
    clients: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, PeerClient<Channel>>>>,
    /// Test-only rules for what is sent (see `faults`).
    pub faults: std::sync::Arc<crate::faults::PeerFaults>,
}

impl PeerChannels {
    /// A client for `url`, once the fault rules let a message through to it.
    pub async fn passing(&self, url: &str) -> Result<PeerClient<Channel>, PeerUnreachable> {
        self.faults.pass(url).await.map_err(|e| PeerUnreachable(e.to_string()))?;
        self.get(url).map_err(|e| PeerUnreachable(format!("peer {url}: {e}")))
    }

    pub fn get(&self, url: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        let mut clients = self.clients.lock().expect("peer channel map lock");
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let client = peer_client(url)?;
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Network {
    pub channels: PeerChannels,
}

pub struct PeerConnection {
    target: NodeId,
    url: String,
    client: Option<PeerClient<Channel>>,
    channels: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        let url = node.peer_urls.first().cloned().unwrap_or_default();
        PeerConnection { target, url, client: None, channels: self.channels.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

/// A peer that cannot be sent to (dropped by a fault rule, or no channel).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PeerUnreachable(pub String);

impl PeerConnection {
    fn client(&mut self) -> Result<PeerClient<Channel>, TransportError> {
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
        let data = bincode::serialize(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.channels
            .faults
            .pass(&self.url)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
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
        let result: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
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
        self.call(Method::AppendEntries, &rpc, &option).await
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
