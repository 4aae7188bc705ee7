//! Moving leadership to a chosen member (etcd's MoveLeader).
//!
//! openraft 0.9 has no leader-transfer message, and its followers refuse votes
//! while their leader lease (the longest election timeout) runs. So the
//! leader holds new proposals and read indexes (each would renew the lease,
//! see `transfer_gate`), waits until what it proposed is answered and the
//! target holds every entry, stops its heartbeats, asks the
//! other voters to hold their own elections (and their pre-votes, see
//! `election`), and asks the target to campaign as soon as the followers'
//! lease has passed. Nobody else campaigns in that
//! window, so the target — whose log is complete — wins. Holds end by
//! themselves, so a failed transfer leaves the cluster as it was.

use std::collections::HashMap;
use std::time::Duration;

use etcd_proto::fivefoldpb::{LeaderTransfer, MemberAttributes};
use tokio::time::Instant;
use tonic::Status;

use crate::node::StoreNode;
use crate::types::NodeId;

/// How often the leader checks whether it lives in the primary city.
pub const LEADER_PLACEMENT_CHECK: Duration = Duration::from_secs(1);
/// How long a leader leads before it hands leadership to the primary city,
/// so that a flapping member does not drag leadership back and forth.
const LEADER_SETTLE_ELECTION_TIMEOUTS: u32 = 3;

/// How long a transfer may take, in leader leases: the wait for the target
/// to hold every entry, one lease for the followers' to lapse, the election.
/// Proposals and reads on the leader wait meanwhile.
const TRANSFER_HOLD_LEASES: u32 = 4;

/// Puts a leader back to normal however its transfer ends, also when the
/// MoveLeader call is dropped half-way: heartbeats on, transfer gate open.
struct RestoreOnDrop<'n> {
    node: &'n StoreNode,
}

impl Drop for RestoreOnDrop<'_> {
    fn drop(&mut self) {
        self.node.raft.runtime_config().heartbeat(true);
        self.node.transfer_gate.open();
    }
}

const BAD_TRANSFEREE: &str = "etcdserver: bad leader transferee";
const NOT_LEADER_ETCD: &str = "etcdserver: not leader";
const TRANSFER_TIMEOUT: &str = "etcdserver: leader transfer timeout";

impl StoreNode {
    /// openraft's `election_timeout_max`, which is also its followers' leader lease.
    fn election_timeout_max(&self) -> Duration {
        self.config.election_timeout
    }

