//! Reading the key space at a revision: ranges and Txn compares, through the
//! key index and the revision-keyed rows. The same code serves a read
//! transaction and the write transaction of an apply (which must see its own
//! earlier writes).

use etcd_proto::etcdserverpb::{
    compare, range_request, Compare, RangeRequest, RangeResponse, ResponseHeader,
};
use etcd_proto::mvccpb::KeyValue;
use redb::ReadableTable;

use crate::encoding::{decode_row, Version};
use crate::error::{MvccError, StorageError};
use crate::index::{KeyIndex, Ver};
use crate::span::Span;
use crate::KvError;

/// The revision-keyed rows as the read paths see them.
pub trait Rows: ReadableTable<u128, &'static [u8]> {}
impl<T: ReadableTable<u128, &'static [u8]>> Rows for T {}

/// What a read runs against: the rows of one transaction, the key index, and
/// the newest revision those rows hold. The index may already name newer
/// versions (an apply in progress); a read never looks above `ceiling`.
pub struct Source<'a, R: Rows> {
    pub rows: &'a R,
    pub index: &'a KeyIndex,
    pub ceiling: u64,
}

/// The key-value the index names: its row, read from `rows`, checked to
/// hold `key`.
pub fn fetch(rows: &impl Rows, key: &[u8], ver: Ver) -> Result<KeyValue, StorageError> {
    let Some(row) = rows.get(ver.row())? else {
        return Err(StorageError(format!(
            "the key index names revision {}.{} but it has no row: the index and the rows disagree",
            ver.rev, ver.sub
        )));
    };
    let (stored_key, version) = decode_row(row.value())?;
    if stored_key != key {
        return Err(StorageError(format!(
            "row {}.{} holds another key than the index says",
            ver.rev, ver.sub
        )));
    }
    Ok(key_value(stored_key, ver.rev, version))
}

impl<R: Rows> Source<'_, R> {
    /// The live (not deleted) version of `key` at revision `at`, as a KeyValue.
    pub fn live_at(&self, key: &[u8], at: u64) -> Result<Option<KeyValue>, StorageError> {
        match self.index.live_at(key, at.min(self.ceiling)) {
            None => Ok(None),
            Some(ver) => fetch(self.rows, key, ver).map(Some),
        }
    }

    /// Calls `visit` with every live key of `span` at revision `at`, in key
    /// order, until it returns false.
    pub fn for_each_live(
        &self,
        span: &Span,
        at: u64,
        mut visit: impl FnMut(KeyValue) -> bool,
    ) -> Result<(), StorageError> {
        let mut failed = None;
        self.index.for_each_live(span, at.min(self.ceiling), |key, ver| match fetch(self.rows, key, ver) {
            Ok(kv) => visit(kv),
            Err(e) => {
                failed = Some(e);
                false
            }
        });
        failed.map_or(Ok(()), Err)
    }
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

/// The revisions a read is made against.
#[derive(Debug, Clone, Copy)]
pub struct ReadView {
    /// The store's revision as this reader sees it (including the pending write
    /// revision of an apply that has already changed something).
    pub current: i64,
    /// The compacted revision: reads below it fail.
    pub compacted: i64,
}

/// What the key index says a Range returns: how many keys match, and the
/// versions whose rows make the response.
pub struct RangePlan {
    count: i64,
    hits: Vec<(Vec<u8>, Ver)>,
}

/// The index half of a Range: checks the request and revision, counts the
/// span at the revision, and picks the versions to read (all of them when
/// filtering or sorting, else `limit + 1`, none for `count_only`).
pub fn plan_range(
    index: &KeyIndex,
    ceiling: u64,
    req: &RangeRequest,
    view: ReadView,
) -> Result<RangePlan, KvError> {
    crate::validate::check_range(req)?;
    if req.revision > view.current {
        return Err(MvccError::FutureRevision.into());
    }
    let at = if req.revision <= 0 { view.current } else { req.revision };
    if at < view.compacted.max(index.compacted()) {
        return Err(MvccError::Compacted.into());
    }
    let span = Span::new(&req.key, &req.range_end);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Without filters or sorting, only limit+1 key-values need to be read.
    let keep_max = match (req.limit, filtered || effective_sort_order(req).is_some()) {
        _ if req.count_only => 0,
        (limit, false) if limit > 0 => limit as usize + 1,
        _ => usize::MAX,
    };
    let mut plan = RangePlan { count: 0, hits: Vec::new() };
    index.for_each_live(&span, (at as u64).min(ceiling), |key, ver| {
        plan.count += 1;
        if plan.hits.len() < keep_max {
            plan.hits.push((key.to_vec(), ver));
        }
        true
    });
    Ok(plan)
}

/// The rows half of a Range: reads the planned versions from `rows`, then
/// filters, sorts and limits with etcd's semantics.
pub fn finish_range(
    rows: &impl Rows,
    req: &RangeRequest,
    view: ReadView,
    plan: RangePlan,
) -> Result<RangeResponse, KvError> {
    let mut kvs = Vec::with_capacity(plan.hits.len());
    for (key, ver) in plan.hits {
        let kv = fetch(rows, &key, ver)?;
        if passes_filters(req, &kv) {
            kvs.push(kv);
        }
    }
    if let Some(order) = effective_sort_order(req) {
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
        count: plan.count,
    })
}

/// Serves a Range with etcd's semantics: count over the whole span, filters, then
/// sort, then limit with `more`.
pub fn range(
    src: &Source<'_, impl Rows>,
    req: &RangeRequest,
    view: ReadView,
) -> Result<RangeResponse, KvError> {
    let plan = plan_range(src.index, src.ceiling, req, view)?;
    finish_range(src.rows, req, view, plan)
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
pub fn compare_holds(src: &Source<'_, impl Rows>, c: &Compare) -> Result<bool, StorageError> {
    let span = Span::new(&c.key, &c.range_end);
    let mut found = false;
    let mut holds = true;
    src.for_each_live(&span, u64::MAX, |kv| {
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
