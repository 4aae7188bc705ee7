//! `fivefold gateway`: the unit-routing gateway, and publishing its routes.
//! `fivefold sample account`: the sample service a unit runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::ldc_cmd::Endpoints;

#[derive(Subcommand)]
pub enum GatewayCommand {
    /// Serve: route each request by user id to its unit's current dc.
    Serve(ServeArgs),
    /// Validate and publish a routes.toml, or the sample service's routes with
    /// --default (replaces every published route).
    Routes {
        /// The file; omit with --default.
        file: Option<PathBuf>,
        /// Publish the default routes (gateway::DEFAULT_ROUTES_TOML).
        #[arg(long, conflicts_with = "file")]
        default: bool,
        #[command(flatten)]
        endpoints: Endpoints,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The dc this gateway runs in.
    #[arg(long)]
    pub dc: String,
    /// Its city (default: the dc's city in the published topology).
    #[arg(long)]
    pub city: Option<String>,
    /// Serving threads, each with its own listener and upstream pool (default:
    /// one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub endpoints: Endpoints,
}

#[derive(Subcommand)]
pub enum SampleCommand {
    /// The account service: balances under its unit's prefix, fenced writes.
    Account(AccountArgs),
}

#[derive(Args)]
pub struct AccountArgs {
    /// Address to listen on (port 0 picks one; the registry gets the real one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[arg(long)]
    pub unit: String,
    #[arg(long)]
    pub dc: String,
    #[arg(long)]
    pub city: String,
    /// Instance id in the registry (default: unit-dc-port).
    #[arg(long)]
    pub id: Option<String>,
    /// Registration lease TTL in seconds.
    #[arg(long, default_value_t = registry::DEFAULT_TTL_SECONDS)]
    pub ttl: i64,
    #[command(flatten)]
    pub endpoints: Endpoints,
}

pub async fn run_gateway(command: GatewayCommand) -> anyhow::Result<()> {
    match command {
        GatewayCommand::Routes { file, default, endpoints } => {
            let routes = match (file, default) {
                (Some(file), false) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    gateway::RoutesFile::from_toml(&text)
                        .with_context(|| format!("{} is not a valid routes file", file.display()))?
                }
                (None, true) => gateway::RoutesFile::from_toml(gateway::DEFAULT_ROUTES_TOML)?,
                _ => anyhow::bail!("name a routes.toml, or pass --default"),
            };
            let mut client = endpoints.connect().await?;
            let revision = gateway::publish_routes(&mut client, &routes).await?;
            println!("published {} routes at revision {revision}", routes.routes.len());
            Ok(())
        }
        GatewayCommand::Serve(args) => {
            let client = args.endpoints.connect().await?;
            let watched = Arc::new(gateway::Watched::start(client).await?);
            let city = match args.city {
                Some(city) => city,
                None => watched
                    .view()
                    .table
                    .as_ref()
                    .and_then(|t| t.city_of_dc(&args.dc).map(str::to_string))
                    .with_context(|| {
                        format!(
                            "dc {} is not in the published topology; pass --city or apply a topology",
                            args.dc
                        )
                    })?,
            };
            let threads =
                args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let config = gateway::GatewayConfig { dc: args.dc.clone(), city: city.clone() };
            let stop = crate::store_cmd::stop_signal()?;
            let (bound, running) = gateway::serve_per_thread(args.listen, threads, watched, config, stop)
                .with_context(|| format!("binding {}", args.listen))?;
            println!("gateway for dc {} ({city}) listening on {bound} ({threads} threads)", args.dc);
            running.await?;
            Ok(())
        }
    }
}

pub async fn run_sample(command: SampleCommand) -> anyhow::Result<()> {
    let SampleCommand::Account(args) = command;
    let client = args.endpoints.connect().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    let id = args.id.unwrap_or_else(|| format!("{}-{}-{}", args.unit, args.dc, address.port()));
    println!("account service {id} for unit {} in dc {} listening on {address}", args.unit, args.dc);
    let config = account::AccountConfig {
        unit: args.unit,
        dc: args.dc,
        city: args.city,
        id,
        registration_ttl_seconds: args.ttl,
    };
    account::serve(listener, client, config, crate::store_cmd::stop_signal()?).await?;
    Ok(())
}
