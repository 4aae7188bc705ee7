//! Stateless request checks, done before a write is proposed (and again, as a
//! defence, before it is applied): the checks etcd's API layer makes.

use etcd_proto::etcdserverpb::{
    compare, range_request, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

use crate::error::MvccError;
use crate::limits::TXN_NESTING_MAX;
use crate::span::Span;

pub fn check_range(req: &RangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if range_request::SortOrder::try_from(req.sort_order).is_err() {
        return Err(MvccError::InvalidRequest(format!("unknown sort order {}", req.sort_order)));
    }
    if range_request::SortTarget::try_from(req.sort_target).is_err() {
        return Err(MvccError::InvalidRequest(format!("unknown sort target {}", req.sort_target)));
    }
    Ok(())
}

pub fn check_put(req: &PutRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_range(req: &DeleteRangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

fn check_compare(c: &Compare) -> Result<(), MvccError> {
    if c.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if compare::CompareResult::try_from(c.result).is_err() {
        return Err(MvccError::InvalidRequest(format!("unknown compare result {}", c.result)));
    }
    if compare::CompareTarget::try_from(c.target).is_err() {
        return Err(MvccError::InvalidRequest(format!("unknown compare target {}", c.target)));
    }
    Ok(())
}

/// Checks a Txn: op counts against `ops_max` (etcd's `--max-txn-ops`, which a
/// nested Txn shares with its parent), every key, and that no key is written twice.
pub fn check_txn(req: &TxnRequest, ops_max: usize) -> Result<(), MvccError> {
    check_txn_ops(req, ops_max, 0)?;
    check_writes_disjoint(&req.success, 0)?;
    check_writes_disjoint(&req.failure, 0)?;
    Ok(())
}

fn check_txn_ops(req: &TxnRequest, ops_max: usize, depth: usize) -> Result<(), MvccError> {
    if depth > TXN_NESTING_MAX {
        return Err(MvccError::InvalidRequest(format!("txn nesting deeper than {TXN_NESTING_MAX}")));
    }
    let ops = req.compare.len().max(req.success.len()).max(req.failure.len());
    if ops > ops_max {
        return Err(MvccError::TooManyOps);
    }
    for c in &req.compare {
        check_compare(c)?;
    }
    for op in req.success.iter().chain(req.failure.iter()) {
        check_op(op, ops_max - ops, depth)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, ops_max: usize, depth: usize) -> Result<(), MvccError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete_range(r),
        Some(request_op::Request::RequestTxn(r)) => check_txn_ops(r, ops_max, depth + 1),
        // etcd answers an empty op this way.
        None => Err(MvccError::KeyNotFound),
    }
}

/// The keys a branch writes: put keys and delete spans, nested Txns included.
#[derive(Default)]
struct Writes {
    puts: Vec<Vec<u8>>,
    deletes: Vec<Span>,
}

impl Writes {
    fn deletes_cover(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|d| d.contains(key))
    }
}

/// No key may be put twice, or put and deleted, by one path through a Txn. The two
/// branches of a nested Txn exclude each other, so they may write the same key.
fn check_writes_disjoint(ops: &[RequestOp], depth: usize) -> Result<Writes, MvccError> {
    if depth > TXN_NESTING_MAX {
        return Err(MvccError::InvalidRequest(format!("txn nesting deeper than {TXN_NESTING_MAX}")));
    }
    let mut writes = Writes::default();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            writes.deletes.push(Span::new(&d.key, &d.range_end));
        }
    }
    for op in ops {
        let Some(request_op::Request::RequestTxn(txn)) = &op.request else { continue };
        let then = check_writes_disjoint(&txn.success, depth + 1)?;
        let otherwise = check_writes_disjoint(&txn.failure, depth + 1)?;
        let mut added: Vec<Vec<u8>> = Vec::new();
        for key in &then.puts {
            if writes.puts.contains(key) || writes.deletes_cover(key) {
                return Err(MvccError::DuplicateKey);
            }
            added.push(key.clone());
        }
        for key in &otherwise.puts {
            let from_then = then.puts.contains(key);
            if (writes.puts.contains(key) && !from_then) || writes.deletes_cover(key) {
                return Err(MvccError::DuplicateKey);
            }
            if !from_then {
                added.push(key.clone());
            }
        }
        writes.puts.extend(added);
        writes.deletes.extend(then.deletes);
        writes.deletes.extend(otherwise.deletes);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(put)) = &op.request else { continue };
        if writes.puts.contains(&put.key) || writes.deletes_cover(&put.key) {
            return Err(MvccError::DuplicateKey);
        }
        writes.puts.push(put.key.clone());
    }
    Ok(writes)
}

/// Whether a Txn only reads, in both branches at every depth: such a Txn is
/// served without going through the log, like a Range.
pub fn txn_is_read_only(req: &TxnRequest) -> bool {
    req.success.iter().chain(req.failure.iter()).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(_)) => true,
        Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
        _ => false,
    })
}

/// Whether a Txn holds a Put anywhere, in either branch at any depth.
pub fn txn_has_put(req: &TxnRequest) -> bool {
    req.success.iter().chain(req.failure.iter()).any(|op| match &op.request {
        Some(request_op::Request::RequestPut(_)) => true,
        Some(request_op::Request::RequestTxn(t)) => txn_has_put(t),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { compare: vec![], success, failure }
    }

    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp { request: Some(request_op::Request::RequestTxn(t)) }
    }

    #[test]
    fn duplicate_writes_are_refused() {
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128), Err(MvccError::DuplicateKey));
        assert_eq!(
            check_txn(&txn(vec![put("a1"), del("a", "b")], vec![]), 128),
            Err(MvccError::DuplicateKey)
        );
        assert!(check_txn(&txn(vec![put("b"), del("a", "b")], vec![]), 128).is_ok());
        // The two branches are exclusive.
        assert!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128).is_ok());
        // Nested branches are exclusive too, but not with the parent.
        let inner = txn(vec![put("x")], vec![put("x")]);
        assert!(check_txn(&txn(vec![nested(inner.clone())], vec![]), 128).is_ok());
        assert_eq!(check_txn(&txn(vec![nested(inner), put("x")], vec![]), 128), Err(MvccError::DuplicateKey));
    }

    #[test]
    fn op_limits() {
        let many = |n: usize| txn((0..n).map(|i| put(&format!("k{i}"))).collect(), vec![]);
        assert!(check_txn(&many(128), 128).is_ok());
        assert_eq!(check_txn(&many(129), 128), Err(MvccError::TooManyOps));
        let empty_op = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&empty_op, 128), Err(MvccError::KeyNotFound));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut t = txn(vec![], vec![]);
        for _ in 0..(TXN_NESTING_MAX + 10) {
            t = txn(vec![nested(t)], vec![]);
        }
        assert!(matches!(check_txn(&t, usize::MAX / 2), Err(MvccError::InvalidRequest(_))));
    }
}
