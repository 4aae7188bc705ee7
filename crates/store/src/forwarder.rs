//! Forwarding a follower's writes to the leader, batched.
//!
//! A follower does not propose: it sends client writes to the leader. One
//! call per write would cost both members a round of messages per put;
//! instead every write waiting when a forward starts goes in one
//! `CommandBatch`, which the leader proposes as one log entry (the commands
//! commit or fail together), and each caller gets its own response back. The
//! busier the follower, the bigger the batch, as with the leader's proposer.
//!
//! A batch travels on a raft stream (`raft_stream::METHOD_PROPOSE`) taken
//! from a small pool of connections to the leader, one batch in flight on
//! each; a leader that refuses streams, or does not know the method, gets
//! `Peer.Propose` over gRPC for `STREAM_RETRY_AFTER`. Only an attempt that
//! provably sent nothing falls back or answers "not the leader"; any other
//! failure leaves the outcome unknown.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use etcd_proto::fivefoldpb::{Command, CommandResponse, ProposeRequest};
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use crate::network::{PEER_CONNECT_TIMEOUT, STREAM_RETRY_AFTER};
use crate::node::{never_sent, within, StoreNode, LEADER_CHANGED, NOT_LEADER, REQUEST_TIMED_OUT};
use crate::proposer::{batch_of, responses_of, stopped, BATCH_BYTES_MAX, BATCH_COMMANDS_MAX};
use crate::raft_stream::{RaftStream, StreamError, METHOD_PROPOSE, UNKNOWN_METHOD};
use crate::types::{Member, NodeId};

/// Writes waiting to be forwarded, at most; callers wait beyond that.
pub const FORWARDS_QUEUED_MAX: usize = 16_384;
/// Forward RPCs in flight at once, at most.
pub const FORWARDS_IN_FLIGHT_MAX: usize = 8;
/// Heartbeat intervals a replaced leader gets to answer forwarded writes
/// with "not the leader" (it held them during a transfer) before they are
/// reported as "leader changed": room for a busy machine, short next to an
/// election.
const REPLACED_LEADER_GRACE_HEARTBEATS: u32 = 3;

type Reply = oneshot::Sender<Result<CommandResponse, Status>>;

/// One write on its way to the leader.
pub struct Forward {
    leader_id: NodeId,
    leader: Member,
    command: Command,
    deadline: Instant,
    reply: Reply,
}

pub type ForwardQueue = mpsc::Receiver<Forward>;

pub fn queue() -> (mpsc::Sender<Forward>, ForwardQueue) {
    mpsc::channel(FORWARDS_QUEUED_MAX)
}

impl StoreNode {
    /// Sends `command` to the leader `leader_id` with whatever else is
    /// waiting, and waits for its response until `deadline`.
    pub(crate) async fn forward(
        &self,
        leader_id: NodeId,
        leader: Member,
        command: Command,
        deadline: Instant,
    ) -> Result<CommandResponse, Status> {
        let (reply, response) = oneshot::channel();
        let forward = Forward { leader_id, leader, command, deadline, reply };
        self.forwards.send(forward).await.map_err(|_| stopped())?;
        within(deadline, async { response.await.map_err(|_| stopped())? }).await
    }

