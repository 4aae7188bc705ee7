//! The key index: for every key, the revisions at which it changed, in
//! memory. Rows on disk are keyed by revision (see `encoding`), so a write
//! appends at the end of the table; this index is how a key, a range of keys
//! or a key at a past revision finds its rows. It is rebuilt from the rows
//! when the store opens.
//!
//! Readers see the index through a revision ceiling (the revision their read
//! transaction holds), so versions an apply has added but not yet committed
//! are invisible to them. An apply batch that does not commit (an engine
//! error, or dropped) removes what it added (`truncate_after`); compaction
//! prunes at commit (`compact`).

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use crate::span::Span;

/// Key bytes kept inline in the map's nodes up to this length: a lookup
/// compares keys without following a pointer per comparison (etcd's
/// benchmark keys are 8 bytes). Longer keys live on the heap.
const KEY_INLINE_BYTES: usize = 16;
type IndexKey = SmallVec<[u8; KEY_INLINE_BYTES]>;
/// A key's versions, the first inline: a key written once (after
/// compaction, most keys) needs no allocation of its own.
type Versions = SmallVec<[Ver; 1]>;

/// Where one version of a key lives: its row's revision and sub-revision (the
/// change's position within its revision), and whether it is a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ver {
    pub rev: u64,
    pub sub: u32,
    pub tombstone: bool,
}

impl Ver {
    /// The row key of this version in the revision-keyed table.
    pub fn row(&self) -> u128 {
        crate::encoding::rev_row(self.rev, self.sub)
    }
}

/// Every key's versions, oldest first.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<IndexKey, Versions>,
    /// The revision the index was last compacted at: versions that only a
    /// read below it could see are gone.
    compacted: i64,
}

/// How many of `versions` (oldest first) compaction at `at` removes: every
/// version below the newest at `at`, and that one too if it is a deletion.
fn compacted_prefix(versions: &[Ver], at: u64) -> usize {
    let n = versions.partition_point(|v| v.rev <= at);
    match n.checked_sub(1) {
        Some(newest) if !versions[newest].tombstone => newest,
        _ => n,
    }
}

/// The newest version at or below `at` in `versions` (oldest first).
fn newest_in(versions: &[Ver], at: u64) -> Option<Ver> {
    let n = versions.partition_point(|v| v.rev <= at);
    n.checked_sub(1).map(|i| versions[i])
}

/// `newest_in`, unless that is a deletion.
fn live_in(versions: &[Ver], at: u64) -> Option<Ver> {
    newest_in(versions, at).filter(|v| !v.tombstone)
}

impl KeyIndex {
    pub fn new(compacted: i64) -> KeyIndex {
        KeyIndex { keys: BTreeMap::new(), compacted }
    }

    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// Number of keys with at least one version (live or not).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The newest version of `key` at or below `at`, deletions included.
    pub fn newest_at(&self, key: &[u8], at: u64) -> Option<Ver> {
        newest_in(self.keys.get(key)?, at)
    }

    /// The version of `key` visible at `at`, if the key exists then.
    pub fn live_at(&self, key: &[u8], at: u64) -> Option<Ver> {
        live_in(self.keys.get(key)?, at)
    }

    /// Calls `visit` with every key of `span` that exists at `at` and its
    /// version, in key order, until it returns false.
    pub fn for_each_live(&self, span: &Span, at: u64, mut visit: impl FnMut(&[u8], Ver) -> bool) {
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = match span {
            Span::Key(k) => {
                if let Some(v) = self.live_at(k, at) {
                    visit(k, v);
                }
                return;
            }
            _ if span.is_empty() => return,
            Span::From(start) => (Bound::Included(start), Bound::Unbounded),
            Span::Between(start, end) => (Bound::Included(start), Bound::Excluded(end)),
        };
        for (key, versions) in self.keys.range::<[u8], _>(bounds) {
            if let Some(v) = live_in(versions, at) {
                if !visit(key, v) {
                    return;
                }
            }
        }
    }

    /// Records a new version of `key` and returns the one it follows (the
    /// key's newest until now), in one lookup. Versions of a key arrive in
    /// revision order.
    pub fn push(&mut self, key: &[u8], ver: Ver) -> Option<Ver> {
        match self.keys.get_mut(key) {
            Some(versions) => {
                let last = *versions.last().expect("an indexed key has a version");
                assert!(
                    (last.rev, last.sub) < (ver.rev, ver.sub),
                    "a key's versions are indexed in revision order"
                );
                versions.push(ver);
                Some(last)
            }
            None => {
                self.keys.insert(IndexKey::from_slice(key), smallvec::smallvec![ver]);
                None
            }
        }
    }

