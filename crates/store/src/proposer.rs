//! Proposal batching on the leader: concurrent writes share one log entry.
//!
//! openraft 0.9 appends each proposal with its own fsync and waits for it
//! before taking the next, so without batching a leader commits one write per
//! fsync. The proposer takes every write waiting for it, wraps them in one
//! `CommandBatch` entry (applied command by command, each with its own
//! revision), and hands out each command's response. While a batch is in
//! flight the next one fills up: the busier the leader, the bigger the batch.
//! A proposal may carry several commands (a follower's forwarded batch): they
//! go into one entry together and share its fate.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use etcd_proto::fivefoldpb::{command, command_response, Command, CommandBatch, CommandResponse};
use openraft::error::ClientWriteError;
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

use crate::metrics::StoreMetrics;
use crate::node::{LEADER_CHANGED, NOT_LEADER};
use crate::transfer_gate::TransferGate;
use crate::types::{Raft, Request};

/// Commands in one batch, at most.
pub const BATCH_COMMANDS_MAX: usize = 1_024;
/// Encoded bytes of one batch, at most (a single larger command goes alone).
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Batches handed to Raft and not yet applied, at most. Two keep the log
/// busy (one batch replicates while the next fills) and no more: openraft
/// sends a follower one AppendEntries at a time, which carries every entry
/// appended meanwhile, so a third batch would only split the same writes
/// into more entries (more appends, fsyncs and applies on the leader).
/// Measured with `fivefold bench put` on 3 members: 8 → 2 raised 100x10
/// from 6,631–8,224 to 8,680–9,906 puts/s and 1000x100 from 11,052–13,968
/// to 13,698–15,398, p99 down by a third (docs/BENCHMARKS.md).
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Proposals waiting for a batch, at most; callers wait beyond that.
pub const PROPOSALS_QUEUED_MAX: usize = 16_384;

type Reply = oneshot::Sender<Result<Vec<CommandResponse>, Status>>;

struct Proposal {
    commands: Vec<Command>,
    reply: Reply,
}

/// Hands proposals to the batching task.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
    /// Batches handed to Raft and not yet answered (see [`BATCHES_IN_FLIGHT_MAX`]).
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").finish_non_exhaustive()
    }
}

pub(crate) fn stopped() -> Status {
    Status::unavailable("etcdserver: server stopped")
}

impl Proposer {
    /// Starts the batching task; it ends when every `Proposer` is dropped.
    /// No batch goes to Raft while `gate` is closed.
    pub fn start(raft: Raft, gate: TransferGate, metrics: Arc<StoreMetrics>) -> Proposer {
        let (queue, proposals) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        tokio::spawn(run(raft, proposals, in_flight.clone(), gate, metrics));
        Proposer { queue, in_flight }
    }

    /// Proposals waiting for a batch.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Returns once no batch is in flight. With the gate closed first, none
    /// starts after that: everything this leader proposed has been answered.
    pub async fn drained(&self) {
        let all = BATCHES_IN_FLIGHT_MAX as u32;
        // The semaphore is never closed; an error would only mean "nothing to wait for".
        let _all = self.in_flight.acquire_many(all).await;
    }

    /// Proposes one command on this member (the leader) and waits until it is
    /// applied. `NOT_LEADER` when this member does not lead.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, Status> {
        let mut responses = self.propose_all(vec![command]).await?;
        Ok(responses.pop().expect("one response per command"))
    }

    /// Proposes `commands` in one log entry (they commit or fail together)
    /// and returns their responses in order.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Result<Vec<CommandResponse>, Status> {
        assert!(!commands.is_empty(), "a proposal carries a command");
        assert!(
            commands.iter().all(|c| !matches!(c.kind, Some(command::Kind::Batch(_)))),
            "batches are not nested"
        );
        let count = commands.len();
        let (reply, response) = oneshot::channel();
        self.queue.send(Proposal { commands, reply }).await.map_err(|_| stopped())?;
        let responses = response.await.map_err(|_| stopped())??;
        assert_eq!(responses.len(), count, "one response per command");
        Ok(responses)
    }
}

