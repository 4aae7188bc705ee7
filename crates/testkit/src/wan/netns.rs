//! Network namespaces and the `ip` commands that build and remove them.
//!
//! Every namespace of one [`super::Wan`] is named `ffwan<pid>-<n>-<suffix>`: `<pid>`
//! is the test process, `<n>` counts launchers inside it. Namespaces whose `<pid>`
//! is no longer running are leftovers of a test process that died without
//! unwinding; [`remove_stale`] deletes them (and kills what still runs inside).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Where `ip netns add` puts the namespace handles.
pub(crate) const NETNS_DIR: &str = "/run/netns";
/// Every namespace name this module creates starts with this.
pub const NAME_PREFIX: &str = "ffwan";
/// Bound on one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// One network namespace: its name and an open handle for `setns`.
#[derive(Debug)]
pub(crate) struct Netns {
    pub(crate) name: String,
    handle: File,
}

impl Netns {
    /// Moves the calling thread (only it) into this namespace: sockets it creates
    /// from now on live there. Call it only on a thread made for the purpose, never
    /// on a thread of a pool that runs other work afterwards.
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        nix::sched::setns(&self.handle, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
    }
}

/// Runs `ip` and the namespaces it made; deleting them is this type's `Drop`.
#[derive(Debug)]
pub(crate) struct Namespaces {
    ip: PathBuf,
    /// Names asked for, in creation order; deleted in reverse on drop.
    created: Vec<String>,
}

impl Namespaces {
    pub(crate) fn new(ip: PathBuf) -> Namespaces {
        Namespaces { ip, created: Vec::new() }
    }

    /// Creates namespace `name` with its loopback up and returns a handle to it.
    pub(crate) fn add(&mut self, name: &str) -> anyhow::Result<Netns> {
        self.created.push(name.to_string());
        run_ip(&self.ip, &["netns", "add", name], None)?;
        let path = Path::new(NETNS_DIR).join(name);
        let handle = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        run_ip(&self.ip, &["-n", name, "link", "set", "lo", "up"], None)?;
        Ok(Netns { name: name.to_string(), handle })
    }

    /// Runs `ip -n NAMESPACE -batch -` over `lines`.
    pub(crate) fn batch(&self, namespace: &str, lines: &[String]) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut script = lines.join("\n");
        script.push('\n');
        run_ip(&self.ip, &["-n", namespace, "-batch", "-"], Some(&script)).map(drop)
    }

    /// Runs one `ip` command.
    pub(crate) fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ip(&self.ip, args, None)
    }

    /// The `ip` program.
    pub(crate) fn ip_path(&self) -> &Path {
        &self.ip
    }

    /// Names of the namespaces created so far.
    pub(crate) fn names(&self) -> &[String] {
        &self.created
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            if Path::new(NETNS_DIR).join(name).exists() {
                if let Err(error) = run_ip(&self.ip, &["netns", "del", name], None) {
                    eprintln!("wan: could not delete namespace {name}: {error:#}");
                }
            }
        }
    }
}

/// Runs `ip ARGS`, feeding `stdin` if given, bounded by [`IP_TIMEOUT`]. Returns its
/// stdout; fails with its stderr.
pub(crate) fn run_ip(ip: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut command = Command::new(ip);
    command
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("running {}", ip.display()))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
        pipe.write_all(text.as_bytes()).context("writing to ip -batch")?;
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    let (done, result) = mpsc::channel();
    std::thread::Builder::new()
        .name("wan-ip".to_string())
        .spawn(move || {
            let _ = done.send(child.wait_with_output());
        })
        .context("spawning a thread to wait for ip")?;
    let output = match result.recv_timeout(IP_TIMEOUT) {
        Ok(output) => output.context("waiting for ip")?,
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            bail!("`ip {}` did not finish within {IP_TIMEOUT:?}", args.join(" "));
        }
    };
    if !output.status.success() {
        bail!(
            "`ip {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdin.map(|text| format!("\ninput:\n{text}")).unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The pid that a namespace name of this module carries, if it is one of ours.
pub(crate) fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Namespaces named like ours (any owner).
pub(crate) fn list_ours() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| owner_pid(name).is_some())
        .collect();
    names.sort();
    names
}

/// Deletes namespaces of ours whose test process is gone, after killing any process
/// still running inside them. Best effort: failures are printed, not returned.
pub(crate) fn remove_stale(ip: &Path) {
    let own = std::process::id();
    for name in list_ours() {
        let Some(pid) = owner_pid(&name) else { continue };
        if u32::try_from(pid).is_ok_and(|pid| pid == own) || alive(pid) {
            continue;
        }
        if let Ok(pids) = run_ip(ip, &["netns", "pids", &name], None) {
            for inside in pids.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(inside), Signal::SIGKILL);
            }
        }
        match run_ip(ip, &["netns", "del", &name], None) {
            Ok(_) => eprintln!("wan: removed stale namespace {name} (its test process {pid} is gone)"),
            Err(error) => eprintln!("wan: could not remove stale namespace {name}: {error:#}"),
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_our_names_only() {
        assert_eq!(owner_pid("ffwan1234-0-hz-a"), Some(1234));
        assert_eq!(owner_pid("ffwan77-12-wan"), Some(77));
        assert_eq!(owner_pid("ffwan-0-hz-a"), None);
        assert_eq!(owner_pid("other1234-0-hz-a"), None);
        assert_eq!(owner_pid("ffwanx-0"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_one_is_not() {
        assert!(alive(i32::try_from(std::process::id()).unwrap()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap();
        assert!(!alive(pid));
    }
}