    /// Takes the waiting writes, one batch per leader, one RPC per batch.
    /// Runs until the member stops.
    pub async fn run_forwards(self: Arc<Self>) {
        let Some(mut queue) = self.forward_queue.lock().expect("forward queue lock").take() else { return };
        let in_flight = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT_MAX));
        let mut waiting = Vec::new();
        while queue.recv_many(&mut waiting, BATCH_COMMANDS_MAX).await > 0 {
            for batch in batches(std::mem::take(&mut waiting)) {
                let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
                let node = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    node.forward_batch(batch).await;
                });
            }
        }
    }

    async fn forward_batch(&self, batch: Vec<Forward>) {
        let deadline = batch.iter().map(|f| f.deadline).max().expect("a batch is not empty");
        let (leader_id, leader) = (batch[0].leader_id, batch[0].leader.clone());
        let (commands, replies): (Vec<Command>, Vec<Reply>) =
            batch.into_iter().filter(|f| !f.reply.is_closed()).map(|f| (f.command, f.reply)).unzip();
        if commands.is_empty() {
            return;
        }
        match self.propose_at(leader_id, &leader, commands, deadline).await {
            Ok(responses) => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
            }
            Err(status) => {
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }

    /// One forward of `commands` to the leader; their responses in order.
    async fn propose_at(
        &self,
        leader_id: NodeId,
        leader: &Member,
        commands: Vec<Command>,
        deadline: Instant,
    ) -> Result<Vec<CommandResponse>, Status> {
        let count = commands.len();
        let url = leader.peer_urls.first().ok_or_else(|| Status::unavailable(crate::node::NO_LEADER))?;
        // The same fault rules as every peer message (tests only).
        self.pass_faults(url).await?;
        // A leader that went silent is given up once a successor is known, as
        // etcd does: the outcome is unknown ("leader changed"), but the client
        // learns it now instead of at its deadline and can retry elsewhere.
        // Leadership moved before sending: nothing was sent, look again.
        if self.raft.metrics().borrow().current_leader != Some(leader_id) {
            return Err(Status::unavailable(NOT_LEADER));
        }
        let batch = batch_of(commands);
        let call = tokio::time::timeout_at(deadline, self.send_forward(url, batch, deadline));
        let grace = self.config.heartbeat_interval * REPLACED_LEADER_GRACE_HEARTBEATS;
        tokio::pin!(call);
        let answer = tokio::select! {
            biased;
            answer = &mut call => answer,
            _ = self.successor_of(leader_id) => {
                // A leader that handed leadership over answers the writes it
                // held with "not the leader" as soon as its successor leads
                // (see `transfer_gate`): safe to send again. One that died
                // never answers.
                match tokio::time::timeout(grace, &mut call).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        tracing::debug!(leader = %leader, "the leader was replaced while forwarded writes were in flight");
                        return Err(Status::unavailable(LEADER_CHANGED));
                    }
                }
            }
        };
        let Ok(answer) = answer else { return Err(Status::unavailable(REQUEST_TIMED_OUT)) };
        let response = match answer {
            Ok(response) => response,
            Err(status) if status.message() == NOT_LEADER || status.message() == LEADER_CHANGED => {
                return Err(status)
            }
            // The leader could not be reached at all: nothing was sent, so the
            // writes can go to whoever leads next.
            Err(status) if never_sent(&status) => {
                tracing::debug!(%status, leader = %leader, "leader unreachable; waiting for the next one");
                return Err(Status::unavailable(NOT_LEADER));
            }
            // The leader may or may not have the writes: the outcome is unknown.
            Err(status) => {
                tracing::debug!(%status, leader = %leader, "forwarding writes failed");
                return Err(Status::unavailable(REQUEST_TIMED_OUT));
            }
        };
        responses_of(response, count).ok_or_else(|| {
            Status::internal("etcdserver: the leader's answer does not match the forwarded batch")
        })
    }

    /// Sends one batch to the leader at `url` and returns its response:
    /// over a pooled raft stream, or over `Peer.Propose` when the leader
    /// does not take them.
    async fn send_forward(
        &self,
        url: &str,
        batch: Command,
        deadline: Instant,
    ) -> Result<CommandResponse, Status> {
        if self.forward_streams.usable(url) {
            if let Some(answer) = self.forward_on_stream(url, &batch).await {
                return answer;
            }
        }
        let mut client = self.peer_unchecked(url)?;
        self.metrics.forwards_on_grpc.fetch_add(1, Ordering::Relaxed);
        let mut request = tonic::Request::new(ProposeRequest { command: Some(batch) });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        client
            .propose(request)
            .await?
            .into_inner()
            .response
            .ok_or_else(|| Status::internal("etcdserver: leader sent an empty response"))
    }

    /// One batch over a raft stream. `None`: the leader does not take
    /// forwards on streams, nothing was proposed; use gRPC. A stream is put
    /// back for the next batch only after a whole exchange: one cut short
    /// (a timeout, a dropped future) is dropped with the call.
    async fn forward_on_stream(&self, url: &str, batch: &Command) -> Option<Result<CommandResponse, Status>> {
        let mut stream = match self.forward_streams.idle(url) {
            Some(stream) => stream,
            None => {
                // Bounded as gRPC's connects are: a leader whose host drops
                // connection attempts was sent nothing.
                let connected = match crate::network::peer_addr(url) {
                    Ok(addr) => tokio::time::timeout(PEER_CONNECT_TIMEOUT, RaftStream::connect(addr))
                        .await
                        .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut).into())),
                    Err(e) => Err(e.into()),
                };
                match connected {
                    Ok(stream) => stream,
                    Err(StreamError::Refused) => {
                        self.forward_streams.refused(url);
                        return None;
                    }
                    // Not connected: nothing was sent.
                    Err(e) => {
                        tracing::debug!(error = %e, leader = %url, "leader unreachable; waiting for the next one");
                        return Some(Err(Status::unavailable(NOT_LEADER)));
                    }
                }
            }
        };
        self.metrics.forwards_on_streams.fetch_add(1, Ordering::Relaxed);
        match stream.call(METHOD_PROPOSE, &batch.encode_to_vec()).await {
            Ok(reply) => {
                self.forward_streams.put_back(url, stream);
                Some(CommandResponse::decode(reply.as_slice()).map_err(|e| {
                    Status::internal(format!("etcdserver: the leader's answer does not decode: {e}"))
                }))
            }
            Err(StreamError::Status { code, message }) => {
                self.forward_streams.put_back(url, stream);
                Some(Err(Status::new(tonic::Code::from_i32(code), message)))
            }
            // A member that knows streams but not forwards on them.
            Err(StreamError::Remote(message)) if message.starts_with(UNKNOWN_METHOD) => {
                self.forward_streams.refused(url);
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, leader = %url, "forwarding writes failed");
                Some(Err(Status::unavailable(REQUEST_TIMED_OUT)))
            }
        }
    }
}

