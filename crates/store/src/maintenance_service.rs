//! `etcdserverpb.Maintenance`: Status, Alarm, Defragment, Hash, HashKV,
//! Snapshot and MoveLeader.

use std::sync::Arc;

use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use etcd_proto::fivefoldpb::{command, command_response, Command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::node::{kv_status, on_pool, StoreNode};

/// The etcd version fivefold reports. Clients (Kubernetes among them) enable
/// features by it; fivefold implements the 3.5 API.
pub const ETCD_COMPATIBLE_VERSION: &str = "3.5.17";
/// Bytes per message of a snapshot stream.
pub const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;

pub struct MaintenanceService {
    pub node: Arc<StoreNode>,
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("etcdserver: {e}"))
}

/// Writes a snapshot sealed as etcd's are to a new unnamed file in `dir`;
/// returns it positioned at its start, with its length.
fn sealed_snapshot(mvcc: &mvcc::MvccStore, dir: &std::path::Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = crate::snapshot_data::spill(dir, |out| {
        let mut sealer = mvcc::snapshot::Sealer::new(out);
        mvcc.snapshot_view().and_then(|view| view.write(&mut sealer)).map_err(std::io::Error::other)?;
        sealer.finish().map(drop)
    })?;
    let total = file.metadata()?.len();
    Ok((file, total))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        if req.action == AlarmAction::Get as i32 {
            self.node.read_barrier().await?;
            let mvcc = self.node.mvcc.clone();
            let alarms = on_pool(move || mvcc.alarms()).await?.map_err(internal)?;
            return Ok(Response::new(AlarmResponse {
                header: Some(self.node.header(self.node.mvcc.revision())),
                alarms,
            }));
        }
        let resp = self.node.propose(Command { kind: Some(command::Kind::Alarm(req)) }).await?;
        match resp.kind {
            Some(command_response::Kind::Alarm(mut r)) => {
                r.header = Some(self.node.header(resp.revision));
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected response kind")),
        }
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let metrics = node.raft.metrics().borrow().clone();
        let mvcc = node.mvcc.clone();
        let (in_use, alarms) = on_pool(move || (mvcc.db_size_in_use(), mvcc.alarms())).await?;
        let in_use = in_use.map_err(internal)?;
        let alarms = alarms.map_err(internal)?;
        let is_learner = !metrics.membership_config.membership().voter_ids().any(|id| id == node.member_id);
        let mut errors: Vec<String> = alarms
            .iter()
            .map(|a| {
                let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
                format!("memberID:{} alarm:{name} ", a.member_id)
            })
            .collect();
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
            db_size_quota: node.config.quota_backend_bytes as i64,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let mvcc = self.node.mvcc.clone();
        let before = mvcc.db_size();
        let started = std::time::Instant::now();
        on_pool(move || mvcc.defragment()).await?.map_err(internal)?;
        tracing::info!(before, after = self.node.mvcc.db_size(), took = ?started.elapsed(), "defragmented");
        Ok(Response::new(DefragmentResponse { header: Some(self.node.header(self.node.mvcc.revision())) }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let mvcc = self.node.mvcc.clone();
        let hash = on_pool(move || mvcc.hash_kv(0)).await?.map_err(kv_status)?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(hash.current_revision)),
            hash: hash.hash,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.get_ref().revision;
        let mvcc = self.node.mvcc.clone();
        let hash = on_pool(move || mvcc.hash_kv(revision)).await?.map_err(kv_status)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(hash.current_revision)),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
            hash_revision: hash.hash_revision,
        }))
    }

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<SnapshotResponse>>, Status> {
        let mvcc = self.node.mvcc.clone();
        let dir = self.node.config.data_dir.clone();
        // Sealed into an unnamed file, then streamed from it: the state may be
        // larger than memory.
        let (file, total) = on_pool(move || sealed_snapshot(&mvcc, &dir)).await?.map_err(internal)?;
        let header = self.node.header(self.node.mvcc.revision());
        let (tx, rx) = mpsc::channel(4);
        // An async task: a client that stops reading holds this task, not a
        // thread of the blocking pool (each chunk's read borrows one briefly).
        let mut file = tokio::fs::File::from_std(file);
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < total {
                let mut blob = vec![0; SNAPSHOT_CHUNK_BYTES.min((total - sent) as usize)];
                let response = tokio::io::AsyncReadExt::read_exact(&mut file, &mut blob).await.map(|_| {
                    sent += blob.len() as u64;
                    SnapshotResponse {
                        header: Some(header),
                        remaining_bytes: total - sent,
                        blob,
                        version: ETCD_COMPATIBLE_VERSION.to_string(),
                    }
                });
                let failed = response.is_err();
                if tx.send(response.map_err(internal)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.node.move_leader(request.get_ref().target_id).await?;
        Ok(Response::new(MoveLeaderResponse { header: Some(self.node.header(self.node.mvcc.revision())) }))
    }
}
