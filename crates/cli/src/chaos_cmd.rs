//! `fivefold chaos`: faults for a `fivefold up` deployment, from another
//! terminal. The members of `up` accept fault-injection rules on their peer
//! ports, so a city can be cut off (both directions, every link) and healed
//! without root; `drill` cuts a city under a stream of writes and measures
//! RPO and RTO the way the chaos tests do.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use etcd_proto::fivefoldpb::peer_client::PeerClient;
use etcd_proto::fivefoldpb::{FaultRule, FaultRules};
use tokio::time::Instant;

use crate::up::{member_urls, wan_round_trip_ms};

/// Deadline of one request of the drill.
const DRILL_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the drill writes before the cut, and at most after it.
const DRILL_BEFORE_CUT: Duration = Duration::from_secs(2);
const DRILL_RECOVERY_MAX: Duration = Duration::from_secs(30);
const DRILL_KEY_PREFIX: &str = "fivefold/chaos-drill/";

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Show each member: city, leader, revision.
    Status(Target),
    /// Cut a city off: every link between its members and the others, both ways.
    Cut(CityArgs),
    /// Remove every cut (WAN delays stay if `up --wan` set them).
    Heal(Target),
    /// Cut a city under writes, report RTO, heal, and report RPO.
    Drill(CityArgs),
}

#[derive(Args, Clone)]
pub struct Target {
    /// The base port `fivefold up` was started with.
    #[arg(long, default_value_t = 2379)]
    pub base_port: u16,
    /// Whether `up` runs with WAN delays (keep them when rules change).
    #[arg(long)]
    pub wan: bool,
}

#[derive(Args, Clone)]
pub struct CityArgs {
    /// hangzhou, shanghai or shenzhen.
    pub city: String,
    #[command(flatten)]
    pub target: Target,
}

struct Member {
    name: &'static str,
    city: &'static str,
    client_url: String,
    peer_url: String,
}

fn members(target: &Target) -> Vec<Member> {
    topology::DEFAULT_MEMBERS
        .iter()
        .zip(member_urls(target.base_port))
        .map(|(spec, (client_url, peer_url))| Member {
            name: spec.name,
            city: spec.city,
            client_url,
            peer_url,
        })
        .collect()
}

/// Sets every member's rules: WAN delays (if on) and cuts between `cut_city`
/// and the rest.
pub async fn apply(base_port: u16, wan: bool, cut_city: Option<&str>) -> anyhow::Result<()> {
    let target = Target { base_port, wan };
    let members = members(&target);
    for from in &members {
        let mut rules = Vec::new();
        for to in members.iter().filter(|m| m.name != from.name) {
            let cut = cut_city.is_some_and(|city| (from.city == city) != (to.city == city));
            let delay_ms = if wan { wan_round_trip_ms(from.city, to.city) } else { 0 };
            rules.push(FaultRule { peer_url: to.peer_url.clone(), drop: cut, delay_ms });
        }
        let mut peer = PeerClient::connect(from.peer_url.clone()).await.with_context(|| {
            format!("connecting to {} at {} (is `fivefold up` running?)", from.name, from.peer_url)
        })?;
        peer.inject_faults(FaultRules { rules })
            .await
            .with_context(|| format!("setting rules on {}", from.name))?;
    }
    Ok(())
}

async fn status(target: &Target) -> anyhow::Result<()> {
    println!("  {:<6} {:<10} {:<8} {:>9}", "member", "city", "role", "revision");
    for m in members(target) {
        let reply = match MaintenanceClient::connect(m.client_url.clone()).await {
            Ok(mut client) => {
                tokio::time::timeout(DRILL_REQUEST_TIMEOUT, client.status(StatusRequest {})).await
            }
            Err(_) => {
                println!("  {:<6} {:<10} unreachable", m.name, m.city);
                continue;
            }
        };
        match reply {
            Ok(Ok(status)) => {
                let status = status.into_inner();
                let header = status.header.unwrap_or_default();
                let role = if status.leader == header.member_id {
                    "leader"
                } else if status.leader == 0 {
                    "no leader"
                } else {
                    "follower"
                };
                println!("  {:<6} {:<10} {:<8} {:>9}", m.name, m.city, role, header.revision);
            }
            _ => println!("  {:<6} {:<10} not answering", m.name, m.city),
        }
    }
    Ok(())
}

fn check_city(city: &str) -> anyhow::Result<()> {
    if !topology::DEFAULT_MEMBERS.iter().any(|m| m.city == city) {
        bail!("unknown city {city:?}: the deployment has hangzhou, shanghai and shenzhen");
    }
    Ok(())
}

