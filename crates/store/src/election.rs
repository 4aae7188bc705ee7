//! Elections with a pre-vote, on top of openraft 0.9 (which has none).
//!
//! openraft's own election timer is switched off. This module's loop watches
//! how long a voter has heard nothing from a leader; past its randomised
//! timeout it first asks the other voters whether they would vote for it
//! (`Peer.PreVote`): only members that have not heard from a leader for a
//! whole election timeout themselves, and whose log is not ahead of the
//! candidate's, say yes. Only with a majority does it start a real election.
//! So a member cut off from the others never raises its term, and when it
//! comes back it cannot unseat a healthy leader — the disruption pre-vote and
//! check-quorum exist to prevent.

use std::sync::Arc;
use std::time::Duration;

use etcd_proto::fivefoldpb::{PreVoteRequest, PreVoteResponse};
use tokio::time::Instant;

use crate::node::StoreNode;
use crate::types::NodeId;

/// A member waits between one and this many election timeouts of silence
/// before it campaigns (randomised, so candidates rarely collide).
const TIMEOUT_SPREAD: f64 = 1.5;

/// A small deterministic generator for the election jitter.
struct Jitter(u64);

impl Jitter {
    fn next_fraction(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl StoreNode {
    async fn silence(&self) -> Option<Duration> {
        let last = self.raft.with_raft_state(|state| state.vote_last_modified()).await.ok()?;
        Some(last.map_or(Duration::MAX, |at| Instant::now().saturating_duration_since(at)))
    }

    fn is_voter(&self) -> bool {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().any(|id| id == self.member_id)
    }

    /// The election loop; runs until the member stops.
    pub async fn run_elections(self: Arc<Self>) {
        self.raft.runtime_config().elect(false);
        let timeout = self.config.election_timeout;
        let mut jitter = Jitter(self.member_id | 1);
        let mut patience = timeout.mul_f64(1.0 + (TIMEOUT_SPREAD - 1.0) * jitter.next_fraction());
        let mut not_before = Instant::now();
        let mut ticker = tokio::time::interval(self.config.heartbeat_interval / 2);
        loop {
            ticker.tick().await;
            if self.is_leader() || !self.is_voter() || self.elections_held() || Instant::now() < not_before {
                continue;
            }
            let Some(silence) = self.silence().await else { return };
            if silence < patience {
                continue;
            }
            if self.pre_vote().await {
                tracing::info!(silence = ?silence, "pre-vote won; campaigning");
                let _ = self.raft.trigger().elect().await;
            }
            patience = timeout.mul_f64(1.0 + (TIMEOUT_SPREAD - 1.0) * jitter.next_fraction());
            not_before = Instant::now() + patience;
        }
    }

    /// Asks every other voter; true once a majority (this member included) said yes.
    async fn pre_vote(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        let last = self.raft.data_metrics().borrow().last_log;
        let request = PreVoteRequest {
            term: metrics.current_term,
            last_log_term: last.map_or(0, |id| id.leader_id.term),
            last_log_index: last.map_or(0, |id| id.index),
        };
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let asks = voters.iter().filter(|id| **id != self.member_id).filter_map(|id| {
            let url = membership.get_node(id)?.peer_urls.first()?.clone();
            Some(async move {
                let Ok(mut client) = self.peer(&url).await else { return false };
                let mut call = tonic::Request::new(request);
                call.set_timeout(self.config.election_timeout / 2);
                client.pre_vote(call).await.is_ok_and(|reply| reply.into_inner().granted)
            })
        });
        // Decide as soon as the answers settle it: a voter behind a cut link
        // only answers with its call's timeout, and waiting for it would add
        // that to every election after a city is lost.
        let mut pending: futures::stream::FuturesUnordered<_> = asks.collect();
        let (mut granted, mut refused) = (1usize, 0usize);
        while let Some(answer) = futures::StreamExt::next(&mut pending).await {
            if answer {
                granted += 1;
            } else {
                refused += 1;
            }
            if granted * 2 > voters.len() {
                return true;
            }
            if refused * 2 >= voters.len() {
                return false;
            }
        }
        granted * 2 > voters.len()
    }

    /// Answers a pre-vote: yes only if this member has not heard from a leader
    /// for a whole election timeout and the candidate's log is not behind.
    pub async fn answer_pre_vote(&self, request: &PreVoteRequest) -> PreVoteResponse {
        let no = PreVoteResponse { granted: false };
        if self.is_leader() {
            return no;
        }
        let Some(silence) = self.silence().await else { return no };
        if silence < self.config.election_timeout {
            return no;
        }
        let metrics = self.raft.metrics().borrow().clone();
        let last = self.raft.data_metrics().borrow().last_log;
        let mine = last.map_or((0, 0), |id| (id.leader_id.term, id.index));
        let granted =
            request.term >= metrics.current_term && (request.last_log_term, request.last_log_index) >= mine;
        PreVoteResponse { granted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let mut jitter = Jitter(42);
        let draws: Vec<f64> = (0..1000).map(|_| jitter.next_fraction()).collect();
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(draws.iter().any(|f| *f < 0.1) && draws.iter().any(|f| *f > 0.9));
    }
}
