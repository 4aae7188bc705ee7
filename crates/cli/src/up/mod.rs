//! `fivefold up`: a local five-member, three-city deployment.
//!
//! Starts one `fivefold store` process per data center of the default
//! topology (on loopback, or with `--wan` as root in one network namespace per
//! dc), waits until every member knows the leader, prints where to reach them,
//! serves `fivefold chaos` on its control port (cutting a city off, healing,
//! and measuring RTO and RPO of each cut), and stops the members on Ctrl-C.
//! On loopback the data stays under the data dir, so a second `up` resumes
//! the same cluster.

mod control;
mod deployment;
mod probe;
mod units;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::time::Instant;

pub use control::send as send_control;
use deployment::Deployment;

/// How long members may take to elect a leader before `up` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The city the leader lives in while it can.
const PRIMARY_CITY: &str = "hangzhou";
/// Ports of member i: client = base + PORT_STRIDE * i, peer = client + 1.
const PORT_STRIDE: u16 = 10;
pub const DEFAULT_BASE_PORT: u16 = 2379;
/// The highest `--base-port`: `up` uses ports up to base + 62 (the gateway
/// of the third city).
pub const BASE_PORT_MAX: i64 = (u16::MAX - units::GATEWAY_PORT_OFFSET - 2) as i64;

#[derive(Args)]
pub struct UpArgs {
    /// Where each member keeps its data (one folder per member) and its log.
    #[arg(long, default_value = "fivefold-data")]
    pub data_dir: PathBuf,
    /// Client port of the first member; the others follow in steps of 10, and
    /// the control port for `fivefold chaos` comes after them (base + 50).
    #[arg(long, default_value_t = DEFAULT_BASE_PORT, value_parser = clap::value_parser!(u16).range(1..=BASE_PORT_MAX))]
    pub base_port: u16,
    /// Put a WAN between the cities (10 ms round trip hangzhou–shanghai, 30 ms
    /// to shenzhen, 1 ms inside a city). As root: one network namespace per dc
    /// with user-space delays, data in a temporary dir. Otherwise: emulated in
    /// the members' peer transport on loopback.
    #[arg(long)]
    pub wan: bool,
}

async fn leader_of(url: &str) -> Option<u64> {
    let status = probe::status(url).await?;
    (status.leader != 0).then_some(status.leader)
}

