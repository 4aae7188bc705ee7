//! One store member: Raft, the MVCC store, and the two request paths every
//! service uses — `propose` for writes (forwarded to the leader from a
//! follower) and `read_barrier` for linearizable reads (ReadIndex, asked of the
//! leader from a follower).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    ResponseHeader,
};
use etcd_proto::fivefoldpb::peer_client::PeerClient;
use etcd_proto::fivefoldpb::{
    command, command_response, Command, CommandResponse, MemberAttributes, ReadIndexRequest,
};
use mvcc::{MvccError, MvccStore};
use openraft::error::{CheckIsLeaderError, RaftError};
use prost::Message;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::config::StoreConfig;
use crate::identity::Identity;
use crate::lessor::Lessor;
use crate::metrics::StoreMetrics;
use crate::network::{PeerChannel, PeerChannels};
use crate::proposer::{stopped, Proposer};
use crate::transfer_gate::TransferGate;
use crate::types::{Member, NodeId, Raft};
use crate::watch_hub::WatchHub;

/// Reads that may wait for a read-index round; more wait for room.
const READS_QUEUED_MAX: usize = 65_536;
/// Reads one read-index round answers, at most.
const READS_PER_ROUND_MAX: usize = 16_384;

type ReadReply = tokio::sync::oneshot::Sender<Result<u64, Status>>;

/// etcd's message when no leader is known.
pub const NO_LEADER: &str = "etcdserver: no leader";
/// etcd's message when a request ran out of time.
pub const REQUEST_TIMED_OUT: &str = "etcdserver: request timed out";
/// Message a leader-only peer call gets from a member that is not the leader.
pub const NOT_LEADER: &str = "fivefold: not the leader";
/// etcd's error (Unavailable) for a write whose leader was replaced while it
/// was in flight: its outcome is unknown, and the client may retry at once.
pub const LEADER_CHANGED: &str = "etcdserver: leader changed";

pub struct StoreNode {
    pub raft: Raft,
    pub mvcc: Arc<MvccStore>,
    pub member_id: NodeId,
    pub cluster_id: u64,
    pub config: StoreConfig,
    pub watch_hub: Arc<WatchHub>,
    pub lessor: Arc<Lessor>,
    peers: PeerChannels,
    /// Batches this member's proposals while it leads (see `proposer`).
    pub(crate) proposer: Proposer,
    /// Reads waiting for a read index (see `run_read_rounds`).
    read_rounds: tokio::sync::mpsc::Sender<ReadReply>,
    read_round_queue: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<ReadReply>>>,
    /// Writes a follower forwards to the leader (see `forwarder`).
    pub(crate) forwards: tokio::sync::mpsc::Sender<crate::forwarder::Forward>,
    pub(crate) forward_queue: std::sync::Mutex<Option<crate::forwarder::ForwardQueue>>,
    /// Idle raft streams for forwards, by leader (see `forwarder`).
    pub(crate) forward_streams: crate::forwarder::ForwardStreams,
    /// Closed while this leader hands leadership over (see `transfer_gate`).
    pub(crate) transfer_gate: TransferGate,
    /// What `GET /metrics` reports (see `metrics`).
    pub metrics: Arc<StoreMetrics>,
    /// One leader transfer at a time: a second would open the gate while
    /// the first still needs it closed.
    pub(crate) transfer_lock: tokio::sync::Mutex<()>,
    /// Until when a leader transfer holds this member's campaigns.
    pub(crate) elections_held_until: std::sync::Mutex<Option<Instant>>,
    /// One membership change at a time (see `membership`).
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
}

/// Turns a client error from the MVCC layer into etcd's gRPC status.
pub fn status_of(e: &MvccError) -> Status {
    Status::new(Code::from_i32(e.code() as i32), e.to_string())
}

pub fn kv_status(e: mvcc::KvError) -> Status {
    match e {
        mvcc::KvError::Request(e) => status_of(&e),
        mvcc::KvError::Storage(e) => {
            tracing::error!(error = %e, "storage failure while serving a read");
            Status::internal(format!("etcdserver: {e}"))
        }
    }
}

