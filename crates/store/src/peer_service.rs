//! `fivefoldpb.Peer`: the member-to-member service. Raft RPCs arrive here, and
//! followers forward writes and read-index requests to the leader.

use std::sync::Arc;

use etcd_proto::fivefoldpb::peer_server::Peer;
use etcd_proto::fivefoldpb::{
    ProposeRequest, ProposeResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::node::StoreNode;

pub struct PeerService {
    pub node: Arc<StoreNode>,
}

fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    bincode::deserialize(&payload.data)
        .map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = bincode::serialize(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request.get_ref())?;
        encode(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request.get_ref())?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request.get_ref())?;
        encode(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let command = request.into_inner().command.ok_or_else(|| Status::invalid_argument("no command"))?;
        let response = self.node.propose_forwarded(command).await?;
        Ok(Response::new(ProposeResponse { response: Some(response) }))
    }

    async fn lease_renew(
        &self,
        request: Request<etcd_proto::etcdserverpb::LeaseKeepAliveRequest>,
    ) -> Result<Response<etcd_proto::etcdserverpb::LeaseKeepAliveResponse>, Status> {
        Ok(Response::new(self.node.lease_renew_here(request.get_ref().id).await?))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<etcd_proto::etcdserverpb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<etcd_proto::etcdserverpb::LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(self.node.lease_time_to_live_here(request.get_ref()).await?))
    }

    async fn member_add(
        &self,
        request: Request<etcd_proto::etcdserverpb::MemberAddRequest>,
    ) -> Result<Response<etcd_proto::etcdserverpb::MemberAddResponse>, Status> {
        Ok(Response::new(self.node.member_add_here(request.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        request: Request<etcd_proto::etcdserverpb::MemberRemoveRequest>,
    ) -> Result<Response<etcd_proto::etcdserverpb::MemberRemoveResponse>, Status> {
        Ok(Response::new(self.node.member_remove_here(request.into_inner()).await?))
    }

    async fn member_update(
        &self,
        request: Request<etcd_proto::etcdserverpb::MemberUpdateRequest>,
    ) -> Result<Response<etcd_proto::etcdserverpb::MemberUpdateResponse>, Status> {
        Ok(Response::new(self.node.member_update_here(request.into_inner()).await?))
    }

    async fn member_promote(
        &self,
        request: Request<etcd_proto::etcdserverpb::MemberPromoteRequest>,
    ) -> Result<Response<etcd_proto::etcdserverpb::MemberPromoteResponse>, Status> {
        Ok(Response::new(self.node.member_promote_here(request.into_inner()).await?))
    }

    async fn members(
        &self,
        _request: Request<etcd_proto::etcdserverpb::MemberListRequest>,
    ) -> Result<Response<etcd_proto::etcdserverpb::MemberListResponse>, Status> {
        let members = self.node.member_list().await?;
        let header = Some(self.node.header(self.node.mvcc.revision()));
        Ok(Response::new(etcd_proto::etcdserverpb::MemberListResponse { header, members }))
    }

    async fn hold_elections(
        &self,
        request: Request<etcd_proto::fivefoldpb::LeaderTransfer>,
    ) -> Result<Response<etcd_proto::fivefoldpb::Empty>, Status> {
        self.node.hold_elections(std::time::Duration::from_millis(request.get_ref().hold_ms));
        Ok(Response::new(etcd_proto::fivefoldpb::Empty {}))
    }

    async fn campaign(
        &self,
        request: Request<etcd_proto::fivefoldpb::LeaderTransfer>,
    ) -> Result<Response<etcd_proto::fivefoldpb::Empty>, Status> {
        self.node.campaign(request.into_inner());
        Ok(Response::new(etcd_proto::fivefoldpb::Empty {}))
    }

    async fn inject_faults(
        &self,
        request: Request<etcd_proto::fivefoldpb::FaultRules>,
    ) -> Result<Response<etcd_proto::fivefoldpb::Empty>, Status> {
        if !self.node.config.fault_injection {
            return Err(Status::failed_precondition(
                "fault injection is off: start the member with --experimental-fault-injection (tests only)",
            ));
        }
        self.node.inject_faults(request.get_ref());
        Ok(Response::new(etcd_proto::fivefoldpb::Empty {}))
    }

    async fn pre_vote(
        &self,
        request: Request<etcd_proto::fivefoldpb::PreVoteRequest>,
    ) -> Result<Response<etcd_proto::fivefoldpb::PreVoteResponse>, Status> {
        Ok(Response::new(self.node.answer_pre_vote(request.get_ref()).await))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let deadline = Instant::now() + self.node.config.request_timeout;
        let index = self.node.read_index_here(deadline).await?;
        Ok(Response::new(ReadIndexResponse { index }))
    }
}
