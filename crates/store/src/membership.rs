//! Membership changes with etcd's Cluster API semantics over openraft's joint
//! consensus. They run on the leader (a follower forwards them).
//!
//! MemberAdd adds a learner. Without `--learner` the member is marked to be
//! promoted: the leader makes it a voter once it has caught up (by snapshot if
//! the log behind it was purged), so it never counts toward a quorum for
//! entries it does not hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_proto::etcdserverpb::{
    Member as PbMember, MemberAddRequest, MemberAddResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::time::Instant;
use tonic::Status;

use crate::config::parse_url;
use crate::node::{StoreNode, NOT_LEADER};
use crate::types::{Member, NodeId};

/// Log entries a learner may lag behind the leader and still count as caught up.
pub const CATCH_UP_LAG_MAX: u64 = 100;

/// Whether a follower that holds entries up to `matched` is within
/// `CATCH_UP_LAG_MAX` of the leader's `last`.
pub fn within_catch_up(matched: u64, last: u64) -> bool {
    matched + CATCH_UP_LAG_MAX >= last
}
/// How often the leader looks for learners to promote.
pub const PROMOTE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
const NOT_A_LEARNER: &str = "etcdserver: can only promote a learner member";
const LEARNER_BEHIND: &str = "etcdserver: can only promote a learner member which is in sync with leader";

type ChangeResult = Result<
    openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, Member>>,
>;

/// Pause between attempts while another membership change is in flight.
const CHANGE_RETRY_PAUSE: Duration = Duration::from_millis(50);

fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Status::unavailable(NOT_LEADER),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("etcdserver: {e}"))
        }
        RaftError::Fatal(e) => Status::unavailable(format!("etcdserver: server stopped: {e}")),
    }
}