/// Waits until every member of a loopback deployment knows the leader.
async fn wait_ready(deployment: &mut Deployment) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let urls = deployment.client_urls()?;
    loop {
        deployment.check_running()?;
        let mut ready = 0;
        for url in &urls {
            if leader_of(url).await.is_some() {
                ready += 1;
            }
        }
        if ready == urls.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("members did not elect a leader within {READY_TIMEOUT:?}; see the logs under the data dir");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The port `fivefold chaos` reaches `up` on: right after the members' ports.
pub fn control_port(base_port: u16) -> u16 {
    base_port + PORT_STRIDE * topology::DEFAULT_MEMBERS.len() as u16
}

/// Starts the members where `args` asks: namespaces for `--wan` as root.
async fn start(args: &UpArgs, exe: &std::path::Path) -> anyhow::Result<Deployment> {
    if args.wan {
        match testkit::wan::supported() {
            Ok(_) => {
                eprintln!("building one network namespace per data center...");
                return Deployment::start_namespaces(exe).await;
            }
            Err(reason) => eprintln!(
                "--wan without network namespaces ({reason}): the delays are emulated in the members' peer transport on loopback"
            ),
        }
    }
    let mut deployment = Deployment::start_loopback(exe, &args.data_dir, args.base_port, args.wan)?;
    if let Err(e) = wait_ready(&mut deployment).await {
        deployment.stop().await;
        return Err(e);
    }
    if let Err(e) = deployment.apply_delays().await {
        deployment.stop().await;
        return Err(e);
    }
    Ok(deployment)
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // First: a Ctrl-C from now on stops the members cleanly.
    let stop = crate::store_cmd::stop_signal()?;
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding the fivefold binary")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let resumed = args.data_dir.join(topology::DEFAULT_MEMBERS[0].name).exists();
    let control_port = control_port(args.base_port);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", control_port)).await.with_context(|| {
        format!("binding the control port 127.0.0.1:{control_port} (is another `fivefold up` running? use --base-port)")
    })?;
    let deployment = start(&args, &exe).await?;
    let in_namespaces = matches!(deployment, Deployment::Namespaces(_));
    let urls = deployment.client_urls()?;
    println!(
        "fivefold is up: 5 members in 3 cities, ready in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        if in_namespaces {
            "in network namespaces; data in a temporary dir, removed on exit"
        } else if resumed {
            "resumed from the data dir"
        } else {
            "new cluster"
        }
    );
    println!();
    println!("  {:<6} {:<10} client URL", "member", "city");
    for (spec, url) in topology::DEFAULT_MEMBERS.iter().zip(&urls) {
        println!("  {:<6} {:<10} {url}", spec.name, spec.city);
    }
    println!();
    println!("WAN: {}", deployment.wan_description());
    if !in_namespaces {
        println!("Data and logs: {}/", args.data_dir.display());
    }
    // Host:port, not URLs: etcdctl 3.4 puts a full URL into HTTP/2's :authority
    // for some commands (endpoint status), which a strict HTTP/2 server rejects.
    let endpoints: Vec<&str> = urls.iter().map(|url| url.trim_start_matches("http://")).collect();
    println!("Try it:");
    println!("  export ETCDCTL_API=3 ETCDCTL_ENDPOINTS={}", endpoints.join(","));
    println!("  etcdctl put greeting hello && etcdctl get greeting");
    println!("  etcdctl endpoint status -w table && etcdctl member list -w table");
    let port_flag = if args.base_port == DEFAULT_BASE_PORT {
        String::new()
    } else {
        format!(" --base-port {}", args.base_port)
    };
    let units = units::Units::start(&urls, args.base_port).await.context("starting the unit layer")?;
    println!(
        "Units: the default topology ({}; 4 rzones over 100 shards, a gzone, a czone per city), \
         {} account instances, a gateway per city:",
        if units.published { "published now" } else { "as published before" },
        units.instances
    );
    for (city, dc, address) in &units.gateways {
        println!("  {city:<10} {dc:<6} http://{address}");
    }
    if let Some((_, _, address)) = units.gateways.first() {
        println!("  curl -H 'x-uid: 7' http://{address}/whoami        # uid 7 -> shard 7 -> rz-hz-a");
        println!("  curl -XPOST 'http://{address}/accounts/42/deposit?amount=5'");
        println!(
            "  fivefold topology show --endpoints {}   |   fivefold failover unit rz-hz-a --endpoints ...",
            endpoints[0]
        );
    }
    println!("Faults from another terminal (this terminal prints the RTO and RPO of each cut):");
    println!("  fivefold chaos status{port_flag}");
    println!("  fivefold chaos cut hangzhou{port_flag}   then   fivefold chaos heal{port_flag}");
    println!("  fivefold chaos drill hangzhou{port_flag}   (cut, measure, heal, audit)");
    println!("Ctrl-C stops every member.");

    let state = control::shared(deployment);
    let server = tokio::spawn(control::serve(listener, state.clone()));
    let exited = async {
        loop {
            if let Some(exited) = state.lock().await.deployment.exited() {
                return exited;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let outcome = tokio::select! {
        _ = stop => Ok(()),
        (name, how) = exited => Err(anyhow::anyhow!("member {name} exited unexpectedly ({how})")),
    };
    server.abort();
    let _ = server.await;
    eprintln!("stopping members...");
    units.stop().await;
    let Ok(state) = Arc::try_unwrap(state) else {
        bail!("a control connection is still open; members are killed on exit");
    };
    state.into_inner().deployment.stop().await;
    eprintln!("stopped.");
    outcome
}
