//! Reading the key space at a revision: ranges and Txn compares. Generic over
//! redb's readable tables, so the same code serves a read transaction and the
//! write transaction of an apply (which must see its own earlier writes).

use std::ops::Bound;

use etcd_proto::etcdserverpb::{
    compare, range_request, Compare, RangeRequest, RangeResponse, ResponseHeader,
};
use etcd_proto::mvccpb::KeyValue;
use redb::ReadableTable;

use crate::encoding::{row_key, split_row_key, Version};
use crate::error::{MvccError, StorageError};
use crate::span::Span;
use crate::KvError;

/// The key-space table as the read paths see it.
pub trait Rows: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> Rows for T {}

/// The newest version of `key` at or below revision `at`, tombstones included.
pub fn newest_at(rows: &impl Rows, key: &[u8], at: u64) -> Result<Option<(u64, Version)>, StorageError> {
    let low = row_key(key, 0);
    let high = row_key(key, at);
    let mut iter = rows.range::<&[u8]>(low.as_slice()..=high.as_slice())?;
    match iter.next_back() {
        None => Ok(None),
        Some(row) => {
            let (row_key, value) = row?;
            let (_, revision) = split_row_key(row_key.value())?;
            Ok(Some((revision, Version::decode(value.value())?)))
        }
    }
}

/// The live (not deleted) version of `key` at revision `at`, as a KeyValue.
pub fn live_at(rows: &impl Rows, key: &[u8], at: u64) -> Result<Option<KeyValue>, StorageError> {
    Ok(match newest_at(rows, key, at)? {
        Some((revision, version)) if !version.tombstone => Some(key_value(key.to_vec(), revision, version)),
        _ => None,
    })
}

pub fn key_value(key: Vec<u8>, mod_revision: u64, v: Version) -> KeyValue {
    KeyValue {
        key,
        create_revision: v.create_revision,
        mod_revision: mod_revision as i64,
        version: v.version,
        value: v.value,
        lease: v.lease,
    }
}

/// Calls `visit` with every live key of `span` at revision `at`, in key order,
/// until it returns false. Two seeks per key: the next key, then its newest
/// version at `at`.
pub fn for_each_live(
    rows: &impl Rows,
    span: &Span,
    at: u64,
    mut visit: impl FnMut(KeyValue) -> bool,
) -> Result<(), StorageError> {
    if span.is_empty() {
        return Ok(());
    }
    let upper = span.row_upper_bound();
    let mut lower = Bound::Included(row_key(span.start(), 0));
    loop {
        let next_key = {
            let bounds = (as_ref_bound(&lower), as_ref_bound(&upper));
            let mut iter = rows.range::<&[u8]>(bounds)?;
            match iter.next() {
                None => return Ok(()),
                Some(row) => split_row_key(row?.0.value())?.0,
            }
        };
        if let Some(kv) = live_at(rows, &next_key, at)? {
            if !visit(kv) {
                return Ok(());
            }
        }
        lower = Bound::Excluded(row_key(&next_key, u64::MAX));
    }
}

fn as_ref_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The revisions a read is made against.
#[derive(Debug, Clone, Copy)]
pub struct ReadView {
    /// The store's revision as this reader sees it (including the pending write
    /// revision of an apply that has already changed something).
    pub current: i64,
    /// The compacted revision: reads below it fail.
    pub compacted: i64,
}

/// Serves a Range with etcd's semantics: count over the whole span, filters, then
/// sort, then limit with `more`.
pub fn range(rows: &impl Rows, req: &RangeRequest, view: ReadView) -> Result<RangeResponse, KvError> {
    crate::validate::check_range(req)?;
    if req.revision > view.current {
        return Err(MvccError::FutureRevision.into());
    }
    let at = if req.revision <= 0 { view.current } else { req.revision };
    if at < view.compacted {
        return Err(MvccError::Compacted.into());
    }
    let span = Span::new(&req.key, &req.range_end);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let sort_order = effective_sort_order(req);
    // Without filters or sorting, only limit+1 key-values need to be kept.
    let keep_max = match (req.limit, filtered || sort_order.is_some()) {
        (limit, false) if limit > 0 => limit as usize + 1,
        _ => usize::MAX,
    };
    let mut count: i64 = 0;
    let mut kvs: Vec<KeyValue> = Vec::new();
    for_each_live(rows, &span, at as u64, |kv| {
        count += 1;
        if !req.count_only && kvs.len() < keep_max && passes_filters(req, &kv) {
            kvs.push(kv);
        }
        true
    })?;
    if let Some(order) = sort_order {
        sort_kvs(&mut kvs, req.sort_target, order);
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader { revision: view.current, ..Default::default() }),
        kvs,
        more,
        count,
    })
}

fn passes_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
        && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
        && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
}

/// etcd sorts ascending by default when the target is not the key, and never
/// re-sorts by key ascending (the scan order already is).
fn effective_sort_order(req: &RangeRequest) -> Option<range_request::SortOrder> {
    use range_request::{SortOrder, SortTarget};
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    match (target, order) {
        (SortTarget::Key, SortOrder::Ascend) | (SortTarget::Key, SortOrder::None) => None,
        (_, SortOrder::None) => Some(SortOrder::Ascend),
        (_, order) => Some(order),
    }
}

fn sort_kvs(kvs: &mut [KeyValue], target: i32, order: range_request::SortOrder) {
    use range_request::SortTarget;
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    kvs.sort_by(|a, b| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    });
    if order == range_request::SortOrder::Descend {
        kvs.reverse();
    }
}

/// Evaluates one Txn compare against the newest state, as etcd does: every key
/// in the compare's span must satisfy it; an absent key compares as zero, except
/// that a VALUE compare on absent keys is always false.
pub fn compare_holds(rows: &impl Rows, c: &Compare) -> Result<bool, StorageError> {
    let span = Span::new(&c.key, &c.range_end);
    let mut found = false;
    let mut holds = true;
    for_each_live(rows, &span, u64::MAX, |kv| {
        found = true;
        holds = compare_kv(c, &kv);
        holds
    })?;
    if !found {
        let target = compare::CompareTarget::try_from(c.target);
        return Ok(target != Ok(compare::CompareTarget::Value) && compare_kv(c, &KeyValue::default()));
    }
    Ok(holds)
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let int = |got: i64, want: Option<i64>| got.cmp(&want.unwrap_or(0));
    let ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Create) => int(
            kv.create_revision,
            match c.target_union {
                Some(TargetUnion::CreateRevision(r)) => Some(r),
                _ => None,
            },
        ),
        Ok(CompareTarget::Mod) => int(
            kv.mod_revision,
            match c.target_union {
                Some(TargetUnion::ModRevision(r)) => Some(r),
                _ => None,
            },
        ),
        Ok(CompareTarget::Version) => int(
            kv.version,
            match c.target_union {
                Some(TargetUnion::Version(r)) => Some(r),
                _ => None,
            },
        ),
        Ok(CompareTarget::Lease) => int(
            kv.lease,
            match c.target_union {
                Some(TargetUnion::Lease(r)) => Some(r),
                _ => None,
            },
        ),
        Err(_) => return false,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => false,
    }
}
