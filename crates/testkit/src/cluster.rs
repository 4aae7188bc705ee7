//! A cluster of real `fivefold store` processes on loopback.
//!
//! Layout of one cluster's temporary root:
//! `<root>/<name>.data/` (the member's `--data-dir`) and `<root>/<name>.log` (its stdout
//! and stderr, appended across restarts).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use etcd_client::{Client, ConnectOptions};

use crate::member::{self, MemberProcess, Members, LOG_TAIL_LINES, POLL_INTERVAL, STATUS_TIMEOUT};
use crate::ports::free_ports;
use crate::spawner::Spawner;
use crate::tools::find_on_path;

/// How long [`Cluster::stop`] waits after SIGTERM before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of every request made through [`Cluster::client`].
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Environment variable that keeps the temporary root (data and logs) after the test.
pub const KEEP_DIRS_ENV: &str = "FIVEFOLD_KEEP_TEST_DIRS";

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of voting members.
    pub members: usize,
    /// Flags appended to every member's command line, e.g. `--snapshot-count 50`.
    pub extra_args: Vec<String>,
    /// Bound on waiting for members to answer with a leader, at start and restart.
    pub ready_timeout: Duration,
    /// `--initial-cluster-token`.
    pub token: String,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            members: 3,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            token: "fivefold-test".to_string(),
        }
    }
}

impl ClusterOptions {
    /// Default options with `members` members.
    pub fn members(members: usize) -> ClusterOptions {
        ClusterOptions { members, ..ClusterOptions::default() }
    }

    /// Appends `flag value` to every member's command line.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> ClusterOptions {
        self.extra_args.push(flag.to_string());
        self.extra_args.push(value.to_string());
        self
    }

    /// Adds a flag without a value (`--experimental-fault-injection`).
    pub fn flag(mut self, flag: &str) -> ClusterOptions {
        self.extra_args.push(flag.to_string());
        self
    }
}

/// A member's name and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub name: String,
    pub city: String,
    pub dc: String,
}

/// The placement of member `index` of a `count`-member cluster: three members get
/// one dc in each city, five get the standard 2+2+1 layout, other sizes spread over
/// the three cities in turn. A member is named after its dc.
pub fn placement(count: usize, index: usize) -> Placement {
    assert!(index < count, "member {index} of a {count}-member cluster");
    const CITIES: [(&str, &str); 3] = [("hangzhou", "hz"), ("shanghai", "sh"), ("shenzhen", "sz")];
    const FIVE: [(usize, usize); 5] = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)];
    let (city, dc_in_city) = if count == 5 { FIVE[index] } else { (index % 3, index / 3) };
    let (city_name, prefix) = CITIES[city];
    let letter = char::from(b'a' + (dc_in_city % 26) as u8);
    let dc = format!("{prefix}-{letter}");
    Placement { name: dc.clone(), city: city_name.to_string(), dc }
}

