//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use etcd_proto::etcdserverpb::kv_server::Kv;
use etcd_proto::etcdserverpb::{
    response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use etcd_proto::fivefoldpb::{command, command_response, Command, CommandResponse};
use mvcc::{validate, KvError, MvccStore};
use tonic::{Request, Response, Status};

use crate::node::{kv_status, on_pool, status_of, StoreNode};
use crate::placement;

pub struct KvService {
    pub node: Arc<StoreNode>,
}

/// Sets the member fields of every header in a Txn response, keeping each
/// header's revision.
fn stamp_txn(resp: &mut TxnResponse, template: &ResponseHeader) {
    let stamp = |h: &mut Option<ResponseHeader>| {
        let revision = h.as_ref().map_or(template.revision, |h| h.revision);
        *h = Some(ResponseHeader { revision, ..*template });
    };
    stamp(&mut resp.header);
    for op in &mut resp.responses {
        match &mut op.response {
            Some(response_op::Response::ResponseRange(r)) => stamp(&mut r.header),
            Some(response_op::Response::ResponsePut(r)) => stamp(&mut r.header),
            Some(response_op::Response::ResponseDeleteRange(r)) => stamp(&mut r.header),
            Some(response_op::Response::ResponseTxn(r)) => stamp_txn(r, template),
            None => {}
        }
    }
}

/// True when a Range reads one key: a seek or two, cheaper to serve on the
/// runtime worker than to hand to the blocking pool (two thread switches).
/// Anything that may scan goes to the pool, so a worker never stalls on it.
fn is_point_read(req: &RangeRequest) -> bool {
    req.range_end.is_empty()
}

/// True when every Range a read-only Txn may run (both branches, nested too)
/// is a point read; compares read one key each.
fn txn_reads_points(req: &TxnRequest) -> bool {
    use etcd_proto::etcdserverpb::request_op::Request as Op;
    req.compare.iter().all(|c| c.range_end.is_empty())
        && req.success.iter().chain(&req.failure).all(|op| match &op.request {
            Some(Op::RequestRange(r)) => is_point_read(r),
            Some(Op::RequestTxn(t)) => txn_reads_points(t),
            _ => true,
        })
}

fn unexpected(resp: &CommandResponse) -> Status {
    tracing::error!(?resp, "applied command returned the wrong response kind");
    Status::internal("etcdserver: unexpected response kind")
}

impl KvService {
    async fn write(&self, kind: command::Kind) -> Result<CommandResponse, Status> {
        let command = Command { kind: Some(kind) };
        self.node.propose(command).await
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(self.node.header(revision))
    }

    /// Runs a read on this worker when it is a point read and the database
    /// is free (`here`, which does not wait), else `blocking` on the pool.
    async fn read<Req: Send + 'static, T: Send + 'static>(
        &self,
        req: Req,
        point: bool,
        here: fn(&MvccStore, &Req) -> Option<Result<T, KvError>>,
        blocking: fn(&MvccStore, &Req) -> Result<T, KvError>,
    ) -> Result<T, Status> {
        if let Some(done) = point.then(|| here(&self.node.mvcc, &req)).flatten() {
            return done.map_err(kv_status);
        }
        let mvcc = self.node.mvcc.clone();
        on_pool(move || blocking(&mvcc, &req)).await?.map_err(kv_status)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_range(&req).map_err(|e| status_of(&e))?;
        self.node.serves(placement::group_of_range(&req.key, &req.range_end))?;
        if !req.serializable {
            self.node.read_barrier().await?;
        }
        let point = is_point_read(&req);
        let mut resp = self.read(req, point, MvccStore::try_range, MvccStore::range).await?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        resp.header = self.header(revision);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate::check_put(&req).map_err(|e| status_of(&e))?;
        self.node.check_quota(req.key.len() + req.value.len()).await?;
        self.node.serves(placement::group_of_key(&req.key))?;
        let resp = self.write(command::Kind::Put(req)).await?;
        match resp.kind {
            Some(command_response::Kind::Put(mut r)) => {
                r.header = self.header(resp.revision);
                Ok(Response::new(r))
            }
            _ => Err(unexpected(&resp)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        validate::check_delete_range(&req).map_err(|e| status_of(&e))?;
        self.node.serves(placement::group_of_range(&req.key, &req.range_end))?;
        let resp = self.write(command::Kind::DeleteRange(req)).await?;
        match resp.kind {
            Some(command_response::Kind::DeleteRange(mut r)) => {
                r.header = self.header(resp.revision);
                Ok(Response::new(r))
            }
            _ => Err(unexpected(&resp)),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate::check_txn(&req, self.node.config.max_txn_ops).map_err(|e| status_of(&e))?;
        if validate::txn_is_read_only(&req) {
            let template = self.node.header(0);
            self.node.read_barrier().await?;
            let point = txn_reads_points(&req);
            let mut resp =
                self.read(req, point, MvccStore::try_read_only_txn, MvccStore::read_only_txn).await?;
            stamp_txn(&mut resp, &template);
            return Ok(Response::new(resp));
        }
        if validate::txn_has_put(&req) {
            self.node.check_quota(prost::Message::encoded_len(&req)).await?;
        }
        let resp = self.write(command::Kind::Txn(req)).await?;
        match resp.kind {
            Some(command_response::Kind::Txn(mut r)) => {
                let template = self.node.header(resp.revision);
                r.header = Some(template);
                stamp_txn(&mut r, &template);
                Ok(Response::new(r))
            }
            _ => Err(unexpected(&resp)),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        let resp = self.write(command::Kind::Compaction(req)).await?;
        match resp.kind {
            Some(command_response::Kind::Compaction(mut r)) => {
                r.header = self.header(resp.revision);
                Ok(Response::new(r))
            }
            _ => Err(unexpected(&resp)),
        }
    }
}

#[cfg(test)]
mod tests {
    use etcd_proto::etcdserverpb::{request_op, Compare, RequestOp};

    use super::*;

    fn range(key: &str, end: &str) -> RangeRequest {
        RangeRequest { key: key.into(), range_end: end.into(), ..Default::default() }
    }

    fn op(r: RangeRequest) -> RequestOp {
        RequestOp { request: Some(request_op::Request::RequestRange(r)) }
    }

    #[test]
    fn only_reads_of_single_keys_stay_on_the_worker() {
        assert!(is_point_read(&range("a", "")));
        assert!(!is_point_read(&range("a", "b")));
        assert!(!is_point_read(&range("\0", "\0")), "the whole key space");
        let point = TxnRequest { success: vec![op(range("a", ""))], ..Default::default() };
        assert!(txn_reads_points(&point));
        let scans_on_failure = TxnRequest { failure: vec![op(range("a", "z"))], ..point.clone() };
        assert!(!txn_reads_points(&scans_on_failure));
        let nested = TxnRequest {
            success: vec![RequestOp { request: Some(request_op::Request::RequestTxn(scans_on_failure)) }],
            ..Default::default()
        };
        assert!(!txn_reads_points(&nested));
        let compare_range = TxnRequest {
            compare: vec![Compare { key: b"a".to_vec(), range_end: b"z".to_vec(), ..Default::default() }],
            ..point
        };
        assert!(!txn_reads_points(&compare_range));
    }
}