    /// Makes `target` the leader. Must run on the leader.
    pub async fn move_leader(&self, target: NodeId) -> Result<(), Status> {
        let _one_at_a_time = self.transfer_lock.lock().await;
        if !self.is_leader() {
            return Err(Status::failed_precondition(NOT_LEADER_ETCD));
        }
        if target == self.member_id {
            return Ok(());
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&target) {
            return Err(Status::failed_precondition(BAD_TRANSFEREE));
        }
        let lease = self.election_timeout_max();
        let deadline = Instant::now() + lease * TRANSFER_HOLD_LEASES;
        // Nothing new reaches the followers from here on (see `transfer_gate`),
        // and what was proposed before is answered before anyone campaigns.
        self.transfer_gate.close_until(deadline);
        let _restore = RestoreOnDrop { node: self };
        if tokio::time::timeout_at(deadline, self.proposer.drained()).await.is_err() {
            return Err(Status::unavailable(TRANSFER_TIMEOUT));
        }
        self.wait_replicated(target, deadline).await?;

        // The followers' lease must lapse and an election fit before the
        // deadline; the others' holds end half a lease before this leader's
        // gate opens, so the target cannot win after writes resumed here.
        let hold = deadline.saturating_duration_since(Instant::now()).saturating_sub(lease / 2);
        if hold < lease + lease / 2 {
            return Err(Status::unavailable(TRANSFER_TIMEOUT));
        }
        let transfer =
            LeaderTransfer { hold_ms: hold.as_millis() as u64, lease_ms: lease.as_millis() as u64 };
        self.hold_elections(hold);
        self.raft.runtime_config().heartbeat(false);
        // The target first: if it cannot campaign, the transfer ends before
        // any other member was told to hold its elections.
        let others = voters.iter().filter(|v| **v != self.member_id && **v != target);
        for voter in std::iter::once(&target).chain(others) {
            let Some(url) = membership.get_node(voter).and_then(|m| m.peer_urls.first()) else { continue };
            let Ok(mut client) = self.peer(url).await else {
                // Without the target the transfer cannot succeed (below).
                if *voter == target {
                    tracing::warn!(
                        member = format_args!("{voter:x}"),
                        "leader transfer: the target cannot be reached"
                    );
                    return Err(Status::unavailable(TRANSFER_TIMEOUT));
                }
                continue;
            };
            let mut request = tonic::Request::new(transfer);
            request.set_timeout(lease);
            let result = if *voter == target {
                client.campaign(request).await
            } else {
                client.hold_elections(request).await
            };
            match result {
                // Without the target's campaign the transfer cannot succeed:
                // give up now rather than hold writes until the deadline.
                Err(status) if *voter == target => {
                    tracing::warn!(member = format_args!("{voter:x}"), %status, "leader transfer: the target did not answer");
                    return Err(Status::unavailable(TRANSFER_TIMEOUT));
                }
                Err(status) => {
                    tracing::warn!(member = format_args!("{voter:x}"), %status, "leader transfer: a member did not answer");
                }
                Ok(_) => {}
            }
        }
        if self.wait_leader(target, deadline).await {
            tracing::info!(target = format_args!("{target:x}"), "leadership moved");
            Ok(())
        } else {
            Err(Status::unavailable(TRANSFER_TIMEOUT))
        }
    }

    async fn wait_replicated(&self, target: NodeId, deadline: Instant) -> Result<(), Status> {
        let mut metrics = self.raft.metrics();
        // A target whose matched index stands still for a lease is not
        // catching up (gone, or cut off): give up rather than hold writes
        // until the deadline.
        let stall = self.election_timeout_max();
        let (mut before, mut since) = (None, Instant::now());
        loop {
            {
                let m = metrics.borrow_and_update();
                let last = m.last_log_index;
                let matched =
                    m.replication.as_ref().and_then(|r| r.get(&target).cloned()).flatten().map(|l| l.index);
                if last.is_some() && matched == last {
                    return Ok(());
                }
                if m.current_leader != Some(self.member_id) {
                    return Err(Status::failed_precondition(NOT_LEADER_ETCD));
                }
                if matched != before {
                    (before, since) = (matched, Instant::now());
                }
            }
            let stalled_at = (since + stall).min(deadline);
            if tokio::time::timeout_at(stalled_at, metrics.changed()).await.is_err() {
                return Err(Status::unavailable(TRANSFER_TIMEOUT));
            }
        }
    }