    /// Forgets the versions of `keys` above `rev`: what an apply that did not
    /// commit had added.
    pub fn truncate_after(&mut self, keys: &[Vec<u8>], rev: u64) {
        for key in keys {
            if let Some(versions) = self.keys.get_mut(key.as_slice()) {
                versions.retain(|v| v.rev <= rev);
                if versions.is_empty() {
                    self.keys.remove(key.as_slice());
                }
            }
        }
    }

    /// The versions compaction at `at` removes: for each key, every version
    /// below its newest at `at`, and that one too if it is a deletion.
    pub fn doomed_by_compaction(&self, at: u64) -> Vec<Ver> {
        let mut doomed = Vec::new();
        for versions in self.keys.values() {
            doomed.extend_from_slice(&versions[..compacted_prefix(versions, at)]);
        }
        doomed
    }

    /// Applies compaction at `at` (the rule of `doomed_by_compaction`); keys
    /// left without versions are dropped.
    pub fn compact(&mut self, at: u64) {
        self.keys.retain(|_, versions| {
            versions.drain(..compacted_prefix(versions, at));
            if versions.len() <= 1 {
                // Back inline: a key left with one version needs no allocation.
                versions.shrink_to_fit();
            }
            !versions.is_empty()
        });
        assert!(at as i64 >= self.compacted, "the index's compaction never goes back");
        self.compacted = at as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(rev: u64, tombstone: bool) -> Ver {
        Ver { rev, sub: 0, tombstone }
    }

    #[test]
    fn reads_see_the_newest_version_at_a_revision() {
        let mut index = KeyIndex::new(-1);
        index.push(b"a", ver(2, false));
        index.push(b"a", ver(5, true));
        index.push(b"a", ver(7, false));
        index.push(b"b", ver(3, false));
        assert_eq!(index.live_at(b"a", 1), None);
        assert_eq!(index.live_at(b"a", 4), Some(ver(2, false)));
        assert_eq!(index.live_at(b"a", 6), None);
        assert_eq!(index.newest_at(b"a", 6), Some(ver(5, true)));
        assert_eq!(index.live_at(b"a", u64::MAX), Some(ver(7, false)));
        let mut seen = Vec::new();
        index.for_each_live(&Span::From(Vec::new()), 6, |k, v| {
            seen.push((k.to_vec(), v.rev));
            true
        });
        assert_eq!(seen, vec![(b"b".to_vec(), 3)]);
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_it_need() {
        let mut index = KeyIndex::new(-1);
        index.push(b"a", ver(2, false));
        index.push(b"a", ver(4, false));
        index.push(b"a", ver(9, false));
        index.push(b"d", ver(3, false));
        index.push(b"d", ver(5, true));
        let doomed: Vec<u64> = index.doomed_by_compaction(6).iter().map(|v| v.rev).collect();
        assert_eq!(doomed, vec![2, 3, 5]);
        index.compact(6);
        assert_eq!(index.live_at(b"a", 6), Some(ver(4, false)));
        assert_eq!(index.live_at(b"a", 9), Some(ver(9, false)));
        assert_eq!(index.newest_at(b"d", u64::MAX), None);
        assert_eq!(index.len(), 1);
        assert_eq!(index.compacted(), 6);
    }

    #[test]
    fn an_apply_that_did_not_commit_is_forgotten() {
        let mut index = KeyIndex::new(-1);
        index.push(b"a", ver(2, false));
        index.push(b"a", ver(3, false));
        index.push(b"n", ver(3, false));
        index.truncate_after(&[b"a".to_vec(), b"n".to_vec()], 2);
        assert_eq!(index.live_at(b"a", u64::MAX), Some(ver(2, false)));
        assert!(index.newest_at(b"n", u64::MAX).is_none());
        assert_eq!(index.len(), 1);
    }

    #[test]
    #[should_panic(expected = "revision order")]
    fn versions_out_of_order_are_a_bug() {
        let mut index = KeyIndex::new(-1);
        index.push(b"a", ver(3, false));
        index.push(b"a", ver(2, false));
    }
}