async fn run(
    raft: Raft,
    mut proposals: mpsc::Receiver<Proposal>,
    in_flight: Arc<Semaphore>,
    gate: TransferGate,
    metrics: Arc<StoreMetrics>,
) {
    while let Some(first) = proposals.recv().await {
        // The gate is checked while holding a permit: `drained` after closing
        // the gate then covers every batch that got past it.
        let permit = loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
            if gate.is_open() {
                break permit;
            }
            drop(permit);
            gate.passed().await;
        };
        // Take everything that is waiting, within the limits. A proposal
        // whose caller gave up (its outcome is already "unknown") is dropped
        // rather than applied late.
        let encoded = |p: &Proposal| p.commands.iter().map(Message::encoded_len).sum::<usize>();
        let (mut bytes, mut count) = (0, 0);
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(proposal) = next.take() {
            if !proposal.reply.is_closed() {
                bytes += encoded(&proposal);
                count += proposal.commands.len();
                batch.push(proposal);
            }
            if count >= BATCH_COMMANDS_MAX || bytes >= BATCH_BYTES_MAX {
                break;
            }
            next = proposals.try_recv().ok();
        }
        if batch.is_empty() {
            continue;
        }
        let mut commands = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(batch.len());
        for proposal in batch {
            replies.push((proposal.commands.len(), proposal.reply));
            commands.extend(proposal.commands);
        }
        // "Not the leader" promises the caller that nothing was proposed, so
        // it may send the writes elsewhere: only said before submitting.
        // Server metrics: they change with leadership, not with every write.
        let leading = {
            let metrics = raft.server_metrics();
            let metrics = metrics.borrow();
            metrics.current_leader == Some(metrics.id)
        };
        if !leading {
            distribute(Err(Status::unavailable(NOT_LEADER)), replies);
            continue;
        }
        let receiver = match raft.client_write_ff(Request(batch_of(commands))).await {
            Ok(receiver) => receiver,
            Err(e) => {
                metrics.proposals_failed.fetch_add(1, Ordering::Relaxed);
                distribute(Err(Status::unavailable(format!("etcdserver: server stopped: {e}"))), replies);
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = match receiver.await {
                Err(_) => Err(stopped()),
                Ok(Ok(written)) => Ok(written.data.0),
                // Submitted while leading, then leadership moved: the entry may
                // have been appended and may still commit under the next
                // leader, so the outcome is unknown (sending it again could
                // apply it twice).
                Ok(Err(ClientWriteError::ForwardToLeader(_))) => Err(Status::unavailable(LEADER_CHANGED)),
                Ok(Err(ClientWriteError::ChangeMembershipError(e))) => {
                    Err(Status::failed_precondition(format!("etcdserver: {e}")))
                }
            };
            if outcome.is_err() {
                metrics.proposals_failed.fetch_add(1, Ordering::Relaxed);
            }
            distribute(outcome, replies);
        });
    }
}

/// Several commands as one: the command itself when alone, else a
/// `CommandBatch` (applied command by command).
pub fn batch_of(mut commands: Vec<Command>) -> Command {
    if commands.len() == 1 {
        commands.pop().expect("one command")
    } else {
        Command { kind: Some(command::Kind::Batch(CommandBatch { commands })) }
    }
}

/// The responses, in order, to what `batch_of` made of `count` commands;
/// `None` when `response` does not answer that many.
pub fn responses_of(response: CommandResponse, count: usize) -> Option<Vec<CommandResponse>> {
    let responses = match (count, response) {
        (1, single) => vec![single],
        (_, CommandResponse { kind: Some(command_response::Kind::Batch(batch)), .. }) => batch.responses,
        _ => return None,
    };
    (responses.len() == count).then_some(responses)
}

/// Gives each waiting caller its own responses (or the batch's error).
fn distribute(outcome: Result<CommandResponse, Status>, replies: Vec<(usize, Reply)>) {
    let response = match outcome {
        Err(status) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(status.clone()));
            }
            return;
        }
        Ok(response) => response,
    };
    let wanted: usize = replies.iter().map(|(count, _)| count).sum();
    let responses = responses_of(response, wanted).expect("one response per batched command");
    let mut responses = responses.into_iter();
    for (count, reply) in replies {
        let _ = reply.send(Ok(responses.by_ref().take(count).collect()));
    }
}
