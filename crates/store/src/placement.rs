//! Placement: which Raft group serves a key. Every request passes through here,
//! so that more groups (one per unit, led from the unit's home data center) can
//! come without changing the request path. Today there is one group.

/// Identifies a Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(pub u32);

/// The only group so far: it holds the whole key space.
pub const GROUP_DEFAULT: GroupId = GroupId(0);

/// The group that owns `key`.
pub fn group_of_key(_key: &[u8]) -> GroupId {
    GROUP_DEFAULT
}

/// The group that owns every key of `[key, range_end)`. With more groups, a
/// range crossing groups will be split or refused here.
pub fn group_of_range(_key: &[u8], _range_end: &[u8]) -> GroupId {
    GROUP_DEFAULT
}