struct Member {
    placement: Placement,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    args: Vec<String>,
    /// Name, log file, child and learned id.
    process: MemberProcess,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// Running members of one cluster. Dropping it kills every member and removes the
/// temporary root, unless `FIVEFOLD_KEEP_TEST_DIRS=1`; if the test is panicking, the
/// tail of each member's log is printed first.
pub struct Cluster {
    bin: PathBuf,
    members: Vec<Member>,
    ready_timeout: Duration,
    /// `setpriv`, when found: members then die with the spawner thread.
    setpriv: Option<PathBuf>,
    spawner: Spawner,
    /// The options the cluster started with: members that join later get the same
    /// token and extra flags.
    options: ClusterOptions,
    /// Declared last: dropped after the members are dead.
    root: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("client_urls", &self.client_urls()).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts `options.members` members of `bin store` and waits, bounded by
    /// `options.ready_timeout`, until each answers Status and reports a leader.
    pub async fn start(bin: &Path, options: ClusterOptions) -> anyhow::Result<Cluster> {
        let count = options.members;
        anyhow::ensure!(count >= 1, "a cluster needs at least one member");
        anyhow::ensure!(bin.is_file(), "binary under test {} does not exist", bin.display());
        let root = tempfile::Builder::new().prefix("fivefold-test-").tempdir()?;
        let ports = free_ports(2 * count)?;
        let mut members: Vec<Member> = (0..count)
            .map(|index| {
                let placement = placement(count, index);
                Member {
                    data_dir: root.path().join(format!("{}.data", placement.name)),
                    process: MemberProcess::new(
                        placement.name.clone(),
                        root.path().join(format!("{}.log", placement.name)),
                    ),
                    placement,
                    client_port: ports[2 * index],
                    peer_port: ports[2 * index + 1],
                    args: Vec::new(),
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={}", member.placement.name, member.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for member in &mut members {
            std::fs::create_dir_all(&member.data_dir)?;
            member.args = member_args(member, &initial_cluster, &options);
        }
        let setpriv = find_on_path("setpriv", &std::env::var_os("PATH").unwrap_or_default());
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            members,
            ready_timeout: options.ready_timeout,
            setpriv,
            spawner: Spawner::new()?,
            options,
            root: Some(root),
        };
        for index in 0..count {
            cluster.spawn(index)?;
        }
        let all: Vec<usize> = (0..count).collect();
        cluster.wait_ready(&all).await?;
        cluster.wait_names_published().await?;
        Ok(cluster)
    }

    /// Waits, at most the ready timeout, until every member's MemberList names
    /// every member. A member publishes its name through the log just after it
    /// starts (as in etcd), so a test reading MemberList at once could see a
    /// member without one. A member that exits meanwhile fails the wait at
    /// once, with the tail of its log.
    async fn wait_names_published(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.ready_timeout;
        let options = ConnectOptions::new().with_connect_timeout(STATUS_TIMEOUT).with_timeout(STATUS_TIMEOUT);
        let mut waiting: Vec<usize> = (0..self.members.len()).collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for index in waiting {
                self.members[index].process.fail_if_exited()?;
                let mut client = connect(&self.client_url(index), options.clone()).await;
                let named = match client.member_list().await {
                    Ok(list) => {
                        list.members().len() >= self.members.len()
                            && list.members().iter().all(|m| !m.name().is_empty())
                    }
                    Err(_) => false,
                };
                if !named {
                    still.push(index);
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "members {waiting:?} did not list every member's name within {:?}\n{}",
                    self.ready_timeout,
                    self.log_tails(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(())
    }

    /// Number of members, running or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Name and labels of member `index`.
    pub fn placement(&self, index: usize) -> &Placement {
        &self.members[index].placement
    }

    /// `http://127.0.0.1:PORT` of member `index`'s client listener.
    pub fn client_url(&self, index: usize) -> String {
        self.members[index].client_url()
    }

    /// Client URLs of all members, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Peer URL of member `index`.
    pub fn peer_url(&self, index: usize) -> String {
        self.members[index].peer_url()
    }

    /// The member id that member `index` reported in a Status header, if it has
    /// answered one yet (every member has after [`Cluster::start`]).
    pub fn member_id(&self, index: usize) -> Option<u64> {
        self.members[index].process.id()
    }

    /// The index of the member with id `id`, among the ids learned so far.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|member| id != 0 && member.process.id() == Some(id))
    }

    /// Whether member `index`'s process is running (as far as this cluster knows).
    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].process.is_running()
    }

    /// A client connected to member `index` only. Every request made through it has
    /// a deadline of 10 s.
    pub async fn client(&self, index: usize) -> Client {
        let options = ConnectOptions::new()
            .with_connect_timeout(CLIENT_CONNECT_TIMEOUT)
            .with_timeout(CLIENT_REQUEST_TIMEOUT);
        connect(&self.client_url(index), options).await
    }

    /// The index of the current leader: a running member that says it leads and that
    /// a majority of the cluster's members name as leader. Waits, bounded by the
    /// ready timeout, until there is one.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + self.ready_timeout;
        let mut last_seen = Vec::new();
        loop {
            last_seen.clear();
            for index in 0..self.members.len() {
                if self.is_running(index) {
                    if let Some((id, leader)) = self.poll_status(index).await {
                        last_seen.push((index, id, leader));
                    }
                }
            }
            let majority = self.members.len() / 2 + 1;
            let claimant = last_seen.iter().find(|(_, id, leader)| id == leader && *leader != 0);
            if let Some((index, id, _)) = claimant {
                let agreeing = last_seen.iter().filter(|(_, _, leader)| leader == id).count();
                if agreeing >= majority {
                    return Ok(*index);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no leader agreed by a majority within {:?}; (member, id, leader) seen: \
                     {last_seen:?}\n{}",
                    self.ready_timeout,
                    self.log_tails(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Crashes member `index` with SIGKILL and reaps it.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].process.kill()
    }

    /// Freezes member `index` (SIGSTOP): it holds its sockets and state but
    /// answers nothing, like a stalled machine. [`Cluster::resume`] thaws it.
    pub fn pause(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].process.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Thaws a member frozen by [`Cluster::pause`] (SIGCONT).
    pub fn resume(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].process.signal(nix::sys::signal::Signal::SIGCONT)
    }

    /// Stops member `index` with SIGTERM and waits up to 10 s for it to exit; if it
    /// does not, kills it and fails. Returns its exit status.
    pub async fn stop(&mut self, index: usize) -> anyhow::Result<ExitStatus> {
        self.members[index].process.terminate(STOP_TIMEOUT).await
    }

    /// Starts stopped member `index` again with the same command line and data dir,
    /// and waits until it answers Status with a leader.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_running(index), "{} is still running", self.members[index].placement.name);
        self.spawn(index)?;
        self.wait_ready(&[index]).await
    }

    /// Prepares one more member that will join this running cluster the way etcd's
    /// `member add` workflow does, and returns its index. It gets fresh loopback ports,
    /// a data dir and a log file under the cluster's root, and the command line of the
    /// other members (same token, same extra flags) except for
    /// `--initial-cluster-state existing` and an `--initial-cluster` that lists the
    /// members in `listed` and itself.
    ///
    /// It is not started: announce it first (MemberAdd with [`Cluster::peer_url`] of the
    /// returned index), then start it with [`Cluster::start_joining`]. From then on it
    /// is an ordinary member of this `Cluster` (stop, kill, restart, log, cleanup on drop).
    pub fn add_joining_member(&mut self, placement: Placement, listed: &[usize]) -> anyhow::Result<usize> {
        anyhow::ensure!(
            self.members.iter().all(|member| member.placement.name != placement.name),
            "a member named {} exists already",
            placement.name
        );
        let root = self.root.as_ref().ok_or_else(|| anyhow!("the cluster's root is gone"))?.path();
        let ports = free_ports(2)?;
        let mut member = Member {
            data_dir: root.join(format!("{}.data", placement.name)),
            process: MemberProcess::new(placement.name.clone(), root.join(format!("{}.log", placement.name))),
            placement,
            client_port: ports[0],
            peer_port: ports[1],
            args: Vec::new(),
        };
        std::fs::create_dir_all(&member.data_dir)?;
        let mut initial_cluster = Vec::new();
        for index in listed {
            let other = self.members.get(*index).ok_or_else(|| anyhow!("no member {index} to list"))?;
            initial_cluster.push(format!("{}={}", other.placement.name, other.peer_url()));
        }
        initial_cluster.push(format!("{}={}", member.placement.name, member.peer_url()));
        member.args = member_args(&member, &initial_cluster.join(","), &self.options);
        let state = member
            .args
            .iter()
            .position(|arg| arg == "--initial-cluster-state")
            .ok_or_else(|| anyhow!("member_args has no --initial-cluster-state"))?;
        member.args[state + 1] = "existing".to_string();
        self.members.push(member);
        Ok(self.members.len() - 1)
    }

    /// Starts a member prepared by [`Cluster::add_joining_member`] and waits, bounded by
    /// the ready timeout, until it answers Status with a leader (it does once the leader
    /// replicates to it, so the cluster must already know it through MemberAdd).
    pub async fn start_joining(&mut self, index: usize) -> anyhow::Result<()> {
        self.restart(index).await
    }

    /// Member `index`'s `--data-dir`.
    pub fn data_dir(&self, index: usize) -> &Path {
        &self.members[index].data_dir
    }

    /// Deletes everything in stopped member `index`'s data dir.
    pub fn wipe(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &self.members[index];
        anyhow::ensure!(!member.process.is_running(), "{} is still running", member.placement.name);
        std::fs::remove_dir_all(&member.data_dir)?;
        std::fs::create_dir_all(&member.data_dir)?;
        Ok(())
    }

    /// Everything member `index` wrote to stdout and stderr, across restarts.
    pub fn log(&self, index: usize) -> String {
        self.members[index].process.log()
    }

    /// The last `lines` lines of every member's log, with a heading per member.
    pub fn log_tails(&self, lines: usize) -> String {
        member::log_tails(self.members.iter().map(|member| &member.process), lines)
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        let mut command = member::command(self.setpriv.as_deref(), &self.bin);
        command.args(&member.args);
        let bin = &self.bin;
        let name = &member.placement.name;
        member.process.spawn(&self.spawner, command, || format!("spawning {} for {name}", bin.display()))
    }

    /// Waits until each member in `indexes` answers Status with a non-zero leader.
    /// Fails early if one of them exits.
    async fn wait_ready(&mut self, indexes: &[usize]) -> anyhow::Result<()> {
        let timeout = self.ready_timeout;
        member::wait_ready(self, indexes, timeout).await
    }

    /// One bounded Status call: `(member id, leader id)`, remembering the id.
    async fn poll_status(&self, index: usize) -> Option<(u64, u64)> {
        let options = ConnectOptions::new().with_connect_timeout(STATUS_TIMEOUT).with_timeout(STATUS_TIMEOUT);
        let mut client = connect(&self.client_url(index), options).await;
        self.members[index].process.status(&mut client).await
    }
}

impl Members for Cluster {
    fn process(&self, index: usize) -> &MemberProcess {
        &self.members[index].process
    }

