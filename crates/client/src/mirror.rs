//! A watched, local copy of a key prefix.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Changes buffered per subscriber; one that falls further behind is told so
/// ([`broadcast::error::RecvError::Lagged`]) and takes a new snapshot.
pub const CHANGES_BUFFER: usize = 4096;
/// How often the mirror checks that its watch keeps up with the store.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(2);
/// How long the mirror may stay behind the store (or the store not answer)
/// before it watches again, possibly through another member.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before watching or listing again after an error.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("listing {prefix:?} failed: {source}")]
    List { prefix: String, source: etcd_client::Error },
    #[error("the mirror of {prefix:?} stopped")]
    Stopped { prefix: String },
}

/// One mirrored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// Every key under the prefix at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    pub entries: BTreeMap<String, Entry>,
}

/// What happened to the mirrored prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The whole prefix was listed again (start, compaction, broken watch):
    /// forget what you knew and take this.
    Reset(Arc<Snapshot>),
    Put {
        key: String,
        entry: Entry,
    },
    Delete {
        key: String,
        revision: i64,
    },
}

/// A local copy of every key under a prefix; see the crate docs. Dropping it
/// stops its watch.
pub struct Mirror {
    prefix: String,
    state: Arc<RwLock<Snapshot>>,
    changes: broadcast::Sender<Change>,
    revision: watch::Receiver<i64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn list(client: &mut Client, prefix: &str) -> Result<Snapshot, etcd_client::Error> {
    let response = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let entries = response
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            (key, Entry { value: kv.value().to_vec(), mod_revision: kv.mod_revision() })
        })
        .collect();
    Ok(Snapshot { revision, entries })
}

impl Mirror {
    /// Lists `prefix` and starts watching it; returns once the first list is in.
    pub async fn start(mut client: Client, prefix: &str) -> Result<Mirror, MirrorError> {
        let first = list(&mut client, prefix)
            .await
            .map_err(|source| MirrorError::List { prefix: prefix.to_string(), source })?;
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let (revision_tx, revision) = watch::channel(first.revision);
        let state = Arc::new(RwLock::new(first));
        let task = tokio::spawn(run(client, prefix.to_string(), state.clone(), changes.clone(), revision_tx));
        Ok(Mirror { prefix: prefix.to_string(), state, changes, revision, task })
    }

    /// The mirrored keys now.
    pub fn snapshot(&self) -> Snapshot {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The keys now and every change after them, with nothing missed in between.
    pub fn subscribe(&self) -> (Snapshot, broadcast::Receiver<Change>) {
        // Changes are sent while the state's write lock is held, so taking the
        // read lock orders this subscription against them.
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let receiver = self.changes.subscribe();
        (state.clone(), receiver)
    }

    /// The store revision the mirror has caught up with.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the mirror has caught up with store revision `revision`.
    pub async fn wait_for(&self, revision: i64) -> Result<(), MirrorError> {
        let mut seen = self.revision.clone();
        seen.wait_for(|r| *r >= revision)
            .await
            .map(|_| ())
            .map_err(|_| MirrorError::Stopped { prefix: self.prefix.clone() })
    }

    /// A notification of every revision the mirror reaches.
    pub fn revisions(&self) -> watch::Receiver<i64> {
        self.revision.clone()
    }
}

async fn run(
    mut client: Client,
    prefix: String,
    state: Arc<RwLock<Snapshot>>,
    changes: broadcast::Sender<Change>,
    revision: watch::Sender<i64>,
) {
    let mut relist = false;
    loop {
        if relist {
            match list(&mut client, &prefix).await {
                Ok(snapshot) => {
                    let mut current = state.write().unwrap_or_else(|p| p.into_inner());
                    *current = snapshot.clone();
                    let _ = changes.send(Change::Reset(Arc::new(snapshot)));
                    revision.send_replace(current.revision);
                    relist = false;
                }
                Err(error) => {
                    tracing::warn!(%prefix, %error, "listing for the mirror failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
        }
        let from = state.read().unwrap_or_else(|p| p.into_inner()).revision + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify();
        let stream = match client.watch(prefix.as_str(), Some(options)).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%prefix, %error, "watch for the mirror failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let (mut requests, mut responses) = stream.split();
        let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
        liveness.tick().await;
        // Since when, and behind which store revision, the mirror has been.
        let mut behind: Option<(tokio::time::Instant, i64)> = None;
        loop {
            let response = tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(response)) => response,
                    Ok(None) | Err(_) => break,
                },
                _ = liveness.tick() => {
                    // A member cut off from the others keeps a watch open but
                    // applies nothing: compare with the store's revision (a
                    // linearizable read), ask for progress, and watch again
                    // (possibly through another member) if the mirror does
                    // not catch up.
                    let count = GetOptions::new().with_prefix().with_count_only();
                    let store = tokio::time::timeout(LIVENESS_TIMEOUT, client.get(prefix.as_str(), Some(count))).await;
                    let Ok(Ok(store)) = store else {
                        tracing::warn!(%prefix, "the store did not answer a liveness read; watching again");
                        break;
                    };
                    let store_revision = store.header().map_or(0, |h| h.revision());
                    let mirrored = state.read().unwrap_or_else(|p| p.into_inner()).revision;
                    // Caught up with the revision the store had when the mirror
                    // was first seen behind? (The store keeps moving under
                    // load; only a target that is never reached counts.)
                    if let Some((since, target)) = behind {
                        if mirrored >= target {
                            behind = None;
                        } else if since.elapsed() >= LIVENESS_TIMEOUT {
                            tracing::warn!(%prefix, mirrored, target, "the watch fell behind the store; watching again");
                            break;
                        }
                    }
                    if mirrored < store_revision {
                        let _ = requests.request_progress().await;
                        behind.get_or_insert((tokio::time::Instant::now(), store_revision));
                    }
                    continue;
                }
            };
            if response.compact_revision() != 0 || response.canceled() {
                // Missed history: start over from a fresh list.
                relist = true;
                break;
            }
            let header_revision = response.header().map_or(0, |h| h.revision());
            let mut current = state.write().unwrap_or_else(|p| p.into_inner());
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).to_string();
                let change = match event.event_type() {
                    EventType::Put => {
                        let entry = Entry { value: kv.value().to_vec(), mod_revision: kv.mod_revision() };
                        current.entries.insert(key.clone(), entry.clone());
                        Change::Put { key, entry }
                    }
                    EventType::Delete => {
                        current.entries.remove(&key);
                        Change::Delete { key, revision: kv.mod_revision() }
                    }
                };
                current.revision = current.revision.max(kv.mod_revision());
                let _ = changes.send(change);
            }
            // A progress notification (no events) says nothing under the prefix
            // changed up to its header revision. An event response's header may
            // run ahead of its events when a catch-up is split over several
            // responses, so only the events count there.
            if response.events().is_empty() && !response.created() {
                current.revision = current.revision.max(header_revision);
            }
            let now = current.revision;
            drop(current);
            revision.send_replace(now);
        }
        if !relist {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}