/// A write stream through every member outside `avoid`, one at a time.
struct Writer {
    clients: Vec<(&'static str, KvClient<tonic::transport::Channel>)>,
    sequence: u64,
    acked: BTreeSet<String>,
}

impl Writer {
    /// One write through the next member; true if acknowledged.
    async fn write(&mut self, avoid_city: Option<&str>, cities: &[&str]) -> bool {
        self.sequence += 1;
        let candidates: Vec<usize> =
            (0..self.clients.len()).filter(|i| avoid_city.is_none_or(|c| cities[*i] != c)).collect();
        let index = candidates[self.sequence as usize % candidates.len()];
        let key = format!("{DRILL_KEY_PREFIX}{}", self.sequence);
        let request =
            PutRequest { key: key.clone().into_bytes(), value: b"x".to_vec(), ..Default::default() };
        let client = &mut self.clients[index].1;
        let ok = matches!(tokio::time::timeout(DRILL_REQUEST_TIMEOUT, client.put(request)).await, Ok(Ok(_)));
        if ok {
            self.acked.insert(key);
        }
        ok
    }
}

async fn drill(args: &CityArgs) -> anyhow::Result<()> {
    check_city(&args.city)?;
    let members = members(&args.target);
    let cities: Vec<&str> = members.iter().map(|m| m.city).collect();
    let mut writer = Writer { clients: Vec::new(), sequence: 0, acked: BTreeSet::new() };
    for m in &members {
        let client = KvClient::connect(m.client_url.clone())
            .await
            .with_context(|| format!("connecting to {}", m.name))?;
        writer.clients.push((m.name, client));
    }
    println!("writing through every member for {DRILL_BEFORE_CUT:?}...");
    let started = Instant::now();
    while started.elapsed() < DRILL_BEFORE_CUT {
        writer.write(None, &cities).await;
    }
    println!("cutting {} off", args.city);
    apply(args.target.base_port, args.target.wan, Some(&args.city)).await?;
    let cut_at = Instant::now();
    // Clients of the cut city cannot be served; the others fail over.
    let rto = loop {
        if writer.write(Some(&args.city), &cities).await {
            break cut_at.elapsed();
        }
        if cut_at.elapsed() > DRILL_RECOVERY_MAX {
            apply(args.target.base_port, args.target.wan, None).await?;
            bail!("no write was acknowledged within {DRILL_RECOVERY_MAX:?} of the cut; healed");
        }
    };
    println!("RTO: first write acknowledged {:.2} s after the cut", rto.as_secs_f64());
    let keep_writing = Instant::now();
    while keep_writing.elapsed() < Duration::from_secs(1) {
        writer.write(Some(&args.city), &cities).await;
    }
    println!("healing");
    apply(args.target.base_port, args.target.wan, None).await?;
    // RPO: every acknowledged write, read back linearizably through each city.
    let mut lost = 0usize;
    for m in &members {
        let mut client = KvClient::connect(m.client_url.clone()).await?;
        // The prefix ends in '/'; the next byte value ends the range.
        let end = format!("{}0", DRILL_KEY_PREFIX.trim_end_matches('/'));
        let deadline = Instant::now() + DRILL_RECOVERY_MAX;
        let present: BTreeSet<String> = loop {
            let range = RangeRequest {
                key: DRILL_KEY_PREFIX.as_bytes().to_vec(),
                range_end: end.clone().into_bytes(),
                keys_only: true,
                ..Default::default()
            };
            match tokio::time::timeout(DRILL_REQUEST_TIMEOUT, client.range(range)).await {
                Ok(Ok(reply)) => {
                    break reply
                        .into_inner()
                        .kvs
                        .iter()
                        .map(|kv| String::from_utf8_lossy(&kv.key).to_string())
                        .collect()
                }
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => bail!("{} did not answer after healing", m.name),
            }
        };
        lost = lost.max(writer.acked.iter().filter(|k| !present.contains(*k)).count());
    }
    println!(
        "RPO: {lost} of {} acknowledged writes missing on the worst member ({})",
        writer.acked.len(),
        if lost == 0 { "nothing lost" } else { "DATA LOSS" }
    );
    if lost > 0 {
        bail!("acknowledged writes were lost");
    }
    Ok(())
}

pub async fn run(command: ChaosCommand) -> anyhow::Result<()> {
    match command {
        ChaosCommand::Status(target) => status(&target).await,
        ChaosCommand::Cut(args) => {
            check_city(&args.city)?;
            apply(args.target.base_port, args.target.wan, Some(&args.city)).await?;
            println!("{} is cut off from the other cities; `fivefold chaos heal` restores it", args.city);
            Ok(())
        }
        ChaosCommand::Heal(target) => {
            apply(target.base_port, target.wan, None).await?;
            println!("healed");
            Ok(())
        }
        ChaosCommand::Drill(args) => drill(&args).await,
    }
}
