//! One `fivefold store` process as both launchers ([`Cluster`](crate::Cluster) and
//! [`Wan`](crate::wan::Wan)) see it: its name, its log file, its child process and
//! the member id it reported; the signals a test sends it; and the shared wait until
//! members answer `Maintenance.Status` with a leader.
//!
//! Where and how a member runs (ports, namespaces, command line) stays with its
//! launcher, which hands a ready [`Command`] to [`MemberProcess::spawn`].

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::Client;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::spawner::Spawner;

/// How often readiness and leader waits poll.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Deadline of one Status call made while polling.
pub(crate) const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of each member's log quoted in errors.
pub(crate) const LOG_TAIL_LINES: usize = 30;

/// A member's process, whether running or not.
pub(crate) struct MemberProcess {
    /// The member's name (`--name`), used in every message about it.
    pub(crate) name: String,
    /// Its stdout and stderr, appended across restarts.
    pub(crate) log_path: PathBuf,
    /// The running process; `None` before the first start and after it was reaped.
    pub(crate) child: Option<Child>,
    /// Learned from the header of the member's Status answers; 0 until then.
    id: AtomicU64,
}

impl MemberProcess {
    pub(crate) fn new(name: String, log_path: PathBuf) -> MemberProcess {
        MemberProcess { name, log_path, child: None, id: AtomicU64::new(0) }
    }

    /// Whether the process is running (as far as the launcher knows).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The member id from a Status header, if it has answered one yet.
    pub(crate) fn id(&self) -> Option<u64> {
        Some(self.id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// Starts `command` (the launcher's command line for this member) through
    /// `spawner` with stdin closed and stdout and stderr appended to the log file.
    /// `what` names the attempt in the error.
    pub(crate) fn spawn(
        &mut self,
        spawner: &Spawner,
        mut command: Command,
        what: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log_path)?;
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.child = Some(spawner.spawn(command).with_context(what)?);
        Ok(())
    }

    /// Crashes the process with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        let name = &self.name;
        let mut child = self.child.take().ok_or_else(|| anyhow!("{name} is not running"))?;
        child.kill().with_context(|| format!("SIGKILL {name}"))?;
        child.wait().with_context(|| format!("reaping {name}"))?;
        Ok(())
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to the running process.
    pub(crate) fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let name = &self.name;
        let child = self.child.as_ref().ok_or_else(|| anyhow!("{name} is not running"))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        nix::sys::signal::kill(pid, signal).with_context(|| format!("{signal} {name}"))
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; if it does
    /// not, kills it and fails with the tail of its log. Returns its exit status.
    pub(crate) async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let name = self.name.clone();
        let mut child = self.child.take().ok_or_else(|| anyhow!("{name} is not running"))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM)
            .with_context(|| format!("SIGTERM {name}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{name} did not exit within {timeout:?} of SIGTERM; killed it\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills and reaps the process if it runs, ignoring errors (for `Drop`).
    pub(crate) fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Fails if the process is not running, or has exited (it is reaped then, and
    /// the error quotes the tail of its log).
    pub(crate) fn fail_if_exited(&mut self) -> anyhow::Result<()> {
        let name = &self.name;
        let Some(child) = self.child.as_mut() else {
            bail!("{name} is not running");
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!("{name} exited early with {status}\n{}", self.log_tail(LOG_TAIL_LINES));
        }
        Ok(())
    }

    /// One Status call through `client`, bounded by [`STATUS_TIMEOUT`]: `(member id,
    /// leader id)`, remembering the id.
    pub(crate) async fn status(&self, client: &mut Client) -> Option<(u64, u64)> {
        let status = tokio::time::timeout(STATUS_TIMEOUT, client.status()).await.ok()?.ok()?;
        let id = status.header()?.member_id();
        if id != 0 {
            self.id.store(id, Ordering::Relaxed);
        }
        Some((id, status.leader()))
    }

    /// Everything the member wrote to stdout and stderr, across restarts.
    pub(crate) fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => format!("<cannot read log: {error}>"),
        }
    }

    /// The last `lines` lines of the log, with a heading.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("--- last {lines} log lines of {} ---\n{tail}", self.name)
    }
}

/// The last `lines` lines of every member's log, with a heading per member.
pub(crate) fn log_tails<'a>(members: impl IntoIterator<Item = &'a MemberProcess>, lines: usize) -> String {
    members.into_iter().map(|member| member.log_tail(lines)).collect::<Vec<_>>().join("\n")
}

/// A command that runs `program`, under `setpriv --pdeathsig KILL` where `setpriv`
/// was found, so that the member dies with the thread that spawned it.
pub(crate) fn command(setpriv: Option<&Path>, program: &Path) -> Command {
    match setpriv {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// What [`wait_ready`] needs of a launcher.
pub(crate) trait Members {
    fn process(&self, index: usize) -> &MemberProcess;
    fn process_mut(&mut self, index: usize) -> &mut MemberProcess;
    /// The tail of every member's log, for errors.
    fn log_tails(&self, lines: usize) -> String;
    /// One bounded Status call to member `index`: `(member id, leader id)`.
    async fn poll_status(&self, index: usize) -> Option<(u64, u64)>;
}

/// Waits, bounded by `timeout`, until each member in `indexes` answers Status with
/// a non-zero leader. Fails early if one of them exits.
pub(crate) async fn wait_ready(
    members: &mut impl Members,
    indexes: &[usize],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<usize> = indexes.to_vec();
    while !waiting.is_empty() {
        for index in waiting.clone() {
            members.process_mut(index).fail_if_exited()?;
            if let Some((_, leader)) = members.poll_status(index).await {
                if leader != 0 {
                    waiting.retain(|other| *other != index);
                }
            }
        }
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> =
                waiting.iter().map(|index| members.process(*index).name.as_str()).collect();
            bail!(
                "members {names:?} did not answer Status with a leader within {timeout:?}\n{}",
                members.log_tails(LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

/// What a launcher's `Drop` does with its members and temporary root: kills and
/// reaps every member, prints their log tails if the test is panicking, and keeps
/// `root` (saying where, as `kept <what> data and logs in ...`) when
/// `FIVEFOLD_KEEP_TEST_DIRS=1`.
pub(crate) fn drop_members<'a>(
    members: impl IntoIterator<Item = &'a mut MemberProcess>,
    root: &mut Option<tempfile::TempDir>,
    what: &str,
) {
    let mut members: Vec<&mut MemberProcess> = members.into_iter().collect();
    for member in &mut members {
        member.reap();
    }
    if std::thread::panicking() {
        eprintln!("{}", log_tails(members.iter().map(|member| &**member), LOG_TAIL_LINES));
    }
    if std::env::var(crate::cluster::KEEP_DIRS_ENV).is_ok_and(|value| value == "1") {
        if let Some(root) = root.take() {
            eprintln!("kept {what} data and logs in {}", root.keep().display());
        }
    }
}
