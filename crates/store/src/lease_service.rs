//! `etcdserverpb.Lease`: Grant and Revoke go through the log; KeepAlive and
//! TimeToLive are answered by the leader (forwarded from a follower); Leases
//! is a linearizable read of the replicated lease set.

use std::sync::Arc;

use etcd_proto::etcdserverpb::lease_server::Lease;
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use etcd_proto::fivefoldpb::{command, command_response};
use mvcc::limits::LEASE_TTL_MAX_SECONDS;
use mvcc::MvccError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::node::{status_of, StoreNode};

/// Keep-alive responses queued for one stream.
const KEEPALIVE_QUEUE: usize = 16;

pub struct LeaseService {
    pub node: Arc<StoreNode>,
}

impl LeaseService {
    /// etcd's smallest TTL: one and a half election timeouts, in whole seconds,
    /// so a lease survives a leader change.
    fn ttl_min_seconds(&self) -> i64 {
        let min = self.node.config.election_timeout.as_millis() as i64 * 3 / 2;
        (min + 999) / 1000
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = request.into_inner();
        if req.ttl > LEASE_TTL_MAX_SECONDS {
            return Err(status_of(&MvccError::LeaseTtlTooLarge));
        }
        req.ttl = req.ttl.max(self.ttl_min_seconds());
        self.node.check_quota(std::mem::size_of::<LeaseGrantRequest>()).await?;
        if req.id == 0 {
            req.id = self.node.lessor.next_id();
        }
        let resp = self
            .node
            .propose(etcd_proto::fivefoldpb::Command { kind: Some(command::Kind::LeaseGrant(req)) })
            .await?;
        match resp.kind {
            Some(command_response::Kind::LeaseGrant(mut r)) => {
                r.header = Some(self.node.header(resp.revision));
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected response kind")),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = request.into_inner();
        let resp = self
            .node
            .propose(etcd_proto::fivefoldpb::Command { kind: Some(command::Kind::LeaseRevoke(req)) })
            .await?;
        match resp.kind {
            Some(command_response::Kind::LeaseRevoke(mut r)) => {
                r.header = Some(self.node.header(resp.revision));
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected response kind")),
        }
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<tonic::codegen::BoxStream<LeaseKeepAliveResponse>>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                let reply = node.lease_renew(req.id).await;
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(self.node.lease_time_to_live(request.into_inner()).await?))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.read_barrier().await?;
        let mvcc = self.node.mvcc.clone();
        let leases = tokio::task::spawn_blocking(move || mvcc.leases())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
            leases: leases.into_iter().map(|(id, _)| LeaseStatus { id }).collect(),
        }))
    }
}