    async fn wait_leader(&self, target: NodeId, deadline: Instant) -> bool {
        let mut metrics = self.raft.server_metrics();
        loop {
            match metrics.borrow_and_update().current_leader {
                Some(leader) if leader == target => return true,
                // Someone else won: the transfer failed, stop holding writes.
                Some(leader) if leader != self.member_id => return false,
                _ => {}
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
    }

    /// Keeps the leader in the primary city: while this member leads from
    /// another city and a voter in the primary city is live and nearly
    /// caught up, moves leadership there (a transfer, not an election lost by
    /// timeout). Runs until the member stops; does nothing without
    /// `--primary-city`.
    pub async fn run_leader_placement(self: std::sync::Arc<Self>) {
        let Some(primary) = self.config.primary_city.clone() else { return };
        let mut ticker = tokio::time::interval(LEADER_PLACEMENT_CHECK);
        let mut leading_since: Option<Instant> = None;
        // Each primary-city voter's matched index at the previous check.
        let mut seen: HashMap<NodeId, u64> = HashMap::new();
        loop {
            ticker.tick().await;
            if !self.is_leader() {
                leading_since = None;
                seen.clear();
                continue;
            }
            let since = *leading_since.get_or_insert_with(Instant::now);
            if self.config.city == primary {
                continue;
            }
            // On the pool: a read may wait for an apply and commit it first.
            let mvcc = self.mvcc.clone();
            let Ok(Ok(attributes)) = crate::node::on_pool(move || mvcc.member_attributes()).await else {
                continue;
            };
            let Some(target) = self.live_voter_in(&primary, &attributes, &mut seen) else { continue };
            if since.elapsed() < self.config.election_timeout * LEADER_SETTLE_ELECTION_TIMEOUTS {
                continue;
            }
            tracing::info!(city = %primary, target = format_args!("{target:x}"), "moving leadership to the primary city");
            if let Err(status) = self.move_leader(target).await {
                tracing::warn!(%status, "moving leadership to the primary city failed; will retry");
            }
            leading_since = None;
            seen.clear();
        }
    }

    /// The voter in `city` (by its published labels) that has the most
    /// entries, if it is live and at most `CATCH_UP_LAG_MAX` entries behind.
    /// Under steady writes a follower rarely holds the newest entry at the
    /// moment of a check (one is always in flight), so demanding every entry
    /// could keep the leader away from home indefinitely; `move_leader` holds
    /// new writes and waits until the target holds every entry before it
    /// campaigns. Live means it holds every entry, or its matched index moved
    /// since the previous check (`seen`, updated here): a voter that went
    /// away keeps its last matched index in the leader's metrics, and a
    /// transfer to it would hold writes until the transfer's deadline.
    fn live_voter_in(
        &self,
        city: &str,
        attributes: &[MemberAttributes],
        seen: &mut HashMap<NodeId, u64>,
    ) -> Option<NodeId> {
        let (last, matched) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let replication = metrics.replication.as_ref()?;
            let matched: Vec<(NodeId, u64)> = attributes
                .iter()
                .filter(|a| a.city == city && a.member_id != self.member_id)
                .filter(|a| membership.voter_ids().any(|v| v == a.member_id))
                .filter_map(|a| Some((a.member_id, replication.get(&a.member_id).cloned().flatten()?.index)))
                .collect();
            (metrics.last_log_index?, matched)
        };
        let live =
            |(id, index): &(NodeId, u64)| *index >= last || seen.get(id).is_some_and(|before| index > before);
        let target = matched
            .iter()
            .filter(|m| live(m) && crate::membership::within_catch_up(m.1, last))
            .max_by_key(|m| m.1)
            .map(|m| m.0);
        *seen = matched.into_iter().collect();
        target
    }

    /// Keeps this member from campaigning for `hold` (see `election`).
    pub fn hold_elections(&self, hold: Duration) {
        *self.elections_held_until.lock().expect("election hold lock") = Some(Instant::now() + hold);
    }

    /// Whether a leader transfer asked this member not to campaign.
    pub fn elections_held(&self) -> bool {
        self.elections_held_until
            .lock()
            .expect("election hold lock")
            .is_some_and(|until| Instant::now() < until)
    }

    /// The transfer target: waits out the followers' lease, then campaigns
    /// until it leads or the hold ends.
    pub fn campaign(&self, transfer: LeaderTransfer) {
        let raft = self.raft.clone();
        let me = self.member_id;
        let lease = Duration::from_millis(transfer.lease_ms);
        let hold = Duration::from_millis(transfer.hold_ms);
        let deadline = Instant::now() + hold;
        // Only this loop campaigns meanwhile: the member's own election loop
        // firing too would start a second election and raise the term twice.
        self.hold_elections(hold);
        tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            while Instant::now() < deadline {
                let (leader, state) = {
                    let metrics = raft.server_metrics();
                    let metrics = metrics.borrow();
                    (metrics.current_leader, metrics.state)
                };
                if leader == Some(me) {
                    return;
                }
                // An election of ours still in progress is left to finish.
                if state != openraft::ServerState::Candidate {
                    let _ = raft.trigger().elect().await;
                }
                tokio::time::sleep(lease / 4).await;
            }
        });
    }
}
