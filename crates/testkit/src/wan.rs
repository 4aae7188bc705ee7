//! A WAN on one machine: one network namespace per data center, user-space delays
//! between them, a `fivefold store` member in each, and the faults a chaos test
//! needs (kill -9, pause, partition a dc, cut a city, heal). Needs root.
//!
//! # Layout
//!
//! For WAN number `n` of test process `pid`, with prefix `ffwan<pid>-<n>-`:
//!
//! ```text
//!   ns <prefix>hz-a             ns <prefix>wan (router)            ns <prefix>sz-a
//!  ┌─────────────────────┐     ┌──────────────────────────┐     ┌─────────────────────┐
//!  │ member hz-a         │     │ dc0 10.231.10.1/24       │     │ member sz-a         │
//!  │  on 10.231.0.1 (lo) │     │ ...  ip_forward=1        │     │  on 10.231.0.5 (lo) │
//!  │  and 10.231.10.2    │wan0─┤ dc4 10.231.14.1/24       ├─wan0│  and 10.231.14.2    │
//!  │ relays on 10.231.0.2│veth │ cuts: `ip rule ...       │veth │ relays on 10.231.0.1│
//!  │  ..0.5 → 10.231.1x.2│     │   blackhole` per dc pair │     │  ..0.4 → 10.231.1x.2│
//!  └─────────────────────┘     └──────────────────────────┘     └─────────────────────┘
//! ```
//!
//! Member `i` advertises `10.231.0.(i+1)` (client port 2379, peer port 2380). Inside
//! its own namespace that address is the member itself; inside every other
//! namespace it is a relay of the test process (a thread that entered that
//! namespace with `setns`), which forwards each connection to the member's link
//! address `10.231.(10+i).2` over the namespace's veth and the router, holding every
//! chunk for the one-way delay between the two cities in each direction (module
//! `relay`). So every byte between two members crosses exactly one relay and two
//! real links, and a client placed in dc X sees X's delays.
//!
//! Cuts are made in the kernel, not in the relays: a cut link is a pair of
//! `blackhole` policy rules in the router namespace, so packets between the two dcs
//! are dropped silently in both directions, exactly like a pulled cable: open TCP
//! connections stall and retransmit, new ones time out, and they recover by
//! themselves after [`Wan::heal`]. Addresses in 10.231.0.0/16 exist only inside
//! these namespaces, which have no link to any other namespace: nothing leaves them.
//!
//! Tests reach members through *portals*: a loopback port in the test process's own
//! namespace whose connections are dialed from inside a chosen dc's namespace
//! ([`Wan::client`]). A portal adds no delay; the relay it dials into does.
//!
//! **Known gap:** a relay accepts a connection locally before it dials onward, so
//! while a link is cut a *new* connection across it looks established to the
//! dialer and then stalls (its onward dial gives up after 5 s and closes it),
//! where a real cut would make the connect itself time out.

mod netns;
mod relay;

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, ConnectOptions};
use nix::sys::signal::Signal;

use crate::member::{self, MemberProcess, Members, LOG_TAIL_LINES, POLL_INTERVAL, STATUS_TIMEOUT};
use crate::spawner::Spawner;
use crate::tools::{find_on_path, REQUIRE_ALL_ENV};
use netns::{Namespaces, Netns};
use relay::{Relays, Route, Service};

pub use netns::NAME_PREFIX;

/// Client port of every member (each member has its own addresses).
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member.
pub const PEER_PORT: u16 = 2380;
/// Port of the echo service in every dc, relayed like the members' ports.
pub const ECHO_PORT: u16 = 2390;
/// Most data centers one WAN can have (address plan: 10.231.0.(i+1), 10.231.(10+i).0/24).
pub const DCS_MAX: usize = 32;

/// Deadline of every request made through [`Wan::client`].
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Priority of the router's blackhole rules.
const CUT_RULE_PRIORITY: &str = "100";

/// Launchers started by this process, for unique namespace names.
static LAUNCHED: AtomicU32 = AtomicU32::new(0);

/// One data center: its name (also the member's name) and its city.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcSpec {
    pub name: String,
    pub city: String,
}

impl DcSpec {
    pub fn new(name: &str, city: &str) -> DcSpec {
        DcSpec { name: name.to_string(), city: city.to_string() }
    }
}

/// How to start a [`Wan`].
#[derive(Debug, Clone)]
pub struct WanOptions {
    /// The data centers, one member each, in member order.
    pub dcs: Vec<DcSpec>,
    /// One-way delay between two dcs of the same city.
    pub intra_city: Duration,
    /// One-way delay between two cities, either order.
    pub city_delays: Vec<(String, String, Duration)>,
    /// One-way delay between two cities that `city_delays` does not list.
    pub other_cities: Duration,
    /// Flags appended to every member's command line.
    pub extra_args: Vec<String>,
    /// Bound on waiting for members to answer with a leader.
    pub ready_timeout: Duration,
    /// `--initial-cluster-token`.
    pub token: String,
    /// Run this etcd binary as the members instead of `fivefold store` (for
    /// side-by-side measurements); `extra_args` then go to etcd.
    pub etcd: Option<PathBuf>,
}

