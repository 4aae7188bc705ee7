//! `fivefold up`: a local five-member, three-city deployment on loopback.
//!
//! Starts one `fivefold store` process per data center of the default
//! topology, waits until every member knows the leader, prints where to reach
//! them, and stops them all on Ctrl-C. Data stays under the data dir, so a
//! second `up` resumes the same cluster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::StatusRequest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long members may take to elect a leader before `up` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long members may take to stop after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The city the leader lives in while it can.
const PRIMARY_CITY: &str = "hangzhou";
/// Ports of member i: client = base + PORT_STRIDE * i, peer = client + 1.
const PORT_STRIDE: u16 = 10;

#[derive(Args)]
pub struct UpArgs {
    /// Where each member keeps its data (one folder per member) and its log.
    #[arg(long, default_value = "fivefold-data")]
    pub data_dir: PathBuf,
    /// Client port of the first member; the others follow in steps of 10.
    #[arg(long, default_value_t = 2379)]
    pub base_port: u16,
    /// Emulate the WAN between cities on loopback: members hold what they send
    /// to another city for the pair's round trip (10 ms hangzhou–shanghai,
    /// 30 ms to shenzhen, 1 ms inside a city).
    #[arg(long)]
    pub wan: bool,
}

/// The round trip between two cities of the default deployment, in ms.
pub fn wan_round_trip_ms(from: &str, to: &str) -> u32 {
    match (from, to) {
        (a, b) if a == b => 1,
        ("hangzhou", "shanghai") | ("shanghai", "hangzhou") => 10,
        _ => 30,
    }
}

/// Client and peer URLs of each member of a deployment on `base_port`.
pub fn member_urls(base_port: u16) -> Vec<(String, String)> {
    (0..topology::DEFAULT_MEMBERS.len() as u16)
        .map(|i| {
            let client = base_port + PORT_STRIDE * i;
            (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{}", client + 1))
        })
        .collect()
}

struct Member {
    name: &'static str,
    city: &'static str,
    client_url: String,
    peer_url: String,
    log: PathBuf,
    child: Child,
}

fn spawn_member(
    exe: &Path,
    data_dir: &Path,
    spec: &topology::MemberSpec,
    client_url: &str,
    peer_url: &str,
    cluster: &str,
    placement: &str,
) -> anyhow::Result<(PathBuf, Child)> {
    let log = data_dir.join(format!("{}.log", spec.name));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = Command::new(exe)
        .arg("store")
        .args(["--name", spec.name])
        .arg("--data-dir")
        .arg(data_dir.join(spec.name))
        .args(["--listen-client-urls", client_url, "--listen-peer-urls", peer_url])
        .args(["--initial-cluster", cluster, "--initial-cluster-token", "fivefold-up"])
        .args(["--initial-cluster-placement", placement, "--primary-city", PRIMARY_CITY])
        // Lets `fivefold chaos` cut cities off and `--wan` add delays.
        .arg("--experimental-fault-injection")
        .args(["--city", spec.city, "--dc", spec.name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting member {}", spec.name))?;
    Ok((log, child))
}

async fn leader_of(url: &str) -> Option<u64> {
    let mut client = MaintenanceClient::connect(url.to_string()).await.ok()?;
    let status = client.status(StatusRequest {}).await.ok()?.into_inner();
    (status.leader != 0).then_some(status.leader)
}

async fn wait_ready(members: &mut [Member]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        for m in members.iter_mut() {
            if let Some(status) = m.child.try_wait()? {
                bail!("member {} exited ({status}); see {}", m.name, m.log.display());
            }
        }
        let mut ready = 0;
        for m in members.iter() {
            if leader_of(&m.client_url).await.is_some() {
                ready += 1;
            }
        }
        if ready == members.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("members did not elect a leader within {READY_TIMEOUT:?}; see the logs under the data dir");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop_all(members: &mut [Member]) {
    for m in members.iter() {
        if let Some(pid) = m.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for m in members.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, m.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("member {} did not stop in {STOP_TIMEOUT:?}; killing it", m.name);
                let _ = m.child.kill().await;
            }
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding the fivefold binary")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let resumed = args.data_dir.join(topology::DEFAULT_MEMBERS[0].name).exists();
    let urls = member_urls(args.base_port);
    let cluster: Vec<String> = topology::DEFAULT_MEMBERS
        .iter()
        .zip(&urls)
        .map(|(m, (_, peer))| format!("{}={peer}", m.name))
        .collect();
    let cluster = cluster.join(",");
    let placement: Vec<String> =
        topology::DEFAULT_MEMBERS.iter().map(|m| format!("{}={}", m.name, m.city)).collect();
    let placement = placement.join(",");
    let mut members = Vec::new();
    for (spec, (client_url, peer_url)) in topology::DEFAULT_MEMBERS.iter().zip(urls) {
        let (log, child) =
            spawn_member(&exe, &args.data_dir, spec, &client_url, &peer_url, &cluster, &placement)?;
        members.push(Member { name: spec.name, city: spec.city, client_url, peer_url, log, child });
    }
    if let Err(e) = wait_ready(&mut members).await {
        stop_all(&mut members).await;
        return Err(e);
    }
    // Host:port, not URLs: etcdctl 3.4 puts a full URL into HTTP/2's :authority
    // for some commands (endpoint status), which a strict HTTP/2 server rejects.
    if args.wan {
        crate::chaos_cmd::apply(args.base_port, true, None).await?;
    }
    let endpoints: Vec<&str> = members.iter().map(|m| m.client_url.trim_start_matches("http://")).collect();
    println!(
        "fivefold is up: 5 members in 3 cities, ready in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        if resumed { "resumed from the data dir" } else { "new cluster" }
    );
    println!();
    println!("  {:<6} {:<10} {:<24} peer URL", "member", "city", "client URL");
    for m in &members {
        println!("  {:<6} {:<10} {:<24} {}", m.name, m.city, m.client_url, m.peer_url);
    }
    println!();
    println!("Data and logs: {}/", args.data_dir.display());
    println!("Try it:");
    println!("  export ETCDCTL_API=3 ETCDCTL_ENDPOINTS={}", endpoints.join(","));
    println!("  etcdctl put greeting hello && etcdctl get greeting");
    println!("  etcdctl endpoint status -w table && etcdctl member list -w table");
    if args.wan {
        println!("WAN delays on: 10 ms round trip hangzhou-shanghai, 30 ms to shenzhen.");
    }
    println!("Faults from another terminal (add --wan if up runs with it):");
    println!("  fivefold chaos status | cut hangzhou | heal | drill hangzhou   (drill measures RPO and RTO)");
    println!("Ctrl-C stops every member.");

    let exited = async {
        loop {
            for m in members.iter_mut() {
                if let Ok(Some(status)) = m.child.try_wait() {
                    return (m.name, status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let outcome = tokio::select! {
        _ = crate::store_cmd::stop_signal() => Ok(()),
        (name, status) = exited => Err(anyhow::anyhow!("member {name} exited unexpectedly ({status}); see its log under {}", args.data_dir.display())),
    };
    eprintln!("stopping members...");
    stop_all(&mut members).await;
    eprintln!("stopped.");
    outcome
}
