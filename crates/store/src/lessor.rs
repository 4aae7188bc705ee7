//! The lessor: when leases expire. Leases themselves are replicated state (in
//! `mvcc`); their deadlines are not. Every member tracks deadlines from the
//! grants it applies, but only the leader's matter: keep-alives go to the
//! leader and are not replicated, and the leader proposes the revoke of a
//! lease whose deadline passed. A member that becomes leader extends every
//! deadline by the election timeout, so a leader change never expires a lease
//! whose owner kept it alive (etcd's rule).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mvcc::LeaseChange;
use tokio::time::Instant;

/// How often the leader looks for expired leases.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Revokes the leader proposes per check, so a mass expiry is spread out.
pub const LEASE_REVOKES_PER_CHECK_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy)]
struct Deadline {
    ttl: Duration,
    expires: Instant,
}

#[derive(Debug)]
pub struct Lessor {
    deadlines: Mutex<HashMap<i64, Deadline>>,
    /// Server-chosen lease ids: this member's id in the top bits, a counter below.
    id_prefix: u64,
    id_counter: AtomicU64,
}

fn seconds(ttl_seconds: i64) -> Duration {
    Duration::from_secs(ttl_seconds.max(0) as u64)
}

impl Lessor {
    pub fn new(member_id: u64) -> Lessor {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Lessor {
            deadlines: Mutex::new(HashMap::new()),
            id_prefix: (member_id & 0x7FFF) << 48,
            id_counter: AtomicU64::new(start << 8),
        }
    }

    /// A fresh lease id: positive, and distinct from other members' choices.
    pub fn next_id(&self) -> i64 {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed) & 0x0000_FFFF_FFFF_FFFF;
        let id = (self.id_prefix | n) as i64;
        assert!(id > 0, "lease ids are positive");
        id
    }

    /// Replaces every deadline: the leases the state machine holds, each due
    /// one TTL from now.
    pub fn load(&self, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut deadlines = self.deadlines.lock().expect("lessor lock");
        deadlines.clear();
        for (id, ttl) in leases {
            let ttl = seconds(*ttl);
            deadlines.insert(*id, Deadline { ttl, expires: now + ttl });
        }
    }

    /// Follows grants and revokes as they are applied.
    pub fn apply(&self, changes: &[LeaseChange]) {
        if changes.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut deadlines = self.deadlines.lock().expect("lessor lock");
        for change in changes {
            match *change {
                LeaseChange::Granted { id, ttl_seconds } => {
                    let ttl = seconds(ttl_seconds);
                    deadlines.insert(id, Deadline { ttl, expires: now + ttl });
                }
                LeaseChange::Revoked { id } => {
                    deadlines.remove(&id);
                }
            }
        }
    }

    /// On becoming leader: every lease gets a full TTL plus `extend`.
    pub fn promote(&self, extend: Duration) {
        let now = Instant::now();
        for deadline in self.deadlines.lock().expect("lessor lock").values_mut() {
            deadline.expires = now + deadline.ttl + extend;
        }
    }

    /// A keep-alive: the lease's TTL in seconds, or `None` if there is no such lease.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut deadlines = self.deadlines.lock().expect("lessor lock");
        let deadline = deadlines.get_mut(&id)?;
        deadline.expires = Instant::now() + deadline.ttl;
        Some(deadline.ttl.as_secs() as i64)
    }

    /// Time left before the lease expires.
    pub fn remaining(&self, id: i64) -> Option<Duration> {
        let deadlines = self.deadlines.lock().expect("lessor lock");
        deadlines.get(&id).map(|d| d.expires.saturating_duration_since(Instant::now()))
    }

    /// Leases past their deadline, at most `max`. Each is given `retry_after`
    /// before it is reported again, while its revoke is under way.
    pub fn take_expired(&self, max: usize, retry_after: Duration) -> Vec<i64> {
        let now = Instant::now();
        let mut deadlines = self.deadlines.lock().expect("lessor lock");
        let mut expired = Vec::new();
        for (id, deadline) in deadlines.iter_mut() {
            if expired.len() >= max {
                break;
            }
            if deadline.expires <= now {
                deadline.expires = now + retry_after;
                expired.push(*id);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_grants_renewals_and_promotion() {
        let lessor = Lessor::new(42);
        lessor.apply(&[
            LeaseChange::Granted { id: 1, ttl_seconds: 2 },
            LeaseChange::Granted { id: 2, ttl_seconds: 5 },
        ]);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(lessor.renew(1), Some(2));
        assert_eq!(lessor.renew(3), None);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(lessor.take_expired(10, Duration::from_secs(1)).is_empty(), "renewed lease 1 is alive");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(lessor.take_expired(10, Duration::from_secs(1)), [1]);
        assert!(lessor.take_expired(10, Duration::from_secs(1)).is_empty(), "not reported twice at once");
        lessor.promote(Duration::from_secs(1));
        assert!(lessor.remaining(2).unwrap() >= Duration::from_secs(6));
        lessor.apply(&[LeaseChange::Revoked { id: 2 }]);
        assert_eq!(lessor.remaining(2), None);
        assert_ne!(lessor.next_id(), lessor.next_id());
    }
}
