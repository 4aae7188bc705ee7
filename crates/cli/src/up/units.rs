//! The unit layer `up` runs on top of its store: the default unit topology and
//! routes (published unless the store has them already), an account instance
//! for every unit at its home and standby dcs, and one gateway per city — all
//! in this process, talking to the members through the etcd v3 API.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use topology::{RoutingTable, UnitTopology};

/// Lease TTL of the sample instances' registrations.
const REGISTRATION_TTL_SECONDS: i64 = 5;
/// Gateways listen on base port + this + city number.
pub const GATEWAY_PORT_OFFSET: u16 = 60;

pub struct Units {
    /// (city, dc, address) of each gateway.
    pub gateways: Vec<(String, String, SocketAddr)>,
    pub instances: usize,
    pub published: bool,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Units {
    pub async fn start(urls: &[String], base_port: u16) -> anyhow::Result<Units> {
        let mut client = client::connect(urls).await.context("connecting to the members")?;
        let published = match router::read_topology(&mut client).await {
            Ok(_) => false,
            Err(router::RouterError::NoTopology { .. }) => {
                router::publish(&mut client, &UnitTopology::default_deployment()).await?;
                let routes = gateway::RoutesFile::from_toml(gateway::DEFAULT_ROUTES_TOML)?;
                gateway::publish_routes(&mut client, &routes).await?;
                true
            }
            Err(e) => return Err(e.into()),
        };
        let (topology, _) = router::read_topology(&mut client).await?;
        let table = RoutingTable::new(topology.clone())?;
        let (stop, stopped) = watch::channel(false);
        let until = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let mut tasks = JoinSet::new();
        let mut instances = 0;
        for unit in &topology.units {
            for dc in [Some(&unit.home_dc), unit.standby_dc.as_ref()].into_iter().flatten() {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let config = account::AccountConfig {
                    unit: unit.name.clone(),
                    dc: dc.clone(),
                    city: table.city_of_dc(dc).unwrap_or_default().to_string(),
                    id: format!("{}-{dc}", unit.name),
                    registration_ttl_seconds: REGISTRATION_TTL_SECONDS,
                };
                let (client, shutdown) = (client.clone(), until(stopped.clone()));
                tasks.spawn(async move {
                    if let Err(error) = account::serve(listener, client, config, shutdown).await {
                        eprintln!("account service stopped: {error}");
                    }
                });
                instances += 1;
            }
        }
        let watched = std::sync::Arc::new(gateway::Watched::start(client.clone()).await?);
        let mut gateways = Vec::new();
        for (n, city) in topology.cities.iter().enumerate() {
            let dc = city.dcs.first().cloned().unwrap_or_default();
            let address = SocketAddr::from(([127, 0, 0, 1], base_port + GATEWAY_PORT_OFFSET + n as u16));
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the {} gateway on {address}", city.name))?;
            let config = gateway::GatewayConfig { dc: dc.clone(), city: city.name.clone() };
            let (watched, shutdown) = (watched.clone(), until(stopped.clone()));
            tasks.spawn(async move {
                if let Err(error) = gateway::serve(listener, watched, config, shutdown).await {
                    eprintln!("gateway stopped: {error}");
                }
            });
            gateways.push((city.name.clone(), dc, address));
        }
        Ok(Units { gateways, instances, published, stop, tasks })
    }

    /// Deregisters the instances and stops the gateways (bounded).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    }
}
