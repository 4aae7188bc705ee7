//! `etcdserverpb.Cluster`: MemberList. Membership changes come with the
//! membership work and answer Unimplemented until then.

use std::sync::Arc;

use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::{Member as PbMember, MemberListRequest, MemberListResponse};
use tonic::{Request, Response, Status};

use crate::node::StoreNode;

pub struct ClusterService {
    pub node: Arc<StoreNode>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.node.read_barrier().await?;
        }
        let metrics = self.node.raft.metrics().borrow().clone();
        let mvcc = self.node.mvcc.clone();
        let attributes = tokio::task::spawn_blocking(move || mvcc.member_attributes())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, member)| {
                let published = attributes.iter().find(|a| a.member_id == *id);
                PbMember {
                    id: *id,
                    // etcd lists a member that has not started yet with an empty name.
                    name: published.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: member.peer_urls.clone(),
                    client_ur_ls: published.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
            members,
        }))
    }
}