impl Default for WanOptions {
    /// The standard deployment: hz-a, hz-b (hangzhou), sh-a, sh-b (shanghai), sz-a
    /// (shenzhen); 0.5 ms one way inside a city, 5 ms hangzhou–shanghai, 15 ms to
    /// shenzhen.
    fn default() -> WanOptions {
        WanOptions {
            dcs: vec![
                DcSpec::new("hz-a", "hangzhou"),
                DcSpec::new("hz-b", "hangzhou"),
                DcSpec::new("sh-a", "shanghai"),
                DcSpec::new("sh-b", "shanghai"),
                DcSpec::new("sz-a", "shenzhen"),
            ],
            intra_city: Duration::from_micros(500),
            city_delays: vec![
                ("hangzhou".to_string(), "shanghai".to_string(), Duration::from_millis(5)),
                ("hangzhou".to_string(), "shenzhen".to_string(), Duration::from_millis(15)),
                ("shanghai".to_string(), "shenzhen".to_string(), Duration::from_millis(15)),
            ],
            other_cities: Duration::from_millis(15),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            token: "fivefold-wan-test".to_string(),
            etcd: None,
        }
    }
}

impl WanOptions {
    /// Replaces the data centers.
    pub fn dcs(mut self, dcs: &[(&str, &str)]) -> WanOptions {
        self.dcs = dcs.iter().map(|(name, city)| DcSpec::new(name, city)).collect();
        self
    }

    /// Sets the one-way delay between cities `a` and `b` (either order).
    pub fn delay(mut self, a: &str, b: &str, one_way: Duration) -> WanOptions {
        self.city_delays.retain(|(x, y, _)| !((x == a && y == b) || (x == b && y == a)));
        self.city_delays.push((a.to_string(), b.to_string(), one_way));
        self
    }

    /// Runs `etcd` (an etcd v3 server binary) in every dc instead of fivefold.
    pub fn etcd(mut self, etcd: &Path) -> WanOptions {
        self.etcd = Some(etcd.to_path_buf());
        self
    }

    /// Sets the one-way delay inside a city.
    pub fn intra_city(mut self, one_way: Duration) -> WanOptions {
        self.intra_city = one_way;
        self
    }

    /// Appends `flag value` to every member's command line.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> WanOptions {
        self.extra_args.push(flag.to_string());
        self.extra_args.push(value.to_string());
        self
    }

    /// The one-way delay between a dc in city `a` and one in city `b`.
    pub fn one_way(&self, a: &str, b: &str) -> Duration {
        if a == b {
            return self.intra_city;
        }
        self.city_delays
            .iter()
            .find(|(x, y, _)| (x == a && y == b) || (x == b && y == a))
            .map_or(self.other_cities, |(_, _, delay)| *delay)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.dcs.is_empty(), "a WAN needs at least one data center");
        anyhow::ensure!(self.dcs.len() <= DCS_MAX, "at most {DCS_MAX} data centers");
        let mut seen = BTreeSet::new();
        for dc in &self.dcs {
            let valid = |text: &str| {
                !text.is_empty()
                    && text.len() <= 24
                    && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            };
            anyhow::ensure!(
                valid(&dc.name) && valid(&dc.city),
                "dc {:?} in city {:?}: names must be 1..=24 of [a-z0-9-]",
                dc.name,
                dc.city
            );
            anyhow::ensure!(seen.insert(dc.name.clone()), "dc {} is listed twice", dc.name);
            anyhow::ensure!(dc.name != "wan", "dc name `wan` is the router's");
        }
        Ok(())
    }
}

/// This machine cannot build a WAN (not root, no `ip`, namespaces refused).
#[derive(Debug)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// A fault injected into a [`Wan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the member in this dc.
    Kill(String),
    /// SIGSTOP.
    Pause(String),
    /// SIGCONT.
    Resume(String),
    /// The member started again after a kill.
    Restart(String),
    /// All links of one dc down.
    Partition(String),
    /// All links between a city and the other cities down.
    CutCity(String),
    /// All links between these dcs and the others down.
    Cut(Vec<String>),
    /// Every link up again.
    Heal,
}

/// When a fault was injected: `began` just before the first action, `applied` once
/// the last one had taken effect (for a cut: every rule in place).
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub fault: Fault,
    pub began: Instant,
    pub applied: Instant,
}

