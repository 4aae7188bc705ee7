//! `etcdserverpb.Cluster`: MemberList, MemberAdd (also as learner),
//! MemberPromote, MemberRemove, MemberUpdate. Changes run on the leader; see
//! `membership`.

use std::sync::Arc;

use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};
use std::future::Future;

use etcd_proto::fivefoldpb::peer_client::PeerClient;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::network::PeerChannel;
use crate::node::{Retry, StoreNode};

pub struct ClusterService {
    pub node: Arc<StoreNode>,
}

impl ClusterService {
    /// Runs a membership change on the leader (here or forwarded) and answers
    /// once this member has it too, as etcd does: a client that asks this
    /// member next must see the change. A member that removed itself gets no
    /// more entries to wait for (`wait_here` false).
    async fn change<Req, Resp, Here, HereFut, Remote, RemoteFut>(
        &self,
        req: Req,
        here: Here,
        remote: Remote,
        wait_here: bool,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        Here: Fn(Req) -> HereFut,
        HereFut: Future<Output = Result<Resp, Status>>,
        Remote: Fn(PeerClient<PeerChannel>, tonic::Request<Req>) -> RemoteFut,
        RemoteFut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let reply = self
            .node
            .on_leader(
                Retry::IfNeverSent,
                || here(req.clone()),
                |client, deadline| {
                    let mut request = tonic::Request::new(req.clone());
                    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
                    let call = remote(client, request);
                    async move { call.await.map(tonic::Response::into_inner) }
                },
            )
            .await?;
        if wait_here {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(reply))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let node = &self.node;
        let remote = |mut client: PeerClient<PeerChannel>, r| async move { client.member_add(r).await };
        self.change(request.into_inner(), |r| node.member_add_here(r), remote, true).await
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let node = &self.node;
        let req = request.into_inner();
        let remote = |mut client: PeerClient<PeerChannel>, r| async move { client.member_remove(r).await };
        self.change(req, |r| node.member_remove_here(r), remote, req.id != node.member_id).await
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let node = &self.node;
        let remote = |mut client: PeerClient<PeerChannel>, r| async move { client.member_update(r).await };
        self.change(request.into_inner(), |r| node.member_update_here(r), remote, true).await
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let node = &self.node;
        let remote = |mut client: PeerClient<PeerChannel>, r| async move { client.member_promote(r).await };
        self.change(request.into_inner(), |r| node.member_promote_here(r), remote, true).await
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.node.read_barrier().await?;
        }
        let members = self.node.member_list().await?;
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
            members,
        }))
    }
}
