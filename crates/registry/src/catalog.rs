//! The read side: every instance of every service, from one watch.
//!
//! One task turns the mirror's raw changes into parsed [`Change`]s, applies
//! them to the catalog's state and broadcasts each once, as an `Arc`: however
//! many subscribers there are, a change is parsed once and (for the HTTP API)
//! encoded once ([`Change::json_line`]).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use client::{Mirror, Snapshot};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::instance::parse_key;
use crate::{Instance, RegistryError, REGISTRY_PREFIX};

/// Changes buffered per subscriber before it is told it lagged.
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// A change to one service's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Every instance of the service now (the first message, and again after
    /// the store's history was compacted under the watch).
    Snapshot { revision: i64, instances: Vec<Instance> },
    /// Registered, or its record changed.
    Upsert { revision: i64, instance: Instance },
    /// Deregistered or expired.
    Remove { revision: i64, service: String, id: String },
}

/// One change as broadcast to every subscriber: parsed once, encoded once.
#[derive(Debug)]
pub struct Change {
    /// The service it concerns; `None` for a reset (the whole catalog was
    /// listed again).
    pub service: Option<String>,
    pub delta: Delta,
    line: OnceLock<Bytes>,
}

impl Change {
    fn new(service: Option<String>, delta: Delta) -> Change {
        Change { service, delta, line: OnceLock::new() }
    }

    /// The delta as one line of the HTTP watch stream, encoded on first use.
    pub fn json_line(&self, encode: impl FnOnce(&Delta) -> Vec<u8>) -> Bytes {
        self.line.get_or_init(|| Bytes::from(encode(&self.delta))).clone()
    }
}

#[derive(Default)]
struct State {
    revision: i64,
    /// By service, then id.
    instances: BTreeMap<String, BTreeMap<String, Instance>>,
}

impl State {
    fn of(&self, service: Option<&str>) -> Vec<Instance> {
        match service {
            Some(service) => {
                self.instances.get(service).map(|m| m.values().cloned().collect()).unwrap_or_default()
            }
            None => self.instances.values().flat_map(|m| m.values().cloned()).collect(),
        }
    }

    fn reset(&mut self, snapshot: &Snapshot) {
        self.instances.clear();
        for (key, entry) in &snapshot.entries {
            if let Some(instance) = parse(key, &entry.value) {
                self.instances
                    .entry(instance.service.clone())
                    .or_default()
                    .insert(instance.id.clone(), instance);
            }
        }
        self.revision = self.revision.max(snapshot.revision);
    }
}

/// The instance a record holds, if it is one: a key of the registry whose JSON
/// parses and names the same service and id as the key (the key is what a
/// delete names, so a record disagreeing with its key is refused).
fn parse(key: &str, value: &[u8]) -> Option<Instance> {
    let (service, id) = parse_key(key)?;
    match Instance::from_json(key, value) {
        Ok(instance) if instance.service == service && instance.id == id => Some(instance),
        Ok(instance) => {
            tracing::warn!(%key, service = %instance.service, id = %instance.id, "skipping a record that disagrees with its key");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "skipping a malformed registry record");
            None
        }
    }
}

