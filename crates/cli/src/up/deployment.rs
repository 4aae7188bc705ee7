//! Where the members of `fivefold up` run, and how a city is cut off there.
//!
//! - [`Deployment::Loopback`]: one process per dc on 127.0.0.1. WAN delays (with
//!   `--wan` and no root) and cuts are rules in the members' own peer transport
//!   (`--experimental-fault-injection`), set over their peer ports.
//! - [`Deployment::Namespaces`] (`--wan` as root): testkit's WAN, one network
//!   namespace per dc, user-space delays between cities, cuts as blackhole routes
//!   in the kernel. Clients reach members through loopback portals.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use etcd_proto::fivefoldpb::peer_client::PeerClient;
use etcd_proto::fivefoldpb::{FaultRule, FaultRules};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::wan::{Wan, WanOptions};
use tokio::process::{Child, Command};

use super::{PORT_STRIDE, PRIMARY_CITY};

/// How long members may take to stop after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of setting one member's fault rules.
const RULES_TIMEOUT: Duration = Duration::from_secs(5);

/// The round trip between two cities of the default deployment, in ms.
pub fn wan_round_trip_ms(from: &str, to: &str) -> u32 {
    match (from, to) {
        (a, b) if a == b => 1,
        ("hangzhou", "shanghai") | ("shanghai", "hangzhou") => 10,
        _ => 30,
    }
}

/// Client and peer URLs of each member of a loopback deployment on `base_port`.
pub fn member_urls(base_port: u16) -> Vec<(String, String)> {
    (0..topology::DEFAULT_MEMBERS.len() as u16)
        .map(|i| {
            let client = base_port + PORT_STRIDE * i;
            (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{}", client + 1))
        })
        .collect()
}

pub struct LoopbackMember {
    pub client_url: String,
    pub peer_url: String,
    pub log: PathBuf,
    child: Child,
}

pub enum Deployment {
    Loopback { members: Vec<LoopbackMember>, wan_delays: bool },
    Namespaces(Box<Wan>),
}

impl Deployment {
    /// Starts one loopback process per member of the default deployment.
    pub fn start_loopback(
        exe: &Path,
        data_dir: &Path,
        base_port: u16,
        wan_delays: bool,
    ) -> anyhow::Result<Deployment> {
        let urls = member_urls(base_port);
        let cluster: Vec<String> = topology::DEFAULT_MEMBERS
            .iter()
            .zip(&urls)
            .map(|(m, (_, peer))| format!("{}={peer}", m.name))
            .collect();
        let cluster = cluster.join(",");
        let mut members = Vec::new();
        for (spec, (client_url, peer_url)) in topology::DEFAULT_MEMBERS.iter().zip(urls) {
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
                .args(["--listen-client-urls", &client_url, "--listen-peer-urls", &peer_url])
                .args(["--initial-cluster", &cluster, "--initial-cluster-token", "fivefold-up"])
                .args(["--initial-cluster-placement", &placement(), "--primary-city", PRIMARY_CITY])
                // Lets `fivefold chaos` cut cities off and `--wan` add delays.
                .arg("--experimental-fault-injection")
                .args(["--city", spec.city, "--dc", spec.name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting member {}", spec.name))?;
            members.push(LoopbackMember { client_url, peer_url, log, child });
        }
        Ok(Deployment::Loopback { members, wan_delays })
    }

    /// Builds the namespaces and starts a member in each (root only); waits until
    /// every member knows the leader.
    pub async fn start_namespaces(exe: &Path) -> anyhow::Result<Deployment> {
        let dcs: Vec<(&str, &str)> = topology::DEFAULT_MEMBERS.iter().map(|m| (m.name, m.city)).collect();
        let options = WanOptions::default()
            .dcs(&dcs)
            .intra_city(one_way("hangzhou", "hangzhou"))
            .delay("hangzhou", "shanghai", one_way("hangzhou", "shanghai"))
            .delay("hangzhou", "shenzhen", one_way("hangzhou", "shenzhen"))
            .delay("shanghai", "shenzhen", one_way("shanghai", "shenzhen"))
            .arg("--initial-cluster-placement", placement())
            .arg("--primary-city", PRIMARY_CITY);
        let wan = Wan::start(exe, options).await?;
        Ok(Deployment::Namespaces(Box::new(wan)))
    }

    /// The loopback URL a client in member `index`'s dc uses to reach it.
    pub fn client_url(&self, index: usize) -> anyhow::Result<String> {
        match self {
            Deployment::Loopback { members, .. } => Ok(members[index].client_url.clone()),
            Deployment::Namespaces(wan) => wan.client_url(index, index),
        }
    }

    pub fn client_urls(&self) -> anyhow::Result<Vec<String>> {
        (0..topology::DEFAULT_MEMBERS.len()).map(|index| self.client_url(index)).collect()
    }

    /// What sits between the cities, in a few words.
    pub fn wan_description(&self) -> String {
        let rtts = format!(
            "{} ms round trip hangzhou-shanghai, {} ms to shenzhen, {} ms inside a city",
            wan_round_trip_ms("hangzhou", "shanghai"),
            wan_round_trip_ms("hangzhou", "shenzhen"),
            wan_round_trip_ms("hangzhou", "hangzhou")
        );
        match self {
            Deployment::Loopback { wan_delays: false, .. } => "none (loopback, no added delay)".to_string(),
            Deployment::Loopback { wan_delays: true, .. } => {
                format!("emulated in the members' peer transport on loopback: {rtts}")
            }
            Deployment::Namespaces(wan) => {
                format!("one network namespace per dc (prefix {}), user-space delays: {rtts}", wan.prefix())
            }
        }
    }

    /// Takes every link between `city` and the other cities down, both ways.
    pub async fn cut(&mut self, city: &str) -> anyhow::Result<()> {
        match self {
            Deployment::Loopback { members, wan_delays } => set_rules(members, *wan_delays, Some(city)).await,
            Deployment::Namespaces(wan) => wan.cut_city(city).map(|_| ()),
        }
    }

    /// Brings every link back (WAN delays stay).
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        match self {
            Deployment::Loopback { members, wan_delays } => set_rules(members, *wan_delays, None).await,
            Deployment::Namespaces(wan) => wan.heal().map(|_| ()),
        }
    }

    /// Applies the WAN delays of a loopback deployment started with them.
    pub async fn apply_delays(&mut self) -> anyhow::Result<()> {
        match self {
            Deployment::Loopback { members, wan_delays: true } => set_rules(members, true, None).await,
            _ => Ok(()),
        }
    }

    /// A member process that exited: its name and how.
    pub fn exited(&mut self) -> Option<(&'static str, String)> {
        let Deployment::Loopback { members, .. } = self else { return None };
        for (spec, member) in topology::DEFAULT_MEMBERS.iter().zip(members.iter_mut()) {
            if let Ok(Some(status)) = member.child.try_wait() {
                return Some((spec.name, format!("{status}; see {}", member.log.display())));
            }
        }
        None
    }

    /// Stops every member: SIGTERM and a bounded wait on loopback; the WAN kills its
    /// members and removes its namespaces and temporary data.
    pub async fn stop(self) {
        match self {
            Deployment::Loopback { mut members, .. } => {
                for m in &members {
                    if let Some(pid) = m.child.id() {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    }
                }
                for (spec, m) in topology::DEFAULT_MEMBERS.iter().zip(members.iter_mut()) {
                    if tokio::time::timeout(STOP_TIMEOUT, m.child.wait()).await.is_err() {
                        eprintln!("member {} did not stop in {STOP_TIMEOUT:?}; killing it", spec.name);
                        let _ = m.child.kill().await;
                    }
                }
            }
            Deployment::Namespaces(wan) => drop(wan),
        }
    }

    /// Fails if a loopback member exited before the deployment was ready.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some((name, how)) = self.exited() {
            bail!("member {name} exited ({how})");
        }
        Ok(())
    }
}

