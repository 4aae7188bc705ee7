//! `fivefold topology` and `fivefold failover` / `failback`: the unit topology
//! and where each unit is served, through the etcd v3 API of any member.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use etcd_client::Client;
use topology::UnitTopology;

#[derive(Args, Clone)]
pub struct Endpoints {
    /// Store members to talk to (host:port, comma-separated).
    #[arg(long, env = "FIVEFOLD_ENDPOINTS", default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
}

#[derive(Subcommand)]
pub enum TopologyCommand {
    /// Check a topology.toml without publishing it.
    Validate { file: PathBuf },
    /// Validate and publish a topology.toml (or the default with --default):
    /// new units start at home with epoch 1, existing ones keep where they are.
    Apply {
        /// The file; omit with --default.
        file: Option<PathBuf>,
        /// Publish the default topology (four RZones, a GZone, a CZone per city).
        #[arg(long, conflicts_with = "file")]
        default: bool,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Show the published units and where each is served now.
    Show {
        #[command(flatten)]
        endpoints: Endpoints,
    },
}

#[derive(Subcommand)]
pub enum FailoverCommand {
    /// Move one unit to its standby dc (or back from it), or to --to DC.
    Unit {
        unit: String,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Move every unit served from a city to a dc outside it.
    City {
        city: String,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Run the automatic controller: when every store member of a city has been
    /// unreachable for --down-after, fail its units over (one controller leads;
    /// give each the endpoints of its own city).
    Controller {
        /// How long a city's members must all be unreachable.
        #[arg(long, default_value = "3s", value_parser = crate::store_cmd::parse_duration)]
        down_after: std::time::Duration,
        /// This controller's name (default: controller-<pid>).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
}

#[derive(Args)]
pub struct FailbackArgs {
    /// Only this unit (default: every unit away from home).
    pub unit: Option<String>,
    #[command(flatten)]
    pub endpoints: Endpoints,
}

/// How long a command waits for a store that does not accept connections yet.
pub const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Endpoints {
    /// A store client with fivefold's deadlines (see `client::connect`). A store
    /// that is still starting gets [`STORE_WAIT`] to accept the connection.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let deadline = tokio::time::Instant::now() + STORE_WAIT;
        loop {
            // etcd-client connects lazily: a Status call proves the store answers.
            let attempt = async {
                let mut client = client::connect(&self.endpoints).await?;
                client.status().await?;
                Ok::<_, client::etcd_client::Error>(client)
            };
            match attempt.await {
                Ok(client) => return Ok(client),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!("connecting to {} (is the store running?)", self.endpoints.join(","))
                    })
                }
            }
        }
    }
}

fn load(file: &PathBuf) -> anyhow::Result<UnitTopology> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    UnitTopology::from_toml(&text).with_context(|| format!("{} is not a valid topology", file.display()))
}

fn print_moves(moves: &[router::Move]) {
    if moves.is_empty() {
        println!("nothing to move: every unit named is served from its target already");
    }
    for m in moves {
        println!("{}: {} -> {} (epoch {})", m.unit, m.from, m.to, m.epoch);
    }
}

pub async fn run_topology(command: TopologyCommand) -> anyhow::Result<()> {
    match command {
        TopologyCommand::Validate { file } => {
            let topology = load(&file)?;
            println!(
                "{} is valid: {} cities, {} units, {} shards",
                file.display(),
                topology.cities.len(),
                topology.units.len(),
                topology.shard_rule.modulus
            );
            Ok(())
        }
        TopologyCommand::Apply { file, default, endpoints } => {
            let topology = match (file, default) {
                (Some(file), false) => load(&file)?,
                (None, true) => UnitTopology::default_deployment(),
                _ => anyhow::bail!("name a topology.toml, or pass --default"),
            };
            let mut client = endpoints.connect().await?;
            let published = router::publish(&mut client, &topology).await?;
            println!(
                "published at revision {}: {} new units, {} kept, {} removed",
                published.revision,
                published.created.len(),
                published.kept.len(),
                published.removed.len()
            );
            Ok(())
        }
        TopologyCommand::Show { endpoints } => {
            let mut client = endpoints.connect().await?;
            let (topology, revision) = router::read_topology(&mut client).await?;
            let records = router::record::read_all(&mut client).await?;
            println!("topology (revision {revision}): shard = uid % {}", topology.shard_rule.modulus);
            println!(
                "  {:<12} {:<6} {:<10} {:<6} {:<8} {:<8} epoch",
                "unit", "kind", "shards", "home", "standby", "serving"
            );
            for unit in &topology.units {
                let shards: Vec<String> = unit.shards.iter().map(ToString::to_string).collect();
                let (serving, epoch) =
                    records.get(&unit.name).map_or(("?".to_string(), "?".to_string()), |r| {
                        (r.routing.current_dc.clone(), r.routing.epoch.to_string())
                    });
                println!(
                    "  {:<12} {:<6} {:<10} {:<6} {:<8} {:<8} {epoch}",
                    unit.name,
                    unit.kind.as_str(),
                    if shards.is_empty() { "-".to_string() } else { shards.join(",") },
                    unit.home_dc,
                    unit.standby_dc.as_deref().unwrap_or("-"),
                    serving
                );
            }
            Ok(())
        }
    }
}

pub async fn run_failover(command: FailoverCommand) -> anyhow::Result<()> {
    let moves = match command {
        FailoverCommand::Unit { unit, to, endpoints } => {
            let mut client = endpoints.connect().await?;
            router::failover_unit(&mut client, &unit, to.as_deref()).await?
        }
        FailoverCommand::City { city, endpoints } => {
            let mut client = endpoints.connect().await?;
            router::failover_city(&mut client, &city).await?
        }
        FailoverCommand::Controller { down_after, id, endpoints } => {
            let client = endpoints.connect().await?;
            let mut config = router::controller::ControllerConfig { down_after, ..Default::default() };
            if let Some(id) = id {
                config.identity = id;
            }
            println!(
                "failover controller {} started (a city moves after {down_after:?} down)",
                config.identity
            );
            let report = |event: router::controller::ControllerEvent| {
                use router::controller::ControllerEvent;
                match event {
                    ControllerEvent::Leading => println!("leading"),
                    ControllerEvent::FailedOver { city, down_for, moves } => {
                        println!("city {city} down for {:.1} s: failed over", down_for.as_secs_f64());
                        print_moves(&moves);
                    }
                    ControllerEvent::CityBack { city } => {
                        println!("city {city} answers again; `fivefold failback` moves its units home")
                    }
                }
            };
            let stop = crate::store_cmd::stop_signal()?;
            router::controller::run_controller(client, config, report, stop).await;
            return Ok(());
        }
    };
    print_moves(&moves);
    Ok(())
}

pub async fn run_failback(args: FailbackArgs) -> anyhow::Result<()> {
    let mut client = args.endpoints.connect().await?;
    let moves = router::failback(&mut client, args.unit.as_deref()).await?;
    print_moves(&moves);
    Ok(())
}
