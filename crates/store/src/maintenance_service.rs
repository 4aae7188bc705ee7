//! `etcdserverpb.Maintenance`: Status. The other calls come with the
//! maintenance work (alarms, defragment, snapshot, hash) and answer
//! Unimplemented until then.

use std::sync::Arc;

use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use etcd_proto::etcdserverpb::{StatusRequest, StatusResponse};
use tonic::{Request, Response, Status};

use crate::node::StoreNode;

/// The etcd version fivefold reports. Clients (Kubernetes among them) enable
/// features by it; fivefold implements the 3.5 API.
pub const ETCD_COMPATIBLE_VERSION: &str = "3.5.17";

pub struct MaintenanceService {
    pub node: Arc<StoreNode>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let metrics = node.raft.metrics().borrow().clone();
        let mvcc = node.mvcc.clone();
        let in_use = tokio::task::spawn_blocking(move || mvcc.db_size_in_use())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        let is_learner = !metrics.membership_config.membership().voter_ids().any(|id| id == node.member_id);
        let mut errors = Vec::new();
        if metrics.current_leader.is_none() {
            errors.push(crate::node::NO_LEADER.to_string());
        }
        Ok(Response::new(StatusResponse {
            header: Some(node.header(node.mvcc.revision())),
            version: ETCD_COMPATIBLE_VERSION.to_string(),
            db_size: node.mvcc.db_size() as i64,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            errors,
            db_size_in_use: in_use as i64,
            is_learner,
            ..Default::default()
        }))
    }
}