fn one_way(a: &str, b: &str) -> Duration {
    Duration::from_micros(500 * u64::from(wan_round_trip_ms(a, b)))
}

/// `--initial-cluster-placement` of the default deployment.
fn placement() -> String {
    let placement: Vec<String> =
        topology::DEFAULT_MEMBERS.iter().map(|m| format!("{}={}", m.name, m.city)).collect();
    placement.join(",")
}

/// Sets every loopback member's fault rules: WAN delays (if on) and cuts between
/// `cut_city` and the rest.
async fn set_rules(members: &[LoopbackMember], wan: bool, cut_city: Option<&str>) -> anyhow::Result<()> {
    let specs = &topology::DEFAULT_MEMBERS;
    for (from_spec, from) in specs.iter().zip(members) {
        let mut rules = Vec::new();
        for (to_spec, to) in specs.iter().zip(members).filter(|(spec, _)| spec.name != from_spec.name) {
            let cut = cut_city.is_some_and(|city| (from_spec.city == city) != (to_spec.city == city));
            let delay_ms = if wan { wan_round_trip_ms(from_spec.city, to_spec.city) } else { 0 };
            rules.push(FaultRule { peer_url: to.peer_url.clone(), drop: cut, delay_ms });
        }
        let set = async {
            let mut peer = PeerClient::connect(from.peer_url.clone()).await?;
            peer.inject_faults(FaultRules { rules }).await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(RULES_TIMEOUT, set)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|set| set)
            .with_context(|| format!("setting the fault rules of {} at {}", from_spec.name, from.peer_url))?;
    }
    Ok(())
}
