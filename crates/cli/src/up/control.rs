//! `up`'s control port: how `fivefold chaos` in another terminal cuts a city off
//! and heals it, and how `up` learns of it to measure and print RTO and RPO.
//!
//! Protocol (loopback TCP, one command per connection): the client sends one
//! line (`status`, `cut <city>`, `heal`); `up` answers with lines of text and a
//! last line that is `ok` or `error: <what to do>`, then closes. Every answer
//! line is also printed in `up`'s own terminal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::deployment::Deployment;
use super::probe::{self, Probe};

/// How long the probe writes before the cut: the writes acknowledged just
/// before a cut are the ones RPO is about.
const PROBE_BEFORE_CUT: Duration = Duration::from_secs(1);
/// Bound on waiting for writes to resume after a cut.
const RECOVERY_MAX: Duration = Duration::from_secs(30);
const RECOVERY_POLL: Duration = Duration::from_millis(10);
/// Longest command line accepted.
const COMMAND_BYTES_MAX: usize = 256;
/// Bound on a client's whole exchange with `up` (a cut waits for recovery).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(90);

/// The city that is cut now, since when, and the probe measuring it.
struct Cut {
    city: String,
    at: Instant,
    probe: Probe,
}

pub struct State {
    pub deployment: Deployment,
    cut: Option<Cut>,
}

pub type Shared = Arc<Mutex<State>>;

pub fn shared(deployment: Deployment) -> Shared {
    Arc::new(Mutex::new(State { deployment, cut: None }))
}

/// Serves the control port until the task is dropped.
pub async fn serve(listener: TcpListener, state: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = handle(stream, state).await;
        });
    }
}

/// Answer lines go to the client and to `up`'s terminal.
struct Reply {
    stream: tokio::net::tcp::OwnedWriteHalf,
}

impl Reply {
    async fn line(&mut self, text: &str) {
        println!("chaos: {text}");
        let _ = self.stream.write_all(format!("{text}\n").as_bytes()).await;
    }
}

async fn handle(stream: TcpStream, state: Shared) -> anyhow::Result<()> {
    let (read, write) = stream.into_split();
    let mut reply = Reply { stream: write };
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(COMMAND_BYTES_MAX as u64));
    reader.read_line(&mut line).await?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let outcome = match words.as_slice() {
        ["status"] => status(&state, &mut reply).await,
        ["cut", city] => cut(&state, city, &mut reply).await,
        ["heal"] => heal(&state, &mut reply).await,
        _ => Err(anyhow::anyhow!("unknown command {:?}; use status, cut <city> or heal", line.trim())),
    };
    match outcome {
        Ok(()) => reply.stream.write_all(b"ok\n").await?,
        Err(error) => {
            println!("chaos: error: {error:#}");
            reply.stream.write_all(format!("error: {error:#}\n").as_bytes()).await?;
        }
    }
    Ok(())
}

async fn status(state: &Shared, reply: &mut Reply) -> anyhow::Result<()> {
    let (urls, wan, cut) = {
        let state = state.lock().await;
        let cut = state.cut.as_ref().map(|cut| (cut.city.clone(), cut.at.elapsed()));
        (state.deployment.client_urls()?, state.deployment.wan_description(), cut)
    };
    reply
        .line(&format!("  {:<6} {:<10} {:<9} {:>9}  client URL", "member", "city", "role", "revision"))
        .await;
    for (spec, url) in topology::DEFAULT_MEMBERS.iter().zip(&urls) {
        let text = match probe::status(url).await {
            Some(status) => {
                let header = status.header.unwrap_or_default();
                let role = match status.leader {
                    0 => "no leader",
                    leader if leader == header.member_id => "leader",
                    _ => "follower",
                };
                format!("{role:<9} {:>9}", header.revision)
            }
            None => format!("{:<9} {:>9}", "no answer", "-"),
        };
        let url = url.trim_start_matches("http://");
        reply.line(&format!("  {:<6} {:<10} {text}  {url}", spec.name, spec.city)).await;
    }
    reply.line(&format!("WAN: {wan}")).await;
    match cut {
        Some((city, since)) => {
            reply
                .line(&format!(
                    "cut: {city}, for {:.1} s; `fivefold chaos heal` restores it",
                    since.as_secs_f64()
                ))
                .await
        }
        None => reply.line("cut: none").await,
    }
    Ok(())
}

/// The name and city of the member that says it leads, asked of each in turn.
async fn leader_name(urls: &[String]) -> Option<(&'static str, &'static str)> {
    for (spec, url) in topology::DEFAULT_MEMBERS.iter().zip(urls) {
        let Some(status) = probe::status(url).await else { continue };
        if status.leader != 0 && status.leader == status.header.unwrap_or_default().member_id {
            return Some((spec.name, spec.city));
        }
    }
    None
}

fn check_city(city: &str) -> anyhow::Result<()> {
    if !topology::DEFAULT_MEMBERS.iter().any(|m| m.city == city) {
        bail!("unknown city {city:?}: the deployment has hangzhou, shanghai and shenzhen");
    }
    Ok(())
}