/// Round trips measured between two dcs.
#[derive(Debug, Clone)]
pub struct Rtt {
    pub from: String,
    pub to: String,
    /// The configured round trip: twice the one-way delay.
    pub configured: Duration,
    /// Sorted samples.
    pub samples: Vec<Duration>,
}

impl Rtt {
    pub fn min(&self) -> Duration {
        self.samples.first().copied().unwrap_or_default()
    }

    pub fn median(&self) -> Duration {
        self.samples.get(self.samples.len() / 2).copied().unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.samples.last().copied().unwrap_or_default()
    }
}

struct Member {
    dc: DcSpec,
    ns: Arc<Netns>,
    data_dir: PathBuf,
    args: Vec<String>,
    /// Name (the dc's), log file, child and learned id.
    process: MemberProcess,
    paused: bool,
}

/// A running WAN. Dropping it kills every member (paused ones too), stops the
/// relays, deletes the namespaces (and with them the veths) and the temporary root,
/// unless `FIVEFOLD_KEEP_TEST_DIRS=1`; if the test is panicking, the tail of each
/// member's log is printed first.
pub struct Wan {
    bin: PathBuf,
    options: WanOptions,
    prefix: String,
    members: Vec<Member>,
    router: String,
    spawner: Spawner,
    setpriv: Option<PathBuf>,
    /// Portals by (from dc, to member): loopback address in this process's namespace.
    portals: Mutex<HashMap<(usize, usize), SocketAddr>>,
    /// One client per member for Status polls, from the member's own dc.
    status_clients: tokio::sync::Mutex<HashMap<usize, Client>>,
    /// Cut links as (lower dc index, higher dc index).
    cut: BTreeSet<(usize, usize)>,
    faults: Vec<FaultRecord>,
    /// Dropped after the members are dead: relays first, then namespaces, then files.
    relays: Relays,
    namespaces: Namespaces,
    root: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Wan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wan").field("prefix", &self.prefix).field("cut", &self.cut).finish_non_exhaustive()
    }
}

/// Whether this process can build a WAN; `Err` says why not.
pub fn supported() -> Result<PathBuf, Unsupported> {
    let ip = find_ip().ok_or_else(|| {
        Unsupported("needs `ip` from iproute2 (install it with: apt-get install iproute2)".to_string())
    })?;
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        return Err(Unsupported(format!("needs root to create network namespaces (running as uid {uid})")));
    }
    Ok(ip)
}

fn find_ip() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_on_path("ip", &path).or_else(|| {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].iter().find_map(|p| find_on_path(p, &path))
    })
}

/// Link address of dc `index` (on its veth): what relays forward to.
fn link_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, 10 + index as u8, 2)
}

fn router_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, 10 + index as u8, 1)
}

fn subnet(index: usize) -> String {
    format!("10.231.{}.0/24", 10 + index)
}

/// The address member `index` advertises (its own inside its dc, a relay elsewhere).
pub fn member_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 231, 0, index as u8 + 1)
}

impl Wan {
    /// Builds the namespaces, links and relays, starts one member of `bin store` per
    /// dc and waits, bounded by `options.ready_timeout`, until each answers Status
    /// with a leader. Fails with [`Unsupported`] (see [`Wan::start_or_skip`]) where
    /// the machine cannot do it. Whatever was built is removed again on failure.
    pub async fn start(bin: &Path, options: WanOptions) -> anyhow::Result<Wan> {
        options.validate()?;
        let ip = supported()?;
        netns::remove_stale(&ip);
        let prefix =
            format!("{NAME_PREFIX}{}-{}-", std::process::id(), LAUNCHED.fetch_add(1, Ordering::SeqCst));
        let root = tempfile::Builder::new().prefix("fivefold-wan-").tempdir()?;
        let setpriv = find_on_path("setpriv", &std::env::var_os("PATH").unwrap_or_default());
        let bin = options.etcd.as_deref().unwrap_or(bin);
        anyhow::ensure!(bin.is_file(), "member binary {} does not exist", bin.display());
        let mut wan = Wan {
            bin: bin.to_path_buf(),
            prefix: prefix.clone(),
            members: Vec::new(),
            router: format!("{prefix}wan"),
            spawner: Spawner::new()?,
            setpriv,
            portals: Mutex::new(HashMap::new()),
            status_clients: tokio::sync::Mutex::new(HashMap::new()),
            cut: BTreeSet::new(),
            faults: Vec::new(),
            relays: Relays::new(),
            namespaces: Namespaces::new(ip),
            root: None,
            options,
        };
        let router = match wan.namespaces.add(&wan.router) {
            Ok(router) => Arc::new(router),
            Err(error) => {
                let text = format!("{error:#}");
                if text.contains("Operation not permitted") || text.contains("Permission denied") {
                    return Err(Unsupported(format!("cannot create network namespaces: {text}")).into());
                }
                return Err(error);
            }
        };
        wan.build_network(&router, root.path())?;
        wan.root = Some(root);
        wan.start_relays()?;
        for index in 0..wan.members.len() {
            wan.spawn(index)?;
        }
        let all: Vec<usize> = (0..wan.members.len()).collect();
        wan.wait_ready(&all).await?;
        Ok(wan)
    }

