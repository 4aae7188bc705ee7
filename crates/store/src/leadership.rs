//! Moving leadership to a chosen member (etcd's MoveLeader).
//!
//! openraft 0.9 has no leader-transfer message, and its followers refuse votes
//! while their leader lease (the longest election timeout) runs. So the
//! leader, once the target holds every entry, stops its heartbeats, asks the
//! other voters to hold their own elections, and asks the target to campaign
//! as soon as the followers' lease has passed. Nobody else campaigns in that
//! window, so the target — whose log is complete — wins. Holds end by
//! themselves, so a failed transfer leaves the cluster as it was.

use std::time::Duration;

use etcd_proto::fivefoldpb::LeaderTransfer;
use tokio::time::Instant;
use tonic::Status;

use crate::node::StoreNode;
use crate::types::NodeId;

const BAD_TRANSFEREE: &str = "etcdserver: bad leader transferee";
const NOT_LEADER_ETCD: &str = "etcdserver: not leader";
const TRANSFER_TIMEOUT: &str = "etcdserver: leader transfer timeout";

impl StoreNode {
    fn election_timeout_max(&self) -> Duration {
        let timeout = self.config.election_timeout;
        timeout + timeout / 2
    }

    /// Makes `target` the leader. Must run on the leader.
    pub async fn move_leader(&self, target: NodeId) -> Result<(), Status> {
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
        let hold = lease * 4;
        let deadline = Instant::now() + hold;
        self.wait_replicated(target, deadline).await?;

        let transfer =
            LeaderTransfer { hold_ms: hold.as_millis() as u64, lease_ms: lease.as_millis() as u64 };
        self.hold_elections(hold);
        self.raft.runtime_config().heartbeat(false);
        for voter in voters.iter().filter(|v| **v != self.member_id) {
            let Some(url) = membership.get_node(voter).and_then(|m| m.peer_urls.first()) else { continue };
            let Ok(mut client) = self.peer_client(url) else { continue };
            let mut request = tonic::Request::new(transfer);
            request.set_timeout(lease);
            let result = if *voter == target {
                client.campaign(request).await
            } else {
                client.hold_elections(request).await
            };
            if let Err(status) = result {
                tracing::warn!(member = format_args!("{voter:x}"), %status, "leader transfer: a member did not answer");
            }
        }
        let moved = self.wait_leader(target, deadline).await;
        self.raft.runtime_config().heartbeat(true);
        if moved {
            tracing::info!(target = format_args!("{target:x}"), "leadership moved");
            Ok(())
        } else {
            Err(Status::unavailable(TRANSFER_TIMEOUT))
        }
    }

    async fn wait_replicated(&self, target: NodeId, deadline: Instant) -> Result<(), Status> {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                let last = m.last_log_index;
                let matched =
                    m.replication.as_ref().and_then(|r| r.get(&target).cloned()).flatten().map(|l| l.index);
                if last.is_some() && matched == last {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                return Err(Status::unavailable(TRANSFER_TIMEOUT));
            }
        }
    }

    async fn wait_leader(&self, target: NodeId, deadline: Instant) -> bool {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader == Some(target) {
                return true;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
    }

    /// Stops this member's election timer for `hold`, then restarts it.
    pub fn hold_elections(&self, hold: Duration) {
        self.raft.runtime_config().elect(false);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            raft.runtime_config().elect(true);
        });
    }

    /// The transfer target: waits out the followers' lease, then campaigns
    /// until it leads or the hold ends.
    pub fn campaign(&self, transfer: LeaderTransfer) {
        let raft = self.raft.clone();
        let me = self.member_id;
        let lease = Duration::from_millis(transfer.lease_ms);
        let deadline = Instant::now() + Duration::from_millis(transfer.hold_ms);
        tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            while Instant::now() < deadline {
                if raft.metrics().borrow().current_leader == Some(me) {
                    return;
                }
                let _ = raft.trigger().elect().await;
                tokio::time::sleep(lease / 4).await;
            }
        });
    }
}
