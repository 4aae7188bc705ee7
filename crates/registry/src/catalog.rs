//! The read side: every instance of every service, from one watch.

use std::collections::BTreeMap;
use std::sync::Arc;

use client::{Change, Mirror, Snapshot};
use tokio::sync::broadcast;

use crate::instance::parse_key;
use crate::{Instance, RegistryError, REGISTRY_PREFIX};

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

/// Every instance of every service, kept current by one watch.
pub struct Catalog {
    mirror: Mirror,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

fn instances_of(snapshot: &Snapshot, service: Option<&str>) -> Vec<Instance> {
    snapshot
        .entries
        .iter()
        .filter_map(|(key, entry)| {
            let (s, _) = parse_key(key)?;
            if service.is_some_and(|wanted| wanted != s) {
                return None;
            }
            match Instance::from_json(key, &entry.value) {
                Ok(instance) => Some(instance),
                Err(error) => {
                    tracing::warn!(%error, "skipping a malformed registry record");
                    None
                }
            }
        })
        .collect()
}

impl Catalog {
    /// Lists the registry and starts watching it.
    pub async fn start(client: client::etcd_client::Client) -> Result<Catalog, RegistryError> {
        Ok(Catalog { mirror: Mirror::start(client, REGISTRY_PREFIX).await? })
    }

    /// Every instance of `service` now.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        instances_of(&self.mirror.snapshot(), Some(service))
    }

    /// Every instance of every service now, by service.
    pub fn services(&self) -> BTreeMap<String, Vec<Instance>> {
        let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for instance in instances_of(&self.mirror.snapshot(), None) {
            services.entry(instance.service.clone()).or_default().push(instance);
        }
        services
    }

    /// Every instance of `service` (or of every service with `None`) and the
    /// store revision they are as of, read together.
    pub fn snapshot(&self, service: Option<&str>) -> (i64, Vec<Instance>) {
        let snapshot = self.mirror.snapshot();
        (snapshot.revision, instances_of(&snapshot, service))
    }

    /// The store revision the catalog reflects.
    pub fn revision(&self) -> i64 {
        self.mirror.revision()
    }

    /// Waits until the catalog reflects store revision `revision`.
    pub async fn wait_for(&self, revision: i64) -> Result<(), RegistryError> {
        Ok(self.mirror.wait_for(revision).await?)
    }

    /// Notified at each revision the catalog reaches.
    pub fn revisions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.mirror.revisions()
    }

    /// A subscription to `service` (or every service with `None`): a snapshot,
    /// then deltas.
    pub fn subscribe(&self, service: Option<&str>) -> Subscription {
        let (snapshot, changes) = self.mirror.subscribe();
        let first =
            Delta::Snapshot { revision: snapshot.revision, instances: instances_of(&snapshot, service) };
        Subscription { service: service.map(str::to_string), pending: Some(first), changes }
    }
}

/// One subscriber's view; see [`Catalog::subscribe`].
pub struct Subscription {
    service: Option<String>,
    pending: Option<Delta>,
    changes: broadcast::Receiver<Change>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Subscription {
    fn wants(&self, service: &str) -> bool {
        self.service.as_deref().is_none_or(|wanted| wanted == service)
    }

    /// The next delta. A subscriber that fell more than the mirror's buffer
    /// behind gets [`RegistryError::Lagged`] and must subscribe again.
    pub async fn next(&mut self) -> Result<Delta, RegistryError> {
        if let Some(first) = self.pending.take() {
            return Ok(first);
        }
        loop {
            let change = match self.changes.recv().await {
                Ok(change) => change,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(RegistryError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(RegistryError::Closed),
            };
            match change {
                Change::Reset(snapshot) => {
                    let snapshot: Arc<Snapshot> = snapshot;
                    return Ok(Delta::Snapshot {
                        revision: snapshot.revision,
                        instances: instances_of(&snapshot, self.service.as_deref()),
                    });
                }
                Change::Put { key, entry } => {
                    let Some((service, _)) = parse_key(&key) else { continue };
                    if !self.wants(service) {
                        continue;
                    }
                    match Instance::from_json(&key, &entry.value) {
                        Ok(instance) => return Ok(Delta::Upsert { revision: entry.mod_revision, instance }),
                        Err(error) => tracing::warn!(%error, "skipping a malformed registry record"),
                    }
                }
                Change::Delete { key, revision } => {
                    let Some((service, id)) = parse_key(&key) else { continue };
                    if self.wants(service) {
                        return Ok(Delta::Remove {
                            revision,
                            service: service.to_string(),
                            id: id.to_string(),
                        });
                    }
                }
            }
        }
    }
}