/// Forward streams by leader URL: the idle ones, and when the leader last
/// refused them.
#[derive(Default)]
pub struct ForwardStreams {
    by_leader: Mutex<HashMap<String, StreamPool>>,
}

#[derive(Default)]
struct StreamPool {
    idle: Vec<RaftStream>,
    refused_at: Option<Instant>,
}

impl ForwardStreams {
    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, StreamPool>> {
        self.by_leader.lock().expect("forward stream lock")
    }

    /// Whether forwards to `url` should try a stream (not refused lately).
    fn usable(&self, url: &str) -> bool {
        self.pools()
            .get(url)
            .and_then(|pool| pool.refused_at)
            .is_none_or(|at| at.elapsed() >= STREAM_RETRY_AFTER)
    }

    fn refused(&self, url: &str) {
        tracing::info!(leader = %url, "leader does not take forwarded writes on raft streams; using gRPC");
        let mut pools = self.pools();
        let pool = pools.entry(url.to_string()).or_default();
        pool.idle.clear();
        pool.refused_at = Some(Instant::now());
    }

    /// An idle stream to `url` whose peer has not hung up meanwhile.
    fn idle(&self, url: &str) -> Option<RaftStream> {
        let mut pools = self.pools();
        let idle = &mut pools.get_mut(url)?.idle;
        std::iter::from_fn(|| idle.pop()).find_map(|mut stream| (!stream.is_stale()).then_some(stream))
    }

    fn put_back(&self, url: &str, stream: RaftStream) {
        let mut pools = self.pools();
        let idle = &mut pools.entry(url.to_string()).or_default().idle;
        if idle.len() < FORWARDS_IN_FLIGHT_MAX {
            idle.push(stream);
        }
    }
}

/// Splits waiting writes into batches: one leader each (leadership may have
/// moved between them), within the proposer's size limits.
fn batches(waiting: Vec<Forward>) -> Vec<Vec<Forward>> {
    let mut by_leader: BTreeMap<NodeId, Vec<Forward>> = BTreeMap::new();
    for forward in waiting {
        by_leader.entry(forward.leader_id).or_default().push(forward);
    }
    let mut out = Vec::new();
    for (_, forwards) in by_leader {
        let mut batch: Vec<Forward> = Vec::new();
        let mut bytes = 0;
        for forward in forwards {
            let size = forward.command.encoded_len();
            if !batch.is_empty() && (bytes + size > BATCH_BYTES_MAX || batch.len() >= BATCH_COMMANDS_MAX) {
                out.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            batch.push(forward);
        }
        out.push(batch);
    }
    out
}