/// Every instance of every service, kept current by one watch.
pub struct Catalog {
    state: Arc<RwLock<State>>,
    changes: broadcast::Sender<Arc<Change>>,
    revision: watch::Receiver<i64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Catalog {
    /// Lists the registry and starts watching it.
    pub async fn start(client: client::etcd_client::Client) -> Result<Catalog, RegistryError> {
        let mirror = Mirror::start(client, REGISTRY_PREFIX).await?;
        let (snapshot, receiver) = mirror.subscribe();
        let mut state = State::default();
        state.reset(&snapshot);
        let (revision_tx, revision) = watch::channel(state.revision);
        let state = Arc::new(RwLock::new(state));
        let (changes, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let task = tokio::spawn(follow(mirror, receiver, state.clone(), changes.clone(), revision_tx));
        Ok(Catalog { state, changes, revision, task })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every instance of `service` now.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.read().of(Some(service))
    }

    /// Every instance of every service now, by service.
    pub fn services(&self) -> BTreeMap<String, Vec<Instance>> {
        self.read().instances.iter().map(|(s, m)| (s.clone(), m.values().cloned().collect())).collect()
    }

    /// Every instance of `service` (or of every service with `None`) and the
    /// store revision they are as of, read together.
    pub fn snapshot(&self, service: Option<&str>) -> (i64, Vec<Instance>) {
        let state = self.read();
        (state.revision, state.of(service))
    }

    /// The store revision the catalog reflects.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the catalog reflects store revision `revision`.
    pub async fn wait_for(&self, revision: i64) -> Result<(), RegistryError> {
        let mut seen = self.revision.clone();
        seen.wait_for(|r| *r >= revision).await.map(|_| ()).map_err(|_| RegistryError::Closed)
    }

    /// Notified at each revision the catalog reaches.
    pub fn revisions(&self) -> watch::Receiver<i64> {
        self.revision.clone()
    }

    /// A subscription to `service` (or every service with `None`): a snapshot,
    /// then deltas.
    pub fn subscribe(&self, service: Option<&str>) -> Subscription {
        // Changes are broadcast under the state's write lock: holding the read
        // lock orders this subscription against them (nothing missed, nothing twice).
        let state = self.read();
        let receiver = self.changes.subscribe();
        let first = Delta::Snapshot { revision: state.revision, instances: state.of(service) };
        Subscription {
            service: service.map(str::to_string),
            pending: Some(Arc::new(Change::new(service.map(str::to_string), first))),
            changes: receiver,
        }
    }
}

/// Applies the mirror's changes to the state and broadcasts each once.
async fn follow(
    mirror: Mirror,
    mut receiver: broadcast::Receiver<client::Change>,
    state: Arc<RwLock<State>>,
    changes: broadcast::Sender<Arc<Change>>,
    revision: watch::Sender<i64>,
) {
    let mut mirror_revisions = mirror.revisions();
    loop {
        let first = tokio::select! {
            change = receiver.recv() => Some(change),
            changed = mirror_revisions.changed() => {
                if changed.is_err() {
                    return;
                }
                None
            }
        };
        // Everything up to the mirror's revision is in the channel once the
        // mirror reports it (it sends before it publishes the revision).
        let reached = *mirror_revisions.borrow_and_update();
        let mut pending: Vec<Result<client::Change, broadcast::error::RecvError>> =
            first.into_iter().collect();
        loop {
            match receiver.try_recv() {
                Ok(change) => pending.push(Ok(change)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    pending.push(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(_) => break,
            }
        }
        let mut current = state.write().unwrap_or_else(|p| p.into_inner());
        // After a reset, changes the new snapshot already contains are skipped.
        let mut floor = 0i64;
        for change in pending {
            match change {
                Ok(client::Change::Reset(snapshot)) => {
                    reset(&mut current, &snapshot, &changes);
                    floor = snapshot.revision;
                }
                Ok(client::Change::Put { key, entry }) if entry.mod_revision > floor => {
                    current.revision = current.revision.max(entry.mod_revision);
                    match parse(&key, &entry.value) {
                        Some(instance) => {
                            let service = instance.service.clone();
                            let by_id = current.instances.entry(service.clone()).or_default();
                            by_id.insert(instance.id.clone(), instance.clone());
                            let delta = Delta::Upsert { revision: entry.mod_revision, instance };
                            let _ = changes.send(Arc::new(Change::new(Some(service), delta)));
                        }
                        // An unreadable record replacing a good one: that
                        // instance is gone for routing purposes.
                        None => remove(&mut current, &key, entry.mod_revision, &changes),
                    }
                }
                Ok(client::Change::Delete { key, revision: at }) if at > floor => {
                    current.revision = current.revision.max(at);
                    remove(&mut current, &key, at, &changes);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // This task fell behind the mirror: take its state whole.
                    let snapshot = mirror.snapshot();
                    reset(&mut current, &snapshot, &changes);
                    floor = snapshot.revision;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        current.revision = current.revision.max(reached);
        let now = current.revision;
        drop(current);
        revision.send_if_modified(|r| {
            let moved = now > *r;
            *r = (*r).max(now);
            moved
        });
    }
}

/// Removes the instance `key` names, telling subscribers if it was there.
fn remove(state: &mut State, key: &str, revision: i64, changes: &broadcast::Sender<Arc<Change>>) {
    let Some((service, id)) = parse_key(key) else { return };
    let Some(instances) = state.instances.get_mut(service) else { return };
    if instances.remove(id).is_none() {
        return;
    }
    if instances.is_empty() {
        state.instances.remove(service);
    }
    let delta = Delta::Remove { revision, service: service.to_string(), id: id.to_string() };
    let _ = changes.send(Arc::new(Change::new(Some(service.to_string()), delta)));
}

fn reset(state: &mut State, snapshot: &Snapshot, changes: &broadcast::Sender<Arc<Change>>) {
    state.reset(snapshot);
    let all = Delta::Snapshot { revision: snapshot.revision, instances: state.of(None) };
    let _ = changes.send(Arc::new(Change::new(None, all)));
}

/// One subscriber's view; see [`Catalog::subscribe`].
pub struct Subscription {
    service: Option<String>,
    pending: Option<Arc<Change>>,
    changes: broadcast::Receiver<Arc<Change>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next change for this subscriber, shared with every other subscriber
    /// that gets it. A subscriber that fell more than [`SUBSCRIBER_BUFFER`]
    /// changes behind gets [`RegistryError::Lagged`] and must subscribe again.
    pub async fn next_shared(&mut self) -> Result<Arc<Change>, RegistryError> {
        if let Some(first) = self.pending.take() {
            return Ok(first);
        }
        loop {
            let change = match self.changes.recv().await {
                Ok(change) => change,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(RegistryError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(RegistryError::Closed),
            };
            match (&change.service, &self.service) {
                // A reset: this subscriber's share of it.
                (None, Some(wanted)) => {
                    let Delta::Snapshot { revision, instances } = &change.delta else { continue };
                    let mine = instances.iter().filter(|i| &i.service == wanted).cloned().collect();
                    let delta = Delta::Snapshot { revision: *revision, instances: mine };
                    return Ok(Arc::new(Change::new(Some(wanted.clone()), delta)));
                }
                (Some(service), Some(wanted)) if service != wanted => continue,
                _ => return Ok(change),
            }
        }
    }

    /// The next delta (see [`Subscription::next_shared`]).
    pub async fn next(&mut self) -> Result<Delta, RegistryError> {
        Ok(self.next_shared().await?.delta.clone())
    }
}