impl StoreNode {
    /// Runs one membership change at a time on this member (the promoter and
    /// client requests share the lock), waiting out a change still in flight
    /// — openraft refuses a second one until the first is committed — until
    /// the request deadline.
    async fn change_membership<F, Fut>(&self, change: F) -> Result<(), Status>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ChangeResult>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let _one_at_a_time = self.membership_lock.lock().await;
        loop {
            match change().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => tokio::time::sleep(CHANGE_RETRY_PAUSE).await,
                Err(e) => return Err(change_error(e)),
            }
        }
    }

    /// The membership as etcd's Member list: names and client URLs come from the
    /// attributes members published; a member that never started has none.
    pub async fn member_list(&self) -> Result<Vec<PbMember>, Status> {
        // On the pool: a read may wait for an apply and commit it first.
        let mvcc = self.mvcc.clone();
        let attributes = crate::node::on_pool(move || mvcc.member_attributes())
            .await?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        Ok(membership
            .nodes()
            .map(|(id, member)| {
                let published = attributes.iter().find(|a| a.member_id == *id);
                PbMember {
                    id: *id,
                    name: published.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: member.peer_urls.clone(),
                    client_ur_ls: published.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    // A member added as a voter is one for its clients even while it catches up.
                    is_learner: !voters.contains(id) && !member.promote_when_caught_up,
                }
            })
            .collect())
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(Status::unavailable(NOT_LEADER))
        }
    }

    fn member(&self, id: NodeId) -> Result<(Member, bool), Status> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let member = membership.get_node(&id).cloned().ok_or_else(|| Status::not_found(MEMBER_NOT_FOUND))?;
        let voter = membership.voter_ids().any(|v| v == id);
        Ok((member, voter))
    }

    pub async fn member_add_here(&self, req: MemberAddRequest) -> Result<MemberAddResponse, Status> {
        self.require_leader()?;
        if req.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument("etcdserver: member peer URLs are not provided"));
        }
        for url in &req.peer_ur_ls {
            parse_url("peer URL", url).map_err(|e| Status::invalid_argument(format!("etcdserver: {e}")))?;
        }
        let metrics = self.raft.metrics().borrow().clone();
        let taken = metrics
            .membership_config
            .membership()
            .nodes()
            .any(|(_, m)| m.peer_urls.iter().any(|u| req.peer_ur_ls.contains(u)));
        if taken {
            return Err(Status::failed_precondition(PEER_URL_EXISTS));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut parts: Vec<Vec<u8>> = req.peer_ur_ls.iter().map(|u| u.as_bytes().to_vec()).collect();
        parts.push(self.cluster_id.to_be_bytes().to_vec());
        parts.push(now.as_nanos().to_be_bytes().to_vec());
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let id = topology::stable_hash(&refs).max(1);
        let member = Member {
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
            promote_when_caught_up: !req.is_learner,
        };
        self.change_membership(|| self.raft.add_learner(id, member.clone(), false)).await?;
        tracing::info!(member = format_args!("{id:x}"), learner = req.is_learner, urls = ?req.peer_ur_ls, "member added");
        Ok(MemberAddResponse {
            header: Some(self.header(self.mvcc.revision())),
            member: Some(PbMember {
                id,
                name: String::new(),
                peer_ur_ls: req.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.member_list().await?,
        })
    }

    pub async fn member_remove_here(&self, req: MemberRemoveRequest) -> Result<MemberRemoveResponse, Status> {
        self.require_leader()?;
        let (_, voter) = self.member(req.id)?;
        let ids = BTreeSet::from([req.id]);
        let change = if voter { ChangeMembers::RemoveVoters(ids) } else { ChangeMembers::RemoveNodes(ids) };
        self.change_membership(|| self.raft.change_membership(change.clone(), false)).await?;
        tracing::info!(member = format_args!("{:x}", req.id), "member removed");
        Ok(MemberRemoveResponse {
            header: Some(self.header(self.mvcc.revision())),
            members: self.member_list().await?,
        })
    }

    pub async fn member_update_here(&self, req: MemberUpdateRequest) -> Result<MemberUpdateResponse, Status> {
        self.require_leader()?;
        let (mut member, _) = self.member(req.id)?;
        if req.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument("etcdserver: member peer URLs are not provided"));
        }
        for url in &req.peer_ur_ls {
            parse_url("peer URL", url).map_err(|e| Status::invalid_argument(format!("etcdserver: {e}")))?;
        }
        member.peer_urls = req.peer_ur_ls;
        let change = ChangeMembers::SetNodes(BTreeMap::from([(req.id, member)]));
        self.change_membership(|| self.raft.change_membership(change.clone(), true)).await?;
        Ok(MemberUpdateResponse {
            header: Some(self.header(self.mvcc.revision())),
            members: self.member_list().await?,
        })
    }

    pub async fn member_promote_here(
        &self,
        req: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, Status> {
        self.require_leader()?;
        let (_, voter) = self.member(req.id)?;
        if voter {
            return Err(Status::failed_precondition(NOT_A_LEARNER));
        }
        if !self.caught_up(req.id) {
            return Err(Status::failed_precondition(LEARNER_BEHIND));
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
        self.change_membership(|| self.raft.change_membership(change.clone(), true)).await?;
        tracing::info!(member = format_args!("{:x}", req.id), "learner promoted");
        Ok(MemberPromoteResponse {
            header: Some(self.header(self.mvcc.revision())),
            members: self.member_list().await?,
        })
    }

    /// Whether the leader has replicated to `id` up to within `CATCH_UP_LAG_MAX`.
    fn caught_up(&self, id: NodeId) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned())
            .flatten()
            .map_or(0, |log_id| log_id.index);
        within_catch_up(matched, last) && matched > 0
    }

    /// On the leader: promotes learners that were added as voters once they
    /// have caught up. Runs until the member stops.
    pub async fn run_promoter(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(PROMOTE_CHECK_INTERVAL);
        loop {
            ticker.tick().await;
            if !self.is_leader() {
                continue;
            }
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let due: Vec<NodeId> = membership
                .nodes()
                .filter(|(id, m)| m.promote_when_caught_up && !voters.contains(id))
                .map(|(id, _)| *id)
                .filter(|id| self.caught_up(*id))
                .collect();
            for id in due {
                let started = Instant::now();
                let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                match self.raft.change_membership(change, true).await {
                    Ok(_) => {
                        tracing::info!(member = format_args!("{id:x}"), took = ?started.elapsed(), "caught-up member promoted to voter")
                    }
                    Err(e) => {
                        tracing::debug!(member = format_args!("{id:x}"), error = %e, "promotion deferred")
                    }
                }
            }
        }
    }
}