async fn cut(state: &Shared, city: &str, reply: &mut Reply) -> anyhow::Result<()> {
    check_city(city)?;
    let mut guard = state.lock().await;
    if let Some(cut) = &guard.cut {
        bail!("{} is cut off already; run `fivefold chaos heal` first", cut.city);
    }
    let urls = guard.deployment.client_urls()?;
    let leader = leader_name(&urls).await;
    let probe = Probe::start(&urls)?;
    reply
        .line(&format!(
            "writing through every member for {:.0} s before the cut",
            PROBE_BEFORE_CUT.as_secs_f64()
        ))
        .await;
    tokio::time::sleep(PROBE_BEFORE_CUT).await;
    if let Err(error) = guard.deployment.cut(city).await {
        let _ = guard.deployment.heal().await;
        probe.stop().await;
        probe::clean(&urls).await;
        return Err(error.context("cutting the city off (healed again)"));
    }
    let at = Instant::now();
    let dcs: Vec<&str> =
        topology::DEFAULT_MEMBERS.iter().filter(|m| m.city == city).map(|m| m.name).collect();
    let held = match leader {
        Some((name, leader_city)) if leader_city == city => format!("it held the leader, {name}"),
        Some((name, _)) => format!("the leader, {name}, is elsewhere"),
        None => "no leader was known".to_string(),
    };
    reply
        .line(&format!(
            "cut {city} off ({}): every link to the other cities is down, both ways; {held}",
            dcs.join(", ")
        ))
        .await;
    let outside: Vec<usize> =
        (0..topology::DEFAULT_MEMBERS.len()).filter(|i| topology::DEFAULT_MEMBERS[*i].city != city).collect();
    guard.cut = Some(Cut { city: city.to_string(), at, probe });
    // Measure without holding the state, so `chaos status` answers meanwhile.
    drop(guard);
    let deadline = at + RECOVERY_MAX;
    loop {
        let first = {
            let guard = state.lock().await;
            match &guard.cut {
                Some(cut) if cut.at == at => cut.probe.first_ack_after(at, &outside),
                _ => bail!("healed before any write was acknowledged"),
            }
        };
        if let Some((member, after)) = first {
            reply
                .line(&format!(
                    "RTO {:.2} s: the first write after the cut was acknowledged {:.2} s after it (through {})",
                    after.as_secs_f64(),
                    after.as_secs_f64(),
                    topology::DEFAULT_MEMBERS[member].name
                ))
                .await;
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no write was acknowledged within {RECOVERY_MAX:?} of the cut; `fivefold chaos heal` restores the links");
        }
        tokio::time::sleep(RECOVERY_POLL).await;
    }
}

async fn heal(state: &Shared, reply: &mut Reply) -> anyhow::Result<()> {
    let mut guard = state.lock().await;
    guard.deployment.heal().await.context("healing")?;
    let Some(cut) = guard.cut.take() else {
        reply.line("nothing was cut; every link is up").await;
        return Ok(());
    };
    let urls = guard.deployment.client_urls()?;
    drop(guard);
    let lasted = cut.at.elapsed();
    reply
        .line(&format!(
            "healed {} after {:.1} s; auditing the acknowledged writes",
            cut.city,
            lasted.as_secs_f64()
        ))
        .await;
    let prefix = cut.probe.prefix.clone();
    let attempts = cut.probe.stop().await;
    let acked: BTreeSet<String> = attempts.iter().filter_map(|a| a.acked.clone()).collect();
    let audited = probe::audit(&urls, &prefix, &acked).await;
    // The probe's keys go whatever the audit found.
    probe::clean(&urls).await;
    let missing = audited?;
    let worst = missing.iter().copied().max().unwrap_or(0);
    if worst > 0 {
        let by_member: Vec<String> = topology::DEFAULT_MEMBERS
            .iter()
            .zip(&missing)
            .map(|(spec, missing)| format!("{} lacks {missing}", spec.name))
            .collect();
        bail!("RPO {worst}: acknowledged writes were lost ({}) — this is a bug", by_member.join(", "));
    }
    reply
        .line(&format!(
            "RPO 0: all {} writes acknowledged around the cut are on all {} members ({} attempts)",
            acked.len(),
            urls.len(),
            attempts.len()
        ))
        .await;
    Ok(())
}

/// Sends one command to the `up` listening on `port` and prints its answer;
/// fails with `up`'s error.
pub async fn send(port: u16, command: &str) -> anyhow::Result<()> {
    let exchange = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.with_context(|| {
            format!(
                "no `fivefold up` answers on control port {port}; start one, or pass the --base-port it uses"
            )
        })?;
        let (read, mut write) = stream.into_split();
        write.write_all(format!("{command}\n").as_bytes()).await?;
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            if line == "ok" {
                return Ok(());
            }
            if let Some(error) = line.strip_prefix("error: ") {
                bail!("{error}");
            }
            println!("{line}");
        }
        bail!("`fivefold up` closed the control connection without an answer")
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("`fivefold up` did not answer within {EXCHANGE_TIMEOUT:?}"))?
}
