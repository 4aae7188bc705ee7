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
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::node::{Retry, StoreNode};

pub struct ClusterService {
    pub node: Arc<StoreNode>,
}

fn with_deadline<T>(message: T, deadline: Instant) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    request
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        let node = &self.node;
        let reply = node
            .on_leader(
                Retry::IfNeverSent,
                || node.member_add_here(req.clone()),
                |mut client, deadline| {
                    let req = req.clone();
                    async move { client.member_add(with_deadline(req, deadline)).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        // Answer only once this member has the change too, as etcd does: a
        // client that asks this member next must see it.
        self.node.read_barrier().await?;
        Ok(Response::new(reply))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let req = request.into_inner();
        let node = &self.node;
        let reply = node
            .on_leader(
                Retry::IfNeverSent,
                || node.member_remove_here(req),
                |mut client, deadline| async move {
                    client.member_remove(with_deadline(req, deadline)).await.map(|r| r.into_inner())
                },
            )
            .await?;
        // Answer only once this member has the change too, as etcd does; a
        // member that removed itself gets no more entries to wait for.
        if req.id != self.node.member_id {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(reply))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        let node = &self.node;
        let reply = node
            .on_leader(
                Retry::IfNeverSent,
                || node.member_update_here(req.clone()),
                |mut client, deadline| {
                    let req = req.clone();
                    async move { client.member_update(with_deadline(req, deadline)).await.map(|r| r.into_inner()) }
                },
            )
            .await?;
        // Answer only once this member has the change too, as etcd does: a
        // client that asks this member next must see it.
        self.node.read_barrier().await?;
        Ok(Response::new(reply))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let req = request.into_inner();
        let node = &self.node;
        let reply = node
            .on_leader(
                Retry::IfNeverSent,
                || node.member_promote_here(req),
                |mut client, deadline| async move {
                    client.member_promote(with_deadline(req, deadline)).await.map(|r| r.into_inner())
                },
            )
            .await?;
        // Answer only once this member has the change too, as etcd does: a
        // client that asks this member next must see it.
        self.node.read_barrier().await?;
        Ok(Response::new(reply))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.node.read_barrier().await?;
        }
        let node = self.node.clone();
        let members = tokio::task::spawn_blocking(move || node.member_list())
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
            members,
        }))
    }
}
