//! `fivefold registry`: the registry server (`serve`, the HTTP/JSON API over one
//! watched catalog) and `register`, which registers one instance from a shell
//! and keeps it alive until interrupted.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Subcommand};
use registry::{Health, Instance, Registration};

use crate::ldc_cmd::Endpoints;

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Serve the registry's HTTP/JSON API (HTTP/1.1 and h2c) until Ctrl-C.
    Serve(ServeArgs),
    /// Register one instance, keep its lease alive until Ctrl-C, then deregister
    /// it (kill -9 instead leaves the record to expire with its lease).
    Register(RegisterArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7379")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub endpoints: Endpoints,
}

#[derive(Args)]
pub struct RegisterArgs {
    #[arg(long)]
    pub service: String,
    /// Unique within the service.
    #[arg(long)]
    pub id: String,
    /// host:port where the instance serves.
    #[arg(long)]
    pub address: String,
    /// The unit the instance serves.
    #[arg(long)]
    pub unit: String,
    #[arg(long)]
    pub dc: String,
    #[arg(long)]
    pub city: String,
    #[arg(long, default_value = "")]
    pub version: String,
    #[arg(long, default_value_t = 100)]
    pub weight: u32,
    /// Metadata entries, KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_parser = key_value)]
    pub metadata: Vec<(String, String)>,
    /// Register as taking no traffic yet.
    #[arg(long)]
    pub down: bool,
    /// Lease TTL in seconds: a crashed instance disappears within it.
    #[arg(long, default_value_t = registry::DEFAULT_TTL_SECONDS)]
    pub ttl: i64,
    #[command(flatten)]
    pub endpoints: Endpoints,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

pub async fn run(command: RegistryCommand) -> anyhow::Result<()> {
    match command {
        RegistryCommand::Serve(args) => serve(args).await,
        RegistryCommand::Register(args) => register(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let client = args.endpoints.connect().await?;
    let api = registry::http::HttpApi::start(client).await.context("reading the registry from the store")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let stop = crate::store_cmd::stop_signal()?;
    println!("registry listening on {}", listener.local_addr()?);
    registry::http::serve(listener, api, stop).await;
    Ok(())
}

async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let instance = Instance {
        service: args.service,
        id: args.id,
        address: args.address,
        unit: args.unit,
        dc: args.dc,
        city: args.city,
        version: args.version,
        weight: args.weight,
        metadata: args.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        health: if args.down { Health::Down } else { Health::Up },
    };
    instance.validate()?;
    let client = args.endpoints.connect().await?;
    let key = instance.key();
    let registration = Registration::register(client, instance, args.ttl)
        .await
        .with_context(|| format!("registering {key}"))?;
    let stop = crate::store_cmd::stop_signal()?;
    println!("registered {key} (lease {})", registration.lease());
    stop.await;
    registration.deregister().await.with_context(|| format!("deregistering {key}"))?;
    println!("deregistered {key}");
    Ok(())
}