    /// [`Wan::start`], except that where this machine cannot build a WAN it prints
    /// `skipped: ...` and returns `Ok(None)`, or panics if `FIVEFOLD_REQUIRE_ALL=1`.
    pub async fn start_or_skip(bin: &Path, options: WanOptions) -> anyhow::Result<Option<Wan>> {
        match Wan::start(bin, options).await {
            Ok(wan) => Ok(Some(wan)),
            Err(error) => match error.downcast::<Unsupported>() {
                Ok(unsupported) => {
                    skip(&unsupported);
                    Ok(None)
                }
                Err(error) => Err(error),
            },
        }
    }

    fn build_network(&mut self, router: &Arc<Netns>, root: &Path) -> anyhow::Result<()> {
        let count = self.options.dcs.len();
        let mut router_lines = Vec::new();
        for (index, dc) in self.options.dcs.clone().into_iter().enumerate() {
            let ns = Arc::new(self.namespaces.add(&format!("{}{}", self.prefix, dc.name))?);
            self.namespaces.ip(&[
                "-n",
                &ns.name,
                "link",
                "add",
                "wan0",
                "type",
                "veth",
                "peer",
                "name",
                &format!("dc{index}"),
                "netns",
                &router.name,
            ])?;
            let mut lines: Vec<String> =
                (0..count).map(|other| format!("address add {}/32 dev lo", member_addr(other))).collect();
            lines.push(format!("address add {}/24 dev wan0", link_addr(index)));
            lines.push("link set wan0 up".to_string());
            lines.push(format!("route add 10.231.0.0/16 via {}", router_addr(index)));
            self.namespaces.batch(&ns.name, &lines)?;
            router_lines.push(format!("address add {}/24 dev dc{index}", router_addr(index)));
            router_lines.push(format!("link set dc{index} up"));
            self.members.push(Member {
                data_dir: root.join(format!("{}.data", dc.name)),
                process: MemberProcess::new(dc.name.clone(), root.join(format!("{}.log", dc.name))),
                dc,
                ns,
                args: Vec::new(),
                paused: false,
            });
        }
        self.namespaces.batch(&router.name, &router_lines)?;
        enable_forwarding(router.clone())?;
        let initial_cluster = (0..count)
            .map(|index| format!("{}=http://{}:{PEER_PORT}", self.members[index].dc.name, member_addr(index)))
            .collect::<Vec<_>>()
            .join(",");
        for index in 0..count {
            std::fs::create_dir_all(&self.members[index].data_dir)?;
            self.members[index].args = self.member_args(index, &initial_cluster);
        }
        Ok(())
    }

    /// In every dc: the echo service, and a relay for each other member's client,
    /// peer and echo ports.
    fn start_relays(&mut self) -> anyhow::Result<()> {
        let count = self.members.len();
        for here in 0..count {
            let ns = self.members[here].ns.clone();
            let delays: Vec<Duration> = (0..count).map(|there| self.one_way(here, there)).collect();
            let routes = in_thread(move || -> std::io::Result<Vec<Route>> {
                ns.enter()?;
                // Specific addresses only: a wildcard listener would clash with the relays.
                let mut routes = Vec::new();
                for address in [member_addr(here), link_addr(here)] {
                    routes.push(Route {
                        listener: TcpListener::bind((address, ECHO_PORT))?,
                        service: Service::Echo,
                    });
                }
                for (there, delay) in delays.into_iter().enumerate().filter(|(there, _)| *there != here) {
                    for port in [CLIENT_PORT, PEER_PORT, ECHO_PORT] {
                        routes.push(Route {
                            listener: TcpListener::bind((member_addr(there), port))?,
                            service: Service::Relay {
                                target: SocketAddr::V4(SocketAddrV4::new(link_addr(there), port)),
                                dial_from: ns.clone(),
                                delay,
                            },
                        });
                    }
                }
                Ok(routes)
            })
            .and_then(|routes| routes)
            .with_context(|| format!("binding relays in {}", self.members[here].ns.name))?;
            self.relays.serve(routes)?;
        }
        Ok(())
    }