    fn process_mut(&mut self, index: usize) -> &mut MemberProcess {
        &mut self.members[index].process
    }

    fn log_tails(&self, lines: usize) -> String {
        Cluster::log_tails(self, lines)
    }

    async fn poll_status(&self, index: usize) -> Option<(u64, u64)> {
        Cluster::poll_status(self, index).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        member::drop_members(
            self.members.iter_mut().map(|member| &mut member.process),
            &mut self.root,
            "cluster",
        );
    }
}

/// The command line of one member.
fn member_args(member: &Member, initial_cluster: &str, options: &ClusterOptions) -> Vec<String> {
    let client_url = member.client_url();
    let peer_url = member.peer_url();
    let mut args: Vec<String> = [
        "store",
        "--name",
        &member.placement.name,
        "--data-dir",
        &member.data_dir.to_string_lossy(),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        &options.token,
        "--city",
        &member.placement.city,
        "--dc",
        &member.placement.dc,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.extend(options.extra_args.iter().cloned());
    args
}

/// A client for one endpoint. Connecting is lazy, so this fails only on a malformed
/// URL, which would be a bug here.
async fn connect(url: &str, options: ConnectOptions) -> Client {
    match Client::connect([url], Some(options)).await {
        Ok(client) => client,
        Err(error) => panic!("cannot make a client for {url}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn three_members_span_three_cities() {
        let all: Vec<Placement> = (0..3).map(|index| placement(3, index)).collect();
        let cities: Vec<&str> = all.iter().map(|p| p.city.as_str()).collect();
        assert_eq!(cities, ["hangzhou", "shanghai", "shenzhen"]);
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["hz-a", "sh-a", "sz-a"]);
    }

    #[test]
    fn five_members_use_the_standard_layout() {
        let dcs: Vec<String> = (0..5).map(|index| placement(5, index).dc).collect();
        assert_eq!(dcs, ["hz-a", "hz-b", "sh-a", "sh-b", "sz-a"]);
        assert_eq!(placement(5, 1).city, "hangzhou");
        assert_eq!(placement(5, 3).city, "shanghai");
        assert_eq!(placement(5, 4).city, "shenzhen");
    }

    #[test]
    fn names_are_unique_for_any_size() {
        for count in 1..=12 {
            let names: BTreeSet<String> = (0..count).map(|index| placement(count, index).name).collect();
            assert_eq!(names.len(), count, "duplicate names for {count} members");
        }
    }

    #[test]
    fn member_command_line_uses_etcd_flags() {
        let member = Member {
            placement: placement(3, 1),
            client_port: 20001,
            peer_port: 20002,
            data_dir: PathBuf::from("/tmp/x/sh-a.data"),
            args: Vec::new(),
            process: MemberProcess::new("sh-a".to_string(), PathBuf::from("/tmp/x/sh-a.log")),
        };
        let options = ClusterOptions::default().arg("--snapshot-count", 50);
        let args = member_args(&member, "hz-a=http://127.0.0.1:1,sh-a=http://127.0.0.1:20002", &options);
        let line = args.join(" ");
        assert!(line.starts_with("store --name sh-a --data-dir /tmp/x/sh-a.data "), "{line}");
        for expected in [
            "--listen-client-urls http://127.0.0.1:20001",
            "--advertise-client-urls http://127.0.0.1:20001",
            "--listen-peer-urls http://127.0.0.1:20002",
            "--initial-advertise-peer-urls http://127.0.0.1:20002",
            "--initial-cluster hz-a=http://127.0.0.1:1,sh-a=http://127.0.0.1:20002",
            "--initial-cluster-state new",
            "--initial-cluster-token fivefold-test",
            "--city shanghai --dc sh-a",
        ] {
            assert!(line.contains(expected), "{expected:?} missing from {line}");
        }
        assert!(line.ends_with("--snapshot-count 50"), "{line}");
    }

    #[tokio::test]
    async fn a_binary_that_exits_fails_the_start_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-store");
        std::fs::write(&script, "#!/bin/sh\necho \"fake store refuses: $*\" >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let error = Cluster::start(&script, ClusterOptions::members(1)).await.unwrap_err().to_string();
        assert!(error.contains("hz-a exited early"), "{error}");
        assert!(error.contains("fake store refuses: store --name hz-a"), "{error}");
    }

    #[tokio::test]
    async fn a_binary_that_never_answers_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("silent-store");
        let pid_file = dir.path().join("pid");
        std::fs::write(&script, format!("#!/bin/sh\necho $$ > {}\nexec sleep 30\n", pid_file.display()))
            .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let options =
            ClusterOptions { ready_timeout: Duration::from_millis(500), ..ClusterOptions::members(1) };
        let error = Cluster::start(&script, options).await.unwrap_err().to_string();
        assert!(error.contains("did not answer Status with a leader"), "{error}");
        // The failed start dropped the cluster, which must have killed the process.
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        assert!(!alive, "process {pid} outlived its cluster");
    }
}