impl StoreNode {
    /// Assembles a member from the parts `server::run` built, in the order it
    /// builds them (the log store and state machine share `metrics`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raft: Raft,
        mvcc: Arc<MvccStore>,
        watch_hub: Arc<WatchHub>,
        lessor: Arc<Lessor>,
        config: StoreConfig,
        identity: Identity,
        peers: PeerChannels,
        metrics: Arc<StoreMetrics>,
    ) -> StoreNode {
        let (read_rounds, read_round_queue) = tokio::sync::mpsc::channel(READS_QUEUED_MAX);
        let (forwards, forward_queue) = crate::forwarder::queue();
        let transfer_gate = TransferGate::default();
        StoreNode {
            forwards,
            forward_queue: std::sync::Mutex::new(Some(forward_queue)),
            forward_streams: Default::default(),
            read_rounds,
            read_round_queue: std::sync::Mutex::new(Some(read_round_queue)),
            proposer: Proposer::start(raft.clone(), transfer_gate.clone(), metrics.clone()),
            metrics,
            transfer_gate,
            member_id: identity.member_id,
            cluster_id: identity.cluster_id,
            raft,
            mvcc,
            watch_hub,
            lessor,
            config,
            peers,
            membership_lock: tokio::sync::Mutex::new(()),
            transfer_lock: tokio::sync::Mutex::new(()),
            elections_held_until: std::sync::Mutex::new(None),
        }
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    /// A client for the peer at `url`, once fault rules (tests only) let a
    /// message through. Unreachable reads as "not the leader": nothing was sent.
    pub async fn peer(&self, url: &str) -> Result<PeerClient<PeerChannel>, Status> {
        self.pass_faults(url).await?;
        self.peer_unchecked(url)
    }

    /// Applies the fault rules (tests only) to one message for `url`: holds
    /// it, or fails as an unreachable peer would.
    pub(crate) async fn pass_faults(&self, url: &str) -> Result<(), Status> {
        self.peers.faults.pass(url).await.map_err(|e| {
            tracing::debug!(peer = %url, error = %e, "peer unreachable");
            Status::unavailable(NOT_LEADER)
        })
    }

    /// A client for `url` for a caller that applied the fault rules itself.
    pub(crate) fn peer_unchecked(&self, url: &str) -> Result<PeerClient<PeerChannel>, Status> {
        self.peers.get(url).map_err(|e| {
            tracing::debug!(peer = %url, error = %e, "peer unreachable");
            Status::unavailable(NOT_LEADER)
        })
    }

    /// Replaces this member's fault rules (tests only).
    pub fn inject_faults(&self, rules: &etcd_proto::fivefoldpb::FaultRules) {
        self.peers.faults.set(rules);
    }

    /// The current leader and its membership record, waiting until `deadline`
    /// for one to be known.
    async fn leader(&self, deadline: Instant) -> Result<(NodeId, Member), Status> {
        // The server metrics change only with the vote, state, leader or
        // membership, not with every append and apply as the full ones do:
        // no wake-up per write for a caller waiting on leadership.
        let mut metrics = self.raft.server_metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if let Some(id) = m.current_leader {
                    if let Some(node) = m.membership_config.membership().get_node(&id) {
                        return Ok((id, node.clone()));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(stopped()),
                Err(_) => return Err(Status::unavailable(NO_LEADER)),
            }
        }
    }

    /// Resolves once this member knows a leader other than `old` (never, if the
    /// member stops first). Lets a call stuck on a dead leader give up as soon
    /// as a successor is elected instead of waiting out its deadline.
    pub(crate) async fn successor_of(&self, old: NodeId) {
        let mut metrics = self.raft.server_metrics();
        loop {
            if metrics.borrow_and_update().current_leader.is_some_and(|id| id != old) {
                return;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits for the next change of leadership, or `deadline`.
    async fn leadership_change(&self, seen: Option<NodeId>, deadline: Instant) {
        let mut metrics = self.raft.server_metrics();
        let changed = |m: &openraft::metrics::RaftServerMetrics<NodeId, Member>| m.current_leader != seen;
        let wait = async {
            while !changed(&metrics.borrow_and_update()) {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        // A short pause at most: a stale leader id may simply not be updated yet.
        let pause = Instant::now() + self.config.heartbeat_interval;
        let _ = tokio::time::timeout_at(deadline.min(pause), wait).await;
    }

    /// Replicates a write and returns what applying it produced. From a
    /// follower the write is forwarded to the leader. Acknowledged only once a
    /// majority has the entry durably and it has been applied.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, Status> {
        if command.encoded_len() > self.config.max_request_bytes {
            return Err(status_of(&MvccError::RequestTooLarge));
        }
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            let (leader_id, leader) = self.leader(deadline).await?;
            let result = if leader_id == self.member_id {
                self.propose_here(command.clone(), deadline).await
            } else {
                self.forward(leader_id, leader, command.clone(), deadline).await
            };
            match result {
                Err(status) if status.message() == NOT_LEADER => {
                    // Nothing was proposed: find the new leader and try again.
                    self.leadership_change(Some(leader_id), deadline).await;
                    if Instant::now() >= deadline {
                        return Err(Status::unavailable(REQUEST_TIMED_OUT));
                    }
                }
                other => return other.and_then(response_or_error),
            }
        }
    }

    /// Serves a write a follower forwarded (over `Peer.Propose` or a raft
    /// stream): a batch is proposed as one log entry and answered with one
    /// response per command.
    pub async fn propose_forwarded(&self, command: Command) -> Result<CommandResponse, Status> {
        let deadline = Instant::now() + self.config.request_timeout;
        match command.kind {
            None => Err(Status::invalid_argument("etcdserver: a forwarded write carries no command")),
            Some(command::Kind::Batch(batch)) => {
                let responses = self.propose_all_here(batch.commands, deadline).await?;
                let kind =
                    command_response::Kind::Batch(etcd_proto::fivefoldpb::CommandBatchResponse { responses });
                Ok(CommandResponse { kind: Some(kind), revision: 0 })
            }
            _ => self.propose_here(command, deadline).await,
        }
    }

    /// Proposes `commands` on this member (the leader) in one log entry.
    pub async fn propose_all_here(
        &self,
        commands: Vec<Command>,
        deadline: Instant,
    ) -> Result<Vec<CommandResponse>, Status> {
        if commands.is_empty()
            || commands.iter().any(|c| matches!(c.kind, Some(command::Kind::Batch(_)) | None))
        {
            return Err(Status::invalid_argument("etcdserver: a forwarded batch holds plain commands"));
        }
        within(deadline, self.proposer.propose_all(commands)).await
    }

    /// Proposes on this member, which must be the leader.
    pub async fn propose_here(&self, command: Command, deadline: Instant) -> Result<CommandResponse, Status> {
        within(deadline, self.proposer.propose(command)).await
    }

    /// Returns once this member's state machine has applied everything that
    /// was committed when the call began, as confirmed by a quorum: reads after
    /// it are linearizable.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        let deadline = Instant::now() + self.config.request_timeout;
        let (reply, index) = tokio::sync::oneshot::channel();
        self.read_rounds.send(reply).await.map_err(|_| stopped())?;
        let index = within(deadline, async { index.await.map_err(|_| stopped())? }).await?;
        self.wait_applied(index, deadline).await
    }

    /// Read-index rounds: every read waiting when a round starts shares its
    /// one quorum confirmation. A read that arrives during a round waits for
    /// the next, which starts after it arrived — so the index it gets is at
    /// least the commit index at its arrival, as linearizability needs.
    /// Runs until the member stops.
    pub async fn run_read_rounds(self: Arc<Self>) {
        let Some(mut waiting) = self.read_round_queue.lock().expect("read round queue lock").take() else {
            return;
        };
        let mut readers = Vec::new();
        while waiting.recv_many(&mut readers, READS_PER_ROUND_MAX).await > 0 {
            let index = self.read_index().await;
            for reader in readers.drain(..) {
                let _ = reader.send(index.clone());
            }
        }
    }

    /// One read index, from this member if it leads, else from the leader.
    async fn read_index(&self) -> Result<u64, Status> {
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            let (leader_id, leader) = self.leader(deadline).await?;
            let index = if leader_id == self.member_id {
                self.read_index_here(deadline).await
            } else {
                self.read_index_from(leader_id, &leader, deadline).await
            };
            match index {
                Ok(index) => return Ok(index),
                Err(status) if status.message() == NOT_LEADER => {
                    self.leadership_change(Some(leader_id), deadline).await;
                    if Instant::now() >= deadline {
                        return Err(Status::unavailable(REQUEST_TIMED_OUT));
                    }
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// The read index, confirmed by a heartbeat round to a quorum. Only on the leader.
    pub async fn read_index_here(&self, deadline: Instant) -> Result<u64, Status> {
        // A read-index round renews the followers' lease: none while leadership moves.
        if tokio::time::timeout_at(deadline, self.transfer_gate.passed()).await.is_err() {
            return Err(Status::unavailable(REQUEST_TIMED_OUT));
        }
        match tokio::time::timeout_at(deadline, self.raft.get_read_log_id()).await {
            Err(_) => Err(Status::unavailable(REQUEST_TIMED_OUT)),
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |id| id.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(Status::unavailable(NOT_LEADER))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(Status::unavailable(NOT_LEADER))
            }
            Ok(Err(RaftError::Fatal(e))) => {
                Err(Status::unavailable(format!("etcdserver: server stopped: {e}")))
            }
        }
    }

    async fn read_index_from(
        &self,
        leader_id: NodeId,
        leader: &Member,
        deadline: Instant,
    ) -> Result<u64, Status> {
        let url = leader.peer_urls.first().ok_or_else(|| Status::unavailable(NO_LEADER))?;
        let mut client = self.peer(url).await?;
        let mut request = tonic::Request::new(ReadIndexRequest {});
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        // A read index is safe to ask again: a leader that stopped answering
        // is given up as soon as another is elected.
        let answer = tokio::select! {
            biased;
            answer = tokio::time::timeout_at(deadline, client.read_index(request)) => match answer {
                Ok(answer) => answer,
                Err(_) => return Err(Status::unavailable(REQUEST_TIMED_OUT)),
            },
            _ = self.successor_of(leader_id) => return Err(Status::unavailable(NOT_LEADER)),
        };
        match answer {
            Ok(reply) => Ok(reply.into_inner().index),
            Err(status) if status.message() == NOT_LEADER => Err(status),
            Err(status) => {
                tracing::debug!(%status, leader = %leader, "read index from the leader failed");
                Err(Status::unavailable(NOT_LEADER))
            }
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), Status> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| Status::unavailable(REQUEST_TIMED_OUT))
    }

    /// Publishes this member's name and client URLs through the log, retrying
    /// until it is committed or the member stops.
    pub async fn publish_attributes(self: Arc<Self>) {
        let attributes = MemberAttributes {
            member_id: self.member_id,
            name: self.config.name.clone(),
            client_urls: self.config.advertise_client_urls.clone(),
            city: self.config.city.clone(),
            dc: self.config.dc.clone(),
        };
        let command = Command { kind: Some(command::Kind::MemberAttributes(attributes)) };
        loop {
            match self.propose(command.clone()).await {
                Ok(_) => {
                    tracing::info!(member = %self.config.name, "published member attributes");
                    return;
                }
                Err(status) => {
                    tracing::debug!(%status, "publishing member attributes, will retry");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Starts a new cluster. Only the first member of `--initial-cluster` does
    /// it, and only when pristine; the others learn the membership from it.
    /// (Doing it on every member would be safe — the membership is identical —
    /// but the losers of that race log errors.)
    pub async fn bootstrap(&self) -> Result<(), Status> {
        let first = self.config.initial_cluster.first().map(|(name, _)| name.as_str());
        if first != Some(self.config.name.as_str()) {
            return Ok(());
        }
        let initialized = self.raft.is_initialized().await.map_err(|e| Status::internal(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<NodeId, Member> = self.config.initial_members().into_iter().collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

impl StoreNode {
    /// Checks that this member's Raft group serves `group`. With one group it
    /// always does; with a group per unit, requests for another group will be
    /// routed from here.
    pub fn serves(&self, group: crate::placement::GroupId) -> Result<(), Status> {
        if group == crate::placement::GROUP_DEFAULT {
            Ok(())
        } else {
            Err(Status::unimplemented(format!(
                "fivefold: raft group {} is not served by this member",
                group.0
            )))
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.server_metrics().borrow().current_leader == Some(self.member_id)
    }

    /// Runs a leader-only call: here when this member leads, else on the
    /// leader through the peer service; retried when leadership moves.
    ///
    /// When the leader fails mid-call, the call is retried on the next leader
    /// only if `retry` says it may be: an idempotent call (a keep-alive, a
    /// read) can be; a change (a membership change) only if it never left
    /// this member.
    pub async fn on_leader<T, Here, HereFut, Remote, Fut>(
        &self,
        retry: Retry,
        here: Here,
        remote: Remote,
    ) -> Result<T, Status>
    where
        Here: Fn() -> HereFut,
        HereFut: std::future::Future<Output = Result<T, Status>>,
        Remote: Fn(PeerClient<PeerChannel>, Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            let (leader_id, leader) = self.leader(deadline).await?;
            let result = if leader_id == self.member_id {
                here().await
            } else {
                let url = leader.peer_urls.first().ok_or_else(|| Status::unavailable(NO_LEADER))?;
                // The server enforces the deadline it is sent; a paused peer
                // never answers, so it is enforced here too.
                let call = within(deadline, async { remote(self.peer(url).await?, deadline).await });
                let answer = if matches!(retry, Retry::Idempotent) {
                    // Safe to repeat: give a silent leader up once a successor is known.
                    tokio::select! {
                        biased;
                        answer = call => answer,
                        _ = self.successor_of(leader_id) => Err(Status::unavailable(NOT_LEADER)),
                    }
                } else {
                    call.await
                };
                match answer {
                    Err(status) if status.message() != NOT_LEADER && retry.allows(&status) => {
                        tracing::debug!(%status, leader = %leader, "leader call failed; trying the next leader");
                        Err(Status::unavailable(NOT_LEADER))
                    }
                    Err(status) if status.message() != NOT_LEADER && status.code() == Code::Unavailable => {
                        // It may have been applied: the outcome is unknown.
                        tracing::debug!(%status, leader = %leader, "leader call failed");
                        Err(Status::unavailable(REQUEST_TIMED_OUT))
                    }
                    other => other,
                }
            };
            match result {
                Err(status) if status.message() == NOT_LEADER => {
                    self.leadership_change(Some(leader_id), deadline).await;
                    if Instant::now() >= deadline {
                        return Err(Status::unavailable(REQUEST_TIMED_OUT));
                    }
                }
                other => return other,
            }
        }
    }

    /// A keep-alive, answered by the leader. An unknown lease gets TTL 0, as in etcd.
    pub async fn lease_renew(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        self.on_leader(
            Retry::Idempotent,
            || self.lease_renew_here(id),
            |mut client, deadline| async move {
                let mut request = tonic::Request::new(LeaseKeepAliveRequest { id });
                request.set_timeout(deadline.saturating_duration_since(Instant::now()));
                client.lease_renew(request).await.map(|r| r.into_inner())
            },
        )
        .await
    }

    /// Waits until this member has applied everything it knows committed, so
    /// that lease answers reflect every grant and revoke the cluster
    /// acknowledged (etcd does the same before lease operations).
    async fn apply_committed(&self) -> Result<(), Status> {
        let committed = self
            .raft
            .with_raft_state(|state| state.committed.map(|id| id.index))
            .await
            .map_err(|e| Status::unavailable(format!("etcdserver: server stopped: {e}")))?;
        match committed {
            Some(index) => self.wait_applied(index, Instant::now() + self.config.request_timeout).await,
            None => Ok(()),
        }
    }

    pub async fn lease_renew_here(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        if !self.is_leader() {
            return Err(Status::unavailable(NOT_LEADER));
        }
        self.apply_committed().await?;
        let ttl = self.lessor.renew(id).unwrap_or(0);
        Ok(LeaseKeepAliveResponse { header: Some(self.header(self.mvcc.revision())), id, ttl })
    }

    /// A lease's remaining and granted TTL (and keys), answered by the leader.
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        self.on_leader(
            Retry::Idempotent,
            || self.lease_time_to_live_here(&req),
            |mut client, deadline| async move {
                let mut request = tonic::Request::new(req);
                request.set_timeout(deadline.saturating_duration_since(Instant::now()));
                client.lease_time_to_live(request).await.map(|r| r.into_inner())
            },
        )
        .await
    }

    pub async fn lease_time_to_live_here(
        &self,
        req: &LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        if !self.is_leader() {
            return Err(Status::unavailable(NOT_LEADER));
        }
        self.apply_committed().await?;
        let header = Some(self.header(self.mvcc.revision()));
        let (mvcc, id) = (self.mvcc.clone(), req.id);
        // On the pool: a read may wait for an apply and commit it first.
        let stored = on_pool(move || mvcc.lease(id))
            .await?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        let (Some(remaining), Some(record)) = (self.lessor.remaining(req.id), stored) else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(LeaseTimeToLiveResponse { header, id: req.id, ttl: -1, ..Default::default() });
        };
        Ok(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: remaining.as_secs() as i64,
            granted_ttl: record.granted_ttl_seconds,
            keys: if req.keys { record.keys } else { Vec::new() },
        })
    }

    /// Commits applies left open in the engine once their transaction is
    /// `MvccStore::apply_open_max` old and nothing read or applied meanwhile
    /// (see `mvcc::ApplyBatch::finish`); checked once per that interval, so
    /// a transaction stays open at most about twice it. Runs until the
    /// member stops.
    pub async fn run_apply_commits(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.mvcc.apply_open_max());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !self.mvcc.is_apply_open() {
                continue;
            }
            let mvcc = self.mvcc.clone();
            match on_pool(move || mvcc.commit_stale_apply()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "committing applied writes"),
                Err(status) => tracing::warn!(%status, "committing applied writes"),
            }
        }
    }

    /// The leader's lease clock: on becoming leader every lease gets a full TTL
    /// plus an election timeout; while leader, expired leases are revoked
    /// through the log. Runs until the member stops.
    pub async fn run_lease_expiry(self: Arc<Self>) {
        let mut was_leader = false;
        let mut ticker = tokio::time::interval(crate::lessor::LEASE_CHECK_INTERVAL);
        loop {
            ticker.tick().await;
            let leader = self.is_leader();
            if leader && !was_leader {
                self.lessor.promote(self.config.election_timeout);
                tracing::info!("became leader: lease deadlines extended by the election timeout");
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            let expired = self
                .lessor
                .take_expired(crate::lessor::LEASE_REVOKES_PER_CHECK_MAX, self.config.request_timeout);
            for id in expired {
                let node = self.clone();
                tokio::spawn(async move {
                    let revoke = etcd_proto::etcdserverpb::LeaseRevokeRequest { id };
                    let command = Command { kind: Some(command::Kind::LeaseRevoke(revoke)) };
                    match node.propose(command).await {
                        Ok(_) => tracing::info!(lease = id, "lease expired and revoked"),
                        Err(status) => tracing::debug!(lease = id, %status, "revoking an expired lease"),
                    }
                });
            }
        }
    }
}

impl StoreNode {
    /// etcd's quota rule: a write that adds data is refused once the backend
    /// would pass `--quota-backend-bytes`, and this member raises a NOSPACE
    /// alarm (replicated, so every member refuses such writes until an
    /// operator frees space and disarms it).
    pub async fn check_quota(&self, request_bytes: usize) -> Result<(), Status> {
        let size = self.mvcc.db_size();
        if size + request_bytes as u64 <= self.config.quota_backend_bytes {
            return Ok(());
        }
        let mvcc = self.mvcc.clone();
        let alarms = on_pool(move || mvcc.alarms()).await?;
        let already = alarms.map_err(|e| Status::internal(format!("etcdserver: {e}")))?.iter().any(|a| {
            a.member_id == self.member_id && a.alarm == etcd_proto::etcdserverpb::AlarmType::Nospace as i32
        });
        if !already {
            tracing::warn!(
                size,
                quota = self.config.quota_backend_bytes,
                "backend quota exceeded: raising NOSPACE"
            );
            let alarm = etcd_proto::etcdserverpb::AlarmRequest {
                action: etcd_proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
                member_id: self.member_id,
                alarm: etcd_proto::etcdserverpb::AlarmType::Nospace as i32,
            };
            self.propose(Command { kind: Some(command::Kind::Alarm(alarm)) }).await?;
        }
        Err(status_of(&MvccError::NoSpace))
    }
}

/// When a leader-only call may be sent again after the leader failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Repeating it is harmless.
    Idempotent,
    /// Only if it never reached the leader.
    IfNeverSent,
}

impl Retry {
    fn allows(self, status: &Status) -> bool {
        match self {
            Retry::Idempotent => status.code() == Code::Unavailable,
            Retry::IfNeverSent => never_sent(status),
        }
    }
}

/// Runs blocking engine work on the blocking pool, off the async workers
/// (it may scan, or wait for a defragmentation holding the database).
pub(crate) async fn on_pool<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))
}

/// `call`'s outcome, or etcd's "request timed out" once `deadline` passes.
pub(crate) async fn within<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| Err(Status::unavailable(REQUEST_TIMED_OUT)))
}

/// Whether a failed peer call never reached the peer (the connection could not
/// be made), so that retrying it elsewhere cannot apply it twice.
pub(crate) fn never_sent(status: &Status) -> bool {
    use std::error::Error as _;
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source = status.source();
    while let Some(error) = source {
        if error.to_string().contains("tcp connect error") || error.to_string().contains("Connection refused")
        {
            return true;
        }
        source = error.source();
    }
    status.message().contains("tcp connect error")
}

/// An applied command's response, or the etcd error it carries.
fn response_or_error(response: CommandResponse) -> Result<CommandResponse, Status> {
    match &response.kind {
        Some(command_response::Kind::Error(e)) => Err(Status::new(Code::from_i32(e.code), e.message.clone())),
        _ => Ok(response),
    }
}