    fn member_args(&self, index: usize, initial_cluster: &str) -> Vec<String> {
        let member = &self.members[index];
        let advertised = member_addr(index);
        let link = link_addr(index);
        let mut args: Vec<String> = [
            "--name",
            &member.dc.name,
            "--data-dir",
            &member.data_dir.to_string_lossy(),
            "--listen-client-urls",
            &format!("http://{advertised}:{CLIENT_PORT},http://{link}:{CLIENT_PORT}"),
            "--advertise-client-urls",
            &format!("http://{advertised}:{CLIENT_PORT}"),
            "--listen-peer-urls",
            &format!("http://{advertised}:{PEER_PORT},http://{link}:{PEER_PORT}"),
            "--initial-advertise-peer-urls",
            &format!("http://{advertised}:{PEER_PORT}"),
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.options.token,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        if self.options.etcd.is_none() {
            args.insert(0, "store".to_string());
            args.extend(["--city", &member.dc.city, "--dc", &member.dc.name].map(String::from));
        }
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        let mut command = member::command(self.setpriv.as_deref(), self.namespaces.ip_path());
        // `ip netns exec` execs in place, so the child's pid is the member's.
        command.args(["netns", "exec", &member.ns.name]).arg(&self.bin).args(&member.args);
        let (bin, ns) = (&self.bin, &member.ns);
        member
            .process
            .spawn(&self.spawner, command, || format!("spawning {} in {}", bin.display(), ns.name))?;
        member.paused = false;
        Ok(())
    }

    /// Number of members (one per dc).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a WAN has at least one dc.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The options the WAN started with.
    pub fn options(&self) -> &WanOptions {
        &self.options
    }

    /// Dc (and member) `index`.
    pub fn dc(&self, index: usize) -> &DcSpec {
        &self.members[index].dc
    }

    /// The index of the dc named `name`.
    pub fn index_of_dc(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|member| member.dc.name == name)
    }

    /// Indexes of the dcs in `city`.
    pub fn dcs_in_city(&self, city: &str) -> Vec<usize> {
        (0..self.members.len()).filter(|index| self.members[*index].dc.city == city).collect()
    }

    /// The configured one-way delay from dc `from` to dc `to` (zero inside one dc).
    pub fn one_way(&self, from: usize, to: usize) -> Duration {
        if from == to {
            return Duration::ZERO;
        }
        self.options.one_way(&self.members[from].dc.city, &self.members[to].dc.city)
    }

