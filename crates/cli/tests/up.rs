//! `fivefold up` and `fivefold chaos` as a person uses them: the five-member
//! deployment starts quickly, resumes from its data dir, and a chaos drill
//! that cuts the leader's city off reports RPO 0 and an RTO in seconds.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bin, bounded};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Issue 2's bar for `up`: ready in under 5 s.
const READY_MAX: Duration = Duration::from_secs(5);

/// Starts `fivefold up` and waits for its "is up" line; returns the child and
/// the seconds it reported.
async fn up(dir: &std::path::Path, base_port: u16, wan: bool) -> (Child, f64) {
    let mut command = Command::new(bin());
    command.current_dir(dir).args(["up", "--base-port", &base_port.to_string()]);
    if wan {
        command.arg("--wan");
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("fivefold is up: 5 members in 3 cities, ready in ") {
            let seconds: f64 = rest.split(' ').next().unwrap().parse().unwrap();
            assert!(
                started.elapsed() < READY_MAX + Duration::from_secs(2),
                "up took {:?}",
                started.elapsed()
            );
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, seconds);
        }
    }
    panic!("fivefold up exited without reporting readiness");
}

async fn stop(mut child: Child) {
    let pid = nix_pid(&child);
    let _ = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status();
    let status =
        tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("up stops").unwrap();
    assert!(status.success(), "up exits cleanly on Ctrl-C: {status}");
}

/// A base port whose deployment ports (base + 10 i and base + 10 i + 1 for
/// five members) are all free right now.
fn free_base_port() -> u16 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_mul(7919) + attempt * 131) % 9_000) as u16;
        let free = (0..5u16)
            .flat_map(|i| [base + 10 * i, base + 10 * i + 1])
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free block of ports for fivefold up");
}

fn nix_pid(child: &Child) -> u32 {
    child.id().expect("up is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_fast_resumes_and_survives_a_city_drill() {
    bounded(TEST_LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let base_port = free_base_port();
        let (child, seconds) = up(dir.path(), base_port, true).await;
        assert!(seconds < READY_MAX.as_secs_f64(), "ready in {seconds} s");

        let drill = Command::new(bin())
            .args(["chaos", "drill", "hangzhou", "--wan", "--base-port", &base_port.to_string()])
            .output()
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&drill.stdout);
        assert!(drill.status.success(), "drill failed: {out}\n{}", String::from_utf8_lossy(&drill.stderr));
        let rto: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("RTO: first write acknowledged "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no RTO line in {out}"));
        assert!(rto < 5.0, "RTO {rto} s");
        assert!(out.contains("RPO: 0 of "), "{out}");
        println!("{out}");
        stop(child).await;

        // A second `up` resumes the same cluster from the data dir.
        let (child, _) = up(dir.path(), base_port, false).await;
        let mut client =
            etcd_client::Client::connect([format!("127.0.0.1:{base_port}")], None).await.unwrap();
        let kept =
            client.get("fivefold/chaos-drill/", Some(etcd_client::GetOptions::new().with_prefix())).await;
        assert!(kept.unwrap().count() > 0, "the drill's writes survive a restart of the deployment");
        stop(child).await;
    })
    .await;
}
