//! Automatic compaction on the leader, as etcd's `--auto-compaction-mode`:
//! `periodic` keeps the history of the last retention period, `revision`
//! keeps the last N revisions.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_proto::etcdserverpb::CompactionRequest;
use etcd_proto::fivefoldpb::{command, Command};
use tokio::time::Instant;

use crate::config::AutoCompaction;
use crate::node::StoreNode;

/// How often revision-mode compaction runs (etcd's: every five minutes).
pub const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);
/// Samples of (time, revision) periodic mode keeps per retention period.
const PERIODIC_SAMPLES: u32 = 10;

impl StoreNode {
    /// Runs until the member stops; acts only while this member leads.
    pub async fn run_auto_compaction(self: Arc<Self>, mode: AutoCompaction) {
        let interval = match mode {
            AutoCompaction::Periodic { retention } => {
                (retention / PERIODIC_SAMPLES).max(Duration::from_millis(100))
            }
            AutoCompaction::Revision { .. } => REVISION_MODE_INTERVAL,
        };
        let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            let now = Instant::now();
            let current = self.mvcc.revision();
            samples.push_back((now, current));
            let target = match mode {
                AutoCompaction::Periodic { retention } => {
                    // The newest revision observed at least `retention` ago.
                    let mut target = None;
                    while samples.front().is_some_and(|(at, _)| now.duration_since(*at) >= retention) {
                        target = samples.pop_front().map(|(_, rev)| rev);
                    }
                    target
                }
                AutoCompaction::Revision { revisions } => Some(current - revisions),
            };
            let Some(target) = target else { continue };
            // On the pool: a read may wait for an apply and commit it first.
            let mvcc = self.mvcc.clone();
            let compacted = crate::node::on_pool(move || mvcc.revisions())
                .await
                .ok()
                .and_then(Result::ok)
                .map_or(i64::MAX, |(_, c)| c);
            if !self.is_leader() || target <= compacted.max(0) {
                continue;
            }
            let request = CompactionRequest { revision: target, physical: false };
            match self.propose(Command { kind: Some(command::Kind::Compaction(request)) }).await {
                Ok(_) => tracing::info!(revision = target, "auto-compacted"),
                Err(status) => tracing::debug!(revision = target, %status, "auto-compaction"),
            }
        }
    }
}