    /// The prefix of every namespace name of this WAN.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Names of this WAN's namespaces (the router's and one per dc).
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces.names().to_vec()
    }

    /// The namespace of dc `index` (for `ip netns exec`).
    pub fn namespace(&self, index: usize) -> &str {
        &self.members[index].ns.name
    }

    /// Pid of member `index`'s process, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members[index].process.child.as_ref().map(Child::id)
    }

    /// Whether member `index`'s process is running (paused counts as running).
    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].process.is_running()
    }

    /// Whether member `index` is paused (SIGSTOP) now.
    pub fn is_paused(&self, index: usize) -> bool {
        self.members[index].paused
    }

    /// Relay threads running now.
    pub fn relay_threads(&self) -> usize {
        self.relays.threads()
    }

    /// The member id that member `index` reported in a Status header, if it has
    /// answered one yet (every member has after [`Wan::start`]).
    pub fn member_id(&self, index: usize) -> Option<u64> {
        self.members[index].process.id()
    }

    /// The index of the member with id `id`, among the ids learned so far.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|member| id != 0 && member.process.id() == Some(id))
    }

    /// `http://127.0.0.1:PORT`: a loopback endpoint in the test process's namespace
    /// whose connections reach member `to` as if dialed from inside dc `from`, with
    /// `from`'s delays (none when `from == to`). Also usable by etcdctl.
    pub fn client_url(&self, from: usize, to: usize) -> anyhow::Result<String> {
        Ok(format!("http://{}", self.portal(from, to)?))
    }

    /// A client placed in dc `from`, connected to member `to` only. Every request made
    /// through it has a deadline of 10 s.
    pub async fn client(&self, from: usize, to: usize) -> anyhow::Result<Client> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CLIENT_CONNECT_TIMEOUT)
            .with_timeout(CLIENT_REQUEST_TIMEOUT);
        self.client_with(from, to, options).await
    }

    /// [`Wan::client`] with the caller's options.
    pub async fn client_with(
        &self,
        from: usize,
        to: usize,
        options: ConnectOptions,
    ) -> anyhow::Result<Client> {
        let url = self.client_url(from, to)?;
        Client::connect([url.as_str()], Some(options)).await.with_context(|| format!("client for {url}"))
    }

    fn portal(&self, from: usize, to: usize) -> anyhow::Result<SocketAddr> {
        anyhow::ensure!(from < self.members.len() && to < self.members.len(), "no dc {from} or {to}");
        let mut portals = self.portals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(address) = portals.get(&(from, to)) {
            return Ok(*address);
        }
        // Bound on this (test) thread, which never enters a namespace: loopback here.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let address = listener.local_addr()?;
        self.relays.serve(vec![Route {
            listener,
            service: Service::Relay {
                target: SocketAddr::V4(SocketAddrV4::new(member_addr(to), CLIENT_PORT)),
                dial_from: self.members[from].ns.clone(),
                delay: Duration::ZERO,
            },
        }])?;
        portals.insert((from, to), address);
        Ok(address)
    }

    /// Round trips from dc `from` to dc `to` through the same relays and links the
    /// members use (a TCP ping-pong with the echo service in `to`), `samples` of them;
    /// fails if a connect or an exchange takes over 5 s.
    pub async fn measure_rtt(&self, from: usize, to: usize, samples: usize) -> anyhow::Result<Rtt> {
        self.ping(from, to, samples, Duration::from_secs(5)).await
    }

    /// [`Wan::measure_rtt`] with its own bound on each step: across a cut link it
    /// fails after about `timeout`.
    pub async fn ping(
        &self,
        from: usize,
        to: usize,
        samples: usize,
        timeout: Duration,
    ) -> anyhow::Result<Rtt> {
        anyhow::ensure!(from < self.members.len() && to < self.members.len(), "no dc {from} or {to}");
        let ns = self.members[from].ns.clone();
        let target = SocketAddr::V4(SocketAddrV4::new(member_addr(to), ECHO_PORT));
        let mut measured = run_blocking(move || relay::ping(ns, target, samples, timeout))
            .await
            .and_then(|result| result)
            .with_context(|| {
                format!("ping {} -> {}", self.members[from].dc.name, self.members[to].dc.name)
            })?;
        measured.sort();
        Ok(Rtt {
            from: self.members[from].dc.name.clone(),
            to: self.members[to].dc.name.clone(),
            configured: self.one_way(from, to) + self.one_way(to, from),
            samples: measured,
        })
    }

    /// One bounded Status call to member `index` from its own dc: `(member id, leader
    /// id)`, remembering the id.
    pub async fn status(&self, index: usize) -> Option<(u64, u64)> {
        let mut client = {
            let mut clients = self.status_clients.lock().await;
            match clients.get(&index) {
                Some(client) => client.clone(),
                None => {
                    let options = ConnectOptions::new()
                        .with_connect_timeout(STATUS_TIMEOUT)
                        .with_timeout(STATUS_TIMEOUT);
                    let client = self.client_with(index, index, options).await.ok()?;
                    clients.insert(index, client.clone());
                    client
                }
            }
        };
        self.members[index].process.status(&mut client).await
    }

    /// The index of the current leader: a running, unpaused member that says it leads
    /// and that a majority of all members name as leader. Waits, bounded by the
    /// ready timeout, until there is one.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        self.leader_within(self.options.ready_timeout).await
    }

    /// [`Wan::leader`] with its own bound.
    pub async fn leader_within(&self, limit: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let polls = (0..self.members.len())
                .filter(|index| self.is_running(*index) && !self.is_paused(*index))
                .map(|index| async move { (index, self.status(index).await) });
            let seen: Vec<(usize, u64, u64)> = futures_join_all(polls)
                .await
                .into_iter()
                .filter_map(|(index, status)| status.map(|(id, leader)| (index, id, leader)))
                .collect();
            let majority = self.members.len() / 2 + 1;
            for (index, id, _) in seen.iter().filter(|(_, id, leader)| id == leader && *leader != 0) {
                if seen.iter().filter(|(_, _, leader)| leader == id).count() >= majority {
                    return Ok(*index);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no leader agreed by a majority within {limit:?}; (member, id, leader) seen: {seen:?}\n{}",
                    self.log_tails(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Makes member `target` the leader (MoveLeader sent to the current leader) and
    /// waits, bounded by the ready timeout, until a majority names it.
    pub async fn move_leader(&self, target: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.options.ready_timeout;
        loop {
            let leader = self.leader().await?;
            if leader == target {
                return Ok(());
            }
            let id = self.member_id(target).ok_or_else(|| anyhow!("member {target} has no known id"))?;
            let mut client = self.client(leader, leader).await?;
            // The leader answers once the move is done or failed; either way look again.
            let _ = tokio::time::timeout(Duration::from_secs(10), client.move_leader(id)).await;
            if Instant::now() >= deadline {
                bail!("could not move the leadership to {}", self.members[target].dc.name);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until each member in `indexes` answers Status with a non-zero leader.
    /// Fails early if one of them exits.
    pub async fn wait_ready(&mut self, indexes: &[usize]) -> anyhow::Result<()> {
        let timeout = self.options.ready_timeout;
        member::wait_ready(self, indexes, timeout).await
    }

    // ----- faults -----

    /// Crashes member `index` with SIGKILL and reaps it.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<FaultRecord> {
        let began = Instant::now();
        let name = self.members[index].dc.name.clone();
        self.members[index].process.kill()?;
        self.members[index].paused = false;
        Ok(self.record(Fault::Kill(name), began))
    }

    /// Starts killed member `index` again with the same command line and data dir;
    /// does not wait (see [`Wan::wait_ready`]).
    pub fn restart(&mut self, index: usize) -> anyhow::Result<FaultRecord> {
        let began = Instant::now();
        let name = self.members[index].dc.name.clone();
        anyhow::ensure!(!self.is_running(index), "{name} is still running");
        self.spawn(index)?;
        Ok(self.record(Fault::Restart(name), began))
    }

    /// Freezes member `index` (SIGSTOP).
    pub fn pause(&mut self, index: usize) -> anyhow::Result<FaultRecord> {
        let began = Instant::now();
        self.members[index].process.signal(Signal::SIGSTOP)?;
        self.members[index].paused = true;
        Ok(self.record(Fault::Pause(self.members[index].dc.name.clone()), began))
    }

    /// Thaws a member frozen by [`Wan::pause`] (SIGCONT).
    pub fn resume(&mut self, index: usize) -> anyhow::Result<FaultRecord> {
        let began = Instant::now();
        self.members[index].process.signal(Signal::SIGCONT)?;
        self.members[index].paused = false;
        Ok(self.record(Fault::Resume(self.members[index].dc.name.clone()), began))
    }

    /// Takes every link of dc `index` down, both directions.
    pub fn partition(&mut self, index: usize) -> anyhow::Result<FaultRecord> {
        let name = self.members[index].dc.name.clone();
        self.cut_between(&[index], Fault::Partition(name))
    }

    /// Takes every link between `city` and the other cities down at once, both
    /// directions; links between dcs inside the city stay up.
    pub fn cut_city(&mut self, city: &str) -> anyhow::Result<FaultRecord> {
        let dcs = self.dcs_in_city(city);
        anyhow::ensure!(!dcs.is_empty(), "no dc in city {city}");
        self.cut_between(&dcs, Fault::CutCity(city.to_string()))
    }

    /// Takes every link between the dcs in `group` and the others down at once.
    pub fn cut(&mut self, group: &[usize]) -> anyhow::Result<FaultRecord> {
        let names = group.iter().map(|index| self.members[*index].dc.name.clone()).collect();
        self.cut_between(group, Fault::Cut(names))
    }

    /// Every link up again (open connections recover by TCP retransmission).
    pub fn heal(&mut self) -> anyhow::Result<FaultRecord> {
        let began = Instant::now();
        let lines: Vec<String> = self.cut.iter().map(|(a, b)| rules("del", *a, *b)).collect();
        self.namespaces.batch(&self.router, &lines)?;
        self.cut.clear();
        Ok(self.record(Fault::Heal, began))
    }

    /// Links cut now, as pairs of dc names.
    pub fn cut_links(&self) -> Vec<(String, String)> {
        self.cut
            .iter()
            .map(|(a, b)| (self.members[*a].dc.name.clone(), self.members[*b].dc.name.clone()))
            .collect()
    }

    fn cut_between(&mut self, group: &[usize], fault: Fault) -> anyhow::Result<FaultRecord> {
        let began = Instant::now();
        let inside: BTreeSet<usize> = group.iter().copied().collect();
        anyhow::ensure!(inside.iter().all(|index| *index < self.members.len()), "no such dc in {group:?}");
        let mut added = Vec::new();
        for a in &inside {
            for b in (0..self.members.len()).filter(|b| !inside.contains(b)) {
                let pair = (*a.min(&b), *a.max(&b));
                if !self.cut.contains(&pair) {
                    added.push(pair);
                }
            }
        }
        let lines: Vec<String> = added.iter().map(|(a, b)| rules("add", *a, *b)).collect();
        self.namespaces.batch(&self.router, &lines)?;
        self.cut.extend(added);
        Ok(self.record(fault, began))
    }

    fn record(&mut self, fault: Fault, began: Instant) -> FaultRecord {
        let record = FaultRecord { fault, began, applied: Instant::now() };
        self.faults.push(record.clone());
        record
    }

    /// Every fault injected so far, in order.
    pub fn faults(&self) -> &[FaultRecord] {
        &self.faults
    }

    // ----- logs -----

    /// Everything member `index` wrote to stdout and stderr, across restarts.
    pub fn log(&self, index: usize) -> String {
        self.members[index].process.log()
    }

    /// The last `lines` lines of every member's log, with a heading per member.
    pub fn log_tails(&self, lines: usize) -> String {
        member::log_tails(self.members.iter().map(|member| &member.process), lines)
    }
}

impl Members for Wan {
    fn process(&self, index: usize) -> &MemberProcess {
        &self.members[index].process
    }

    fn process_mut(&mut self, index: usize) -> &mut MemberProcess {
        &mut self.members[index].process
    }

    fn log_tails(&self, lines: usize) -> String {
        Wan::log_tails(self, lines)
    }

    async fn poll_status(&self, index: usize) -> Option<(u64, u64)> {
        self.status(index).await
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        member::drop_members(
            self.members.iter_mut().map(|member| &mut member.process),
            &mut self.root,
            "WAN",
        );
        // Fields drop next: relays (threads stop), namespaces (deleted), root.
    }
}

/// The two blackhole rules (one per direction) of the link between dcs `a` and `b`.
fn rules(verb: &str, a: usize, b: usize) -> String {
    let (sa, sb) = (subnet(a), subnet(b));
    format!(
        "rule {verb} from {sa} to {sb} blackhole priority {CUT_RULE_PRIORITY}\n\
         rule {verb} from {sb} to {sa} blackhole priority {CUT_RULE_PRIORITY}"
    )
}

/// Prints why a WAN test is skipped, or panics when every test must run.
fn skip(reason: &Unsupported) {
    if std::env::var(REQUIRE_ALL_ENV).is_ok_and(|value| value == "1") {
        panic!("the WAN test needs what this machine lacks ({REQUIRE_ALL_ENV}=1): {reason}");
    }
    eprintln!("skipped: {reason} (set {REQUIRE_ALL_ENV}=1 to fail instead)");
}

/// `ip_forward=1` in the router: written by a thread that entered the namespace
/// (`/proc/sys/net` is per network namespace of the calling thread).
fn enable_forwarding(router: Arc<Netns>) -> anyhow::Result<()> {
    in_thread(move || -> std::io::Result<()> {
        router.enter()?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")?;
        let now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
        if now.trim() != "1" {
            return Err(std::io::Error::other(format!("ip_forward reads {now:?} after writing 1")));
        }
        Ok(())
    })
    .and_then(|result| result)
    .context("enabling forwarding in the router namespace")
}

/// Runs `work` on a new thread and waits for it: for anything that enters a
/// namespace, which must never happen on a thread that runs other work later.
fn in_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    std::thread::Builder::new()
        .name("wan-setup".to_string())
        .spawn(work)?
        .join()
        .map_err(|_| std::io::Error::other("a WAN setup thread panicked"))
}

/// [`in_thread`] for async callers: the runtime's thread is not blocked.
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("wan-work".to_string()).spawn(move || {
        let _ = done.send(work());
    })?;
    result.await.map_err(|_| std::io::Error::other("a WAN worker thread panicked"))
}

/// Polls futures concurrently until all are done (a small `join_all`, to keep
/// testkit's dependencies few).
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(context) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|output| output.expect("every future finished")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_delays_follow_the_cities() {
        let options = WanOptions::default();
        assert_eq!(options.one_way("hangzhou", "hangzhou"), Duration::from_micros(500));
        assert_eq!(options.one_way("hangzhou", "shanghai"), Duration::from_millis(5));
        assert_eq!(options.one_way("shanghai", "hangzhou"), Duration::from_millis(5));
        assert_eq!(options.one_way("shenzhen", "hangzhou"), Duration::from_millis(15));
        assert_eq!(options.one_way("shanghai", "shenzhen"), Duration::from_millis(15));
        let changed = options.delay("shenzhen", "shanghai", Duration::from_millis(20));
        assert_eq!(changed.one_way("shanghai", "shenzhen"), Duration::from_millis(20));
        assert_eq!(changed.city_delays.len(), 3);
    }

    #[test]
    fn invalid_placements_are_refused() {
        assert!(WanOptions::default().validate().is_ok());
        assert!(WanOptions::default().dcs(&[]).validate().is_err());
        assert!(WanOptions::default().dcs(&[("a", "x"), ("a", "y")]).validate().is_err());
        assert!(WanOptions::default().dcs(&[("A B", "x")]).validate().is_err());
        assert!(WanOptions::default().dcs(&[("wan", "x")]).validate().is_err());
    }

    #[test]
    fn addresses_stay_in_the_private_plan() {
        assert_eq!(member_addr(0), Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(link_addr(4), Ipv4Addr::new(10, 231, 14, 2));
        assert_eq!(router_addr(4), Ipv4Addr::new(10, 231, 14, 1));
        assert_eq!(subnet(31), "10.231.41.0/24");
        assert_eq!(
            rules("add", 0, 4),
            "rule add from 10.231.10.0/24 to 10.231.14.0/24 blackhole priority 100\n\
             rule add from 10.231.14.0/24 to 10.231.10.0/24 blackhole priority 100"
        );
    }
}
