//! Holding a leader's new writes and read indexes while it hands leadership
//! over (see `leadership`).
//!
//! Every entry a leader replicates, and every read-index round (a heartbeat
//! to a quorum), renews its followers' leader lease; openraft followers refuse
//! to vote while that lease runs. Under steady load the lease never lapses and
//! the transfer target cannot win. So the leader closes this gate: proposals
//! and read indexes wait at it, the target wins, and when the gate opens the
//! waiting calls find they no longer lead and go to the new leader (nothing
//! was proposed, so nothing can apply twice). The gate opens by itself at its
//! deadline, so a transfer that dies leaves no member stuck.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

/// Closed (until an instant) while leadership is being handed over.
#[derive(Clone, Debug)]
pub struct TransferGate {
    closed_until: Arc<watch::Sender<Option<Instant>>>,
}

impl Default for TransferGate {
    fn default() -> Self {
        TransferGate { closed_until: Arc::new(watch::Sender::new(None)) }
    }
}

impl TransferGate {
    /// Closes the gate until `until` at the latest.
    pub fn close_until(&self, until: Instant) {
        self.closed_until.send_replace(Some(until));
    }

    /// Opens the gate and lets every waiting call through.
    pub fn open(&self) {
        self.closed_until.send_replace(None);
    }

    /// Whether calls go through now.
    pub fn is_open(&self) -> bool {
        self.closed_until.borrow().is_none_or(|until| Instant::now() >= until)
    }

    /// Returns once the gate is open (at once when it is).
    pub async fn passed(&self) {
        let mut changes = self.closed_until.subscribe();
        loop {
            let until = *changes.borrow_and_update();
            match until {
                Some(until) if Instant::now() < until => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_lets_calls_through_at_once() {
        let gate = TransferGate::default();
        assert!(gate.is_open());
        let started = Instant::now();
        gate.passed().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_holds_calls_until_opened() {
        let gate = TransferGate::default();
        gate.close_until(Instant::now() + Duration::from_secs(10));
        assert!(!gate.is_open());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let started = Instant::now();
                gate.passed().await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!waiting.is_finished(), "held while closed");
        gate.open();
        let held = waiting.await.unwrap();
        assert_eq!(held, Duration::from_secs(2), "released when opened, not at the deadline");
        assert!(gate.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_opens_by_itself_at_its_deadline() {
        let gate = TransferGate::default();
        gate.close_until(Instant::now() + Duration::from_secs(3));
        let started = Instant::now();
        gate.passed().await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(gate.is_open());
    }
}
