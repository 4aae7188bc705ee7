//! Fault injection for tests without root: a member can be told to drop or
//! hold what it sends to chosen peers, which emulates partitions, a city cut
//! off, or WAN delay on one machine. Off unless the member runs with
//! `--experimental-fault-injection`; rules arrive through the peer service.
//!
//! Rules act on the sending side. A partition between X and Y is a drop rule
//! on X for Y and on Y for X; a round-trip delay d between them is a hold of d
//! on the side that sends requests (Raft's RPCs are request/response).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use etcd_proto::fivefoldpb::FaultRules;

/// Longest hold a rule may ask for.
pub const FAULT_DELAY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    drop: bool,
    delay: Duration,
}

#[derive(Debug, Default)]
pub struct PeerFaults {
    rules: RwLock<HashMap<String, Rule>>,
}

/// A message that a drop rule stopped.
#[derive(Debug, thiserror::Error)]
#[error("fault injection: messages to {0} are dropped")]
pub struct Dropped(pub String);

impl PeerFaults {
    /// Replaces every rule.
    pub fn set(&self, rules: &FaultRules) {
        let mut map = HashMap::new();
        for rule in &rules.rules {
            let delay = Duration::from_millis(u64::from(rule.delay_ms)).min(FAULT_DELAY_MAX);
            map.insert(rule.peer_url.clone(), Rule { drop: rule.drop, delay });
        }
        tracing::warn!(rules = map.len(), "fault injection rules replaced");
        *self.rules.write().expect("fault rules lock") = map;
    }

    /// Applies the rule for `url` to one message: holds it, or drops it.
    pub async fn pass(&self, url: &str) -> Result<(), Dropped> {
        let rule = self.rules.read().expect("fault rules lock").get(url).copied();
        let Some(rule) = rule else { return Ok(()) };
        if rule.drop {
            return Err(Dropped(url.to_string()));
        }
        if !rule.delay.is_zero() {
            tokio::time::sleep(rule.delay).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use etcd_proto::fivefoldpb::FaultRule;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rules_drop_and_hold() {
        let faults = PeerFaults::default();
        assert!(faults.pass("http://a").await.is_ok());
        faults.set(&FaultRules {
            rules: vec![
                FaultRule { peer_url: "http://a".into(), drop: true, delay_ms: 0 },
                FaultRule { peer_url: "http://b".into(), drop: false, delay_ms: 30 },
            ],
        });
        assert!(faults.pass("http://a").await.is_err());
        let started = tokio::time::Instant::now();
        assert!(faults.pass("http://b").await.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        faults.set(&FaultRules::default());
        assert!(faults.pass("http://a").await.is_ok());
    }
}
