//! The gateway's view of the platform: topology, where each unit is served,
//! routes and instances — four watched mirrors, folded into one immutable
//! [`View`] that is rebuilt after every change and swapped in whole, so a
//! request is always resolved against one consistent view.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use client::etcd_client::Client;
use client::Mirror;
use registry::{Catalog, Health, Instance};
use router::{UnitRouting, ROUTING_PREFIX};
use tokio::task::JoinHandle;
use topology::{RoutingTable, UnitTopology, TOPOLOGY_KEY};

use crate::routes::{Route, ROUTES_PREFIX};
use crate::GatewayError;

/// Everything a request is resolved against.
#[derive(Debug, Default)]
pub struct View {
    /// Highest store revision any part reflects.
    pub revision: i64,
    /// `None` until a topology is published.
    pub table: Option<RoutingTable>,
    pub units: HashMap<String, UnitRouting>,
    /// Longest path prefix first.
    pub routes: Vec<Route>,
    /// Instances that take traffic (health up, weight > 0), by service, then unit.
    pub instances: HashMap<String, HashMap<String, Vec<Instance>>>,
}

struct Sources {
    topology: Mirror,
    units: Mirror,
    routes: Mirror,
    catalog: Catalog,
}

fn build(sources: &Sources, previous: &View) -> View {
    let topology = sources.topology.snapshot();
    let table = match topology.entries.get(TOPOLOGY_KEY) {
        Some(entry) => match UnitTopology::from_json(&entry.value).and_then(RoutingTable::new) {
            Ok(table) => Some(table),
            Err(error) => {
                tracing::error!(%error, "the published topology is invalid; keeping the previous one");
                previous.table.clone()
            }
        },
        None => None,
    };
    let units_snapshot = sources.units.snapshot();
    let mut units = HashMap::new();
    for (key, entry) in &units_snapshot.entries {
        match UnitRouting::from_json(key, &entry.value) {
            Ok(record) => {
                units.insert(record.unit.clone(), record);
            }
            Err(error) => tracing::error!(%error, "skipping a routing record"),
        }
    }
    let routes_snapshot = sources.routes.snapshot();
    let mut routes: Vec<Route> = routes_snapshot
        .entries
        .iter()
        .filter_map(|(key, entry)| match serde_json::from_slice::<Route>(&entry.value) {
            Ok(route) if route.validate().is_ok() => Some(route),
            _ => {
                tracing::error!(%key, "skipping an invalid route record");
                None
            }
        })
        .collect();
    routes.sort_by(|a, b| b.path_prefix.len().cmp(&a.path_prefix.len()).then(a.name.cmp(&b.name)));
    let mut instances: HashMap<String, HashMap<String, Vec<Instance>>> = HashMap::new();
    for (service, list) in sources.catalog.services() {
        for instance in list {
            if instance.health == Health::Up && instance.weight > 0 {
                let by_unit = instances.entry(service.clone()).or_default();
                by_unit.entry(instance.unit.clone()).or_default().push(instance);
            }
        }
    }
    let revision =
        [topology.revision, units_snapshot.revision, routes_snapshot.revision, sources.catalog.revision()]
            .into_iter()
            .max()
            .unwrap_or(0);
    View { revision, table, units, routes, instances }
}

/// The live view; see the module docs. Dropping it stops the watches.
pub struct Watched {
    view: Arc<RwLock<Arc<View>>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").finish_non_exhaustive()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watched {
    /// Lists and starts watching everything the gateway needs.
    pub async fn start(client: Client) -> Result<Watched, GatewayError> {
        let sources = Sources {
            topology: Mirror::start(client.clone(), TOPOLOGY_KEY).await?,
            units: Mirror::start(client.clone(), ROUTING_PREFIX).await?,
            routes: Mirror::start(client.clone(), ROUTES_PREFIX).await?,
            catalog: Catalog::start(client).await?,
        };
        let view = Arc::new(RwLock::new(Arc::new(build(&sources, &View::default()))));
        let task = tokio::spawn(rebuild(sources, view.clone()));
        Ok(Watched { view, task })
    }

    /// The view now.
    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn rebuild(sources: Sources, view: Arc<RwLock<Arc<View>>>) {
    let mut topology = sources.topology.revisions();
    let mut units = sources.units.revisions();
    let mut routes = sources.routes.revisions();
    let mut catalog = sources.catalog.revisions();
    loop {
        let changed = tokio::select! {
            r = topology.changed() => r,
            r = units.changed() => r,
            r = routes.changed() => r,
            r = catalog.changed() => r,
        };
        if changed.is_err() {
            return;
        }
        let previous = view.read().unwrap_or_else(|p| p.into_inner()).clone();
        let next = Arc::new(build(&sources, &previous));
        *view.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}
