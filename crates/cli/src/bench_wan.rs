//! `fivefold bench wan-latency` (root): put and linearizable-get latency from a
//! client in each data center, fivefold against etcd in the same network
//! namespaces with the same WAN delays (testkit's WAN: 1 ms round trip inside
//! a city, 10 ms hangzhou–shanghai, 30 ms to shenzhen), the leader in hz-a for
//! both. Rounds alternate etcd and fivefold; medians per dc are printed with
//! the floor: the round trips a write must make (client's member to the
//! leader, then the leader to its nearest quorum) — an fsync comes on top.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use testkit::wan::{Wan, WanOptions};

/// What `bench wan-latency` runs.
pub struct WanLatencyArgs {
    /// Timed operations of each kind per dc and round.
    pub samples: usize,
    /// Rounds per system (alternating etcd, fivefold).
    pub rounds: usize,
    /// The etcd server binary to compare with.
    pub etcd: PathBuf,
}

/// Median put and get latency per dc of one round.
type Round = Vec<(Duration, Duration)>;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

async fn round(options: WanOptions, samples: usize) -> anyhow::Result<Round> {
    let exe = std::env::current_exe()?;
    let wan = Wan::start(&exe, options).await.context("building the WAN (needs root and iproute2)")?;
    wan.move_leader(0).await.context("moving the leader to hz-a")?;
    let value = "v".repeat(256);
    let mut per_dc = Vec::new();
    for dc in 0..wan.len() {
        let mut client = wan.client(dc, dc).await?;
        for n in 0..5 {
            client.put(format!("wan/warm/{dc}/{n}"), value.as_str(), None).await?;
        }
        let (mut puts, mut gets) = (Vec::new(), Vec::new());
        for n in 0..samples {
            let key = format!("wan/{dc}/{n:04}");
            let began = Instant::now();
            client.put(key.as_str(), value.as_str(), None).await?;
            puts.push(began.elapsed());
            let began = Instant::now();
            client.get(key.as_str(), None).await?;
            gets.push(began.elapsed());
        }
        per_dc.push((median(puts), median(gets)));
    }
    Ok(per_dc)
}

/// The round trips a write from dc `from` must wait for with the leader in dc 0:
/// to the leader (through `from`'s member), then the leader's nearest quorum.
fn floor(wan_options: &WanOptions, from: usize) -> Duration {
    let dcs = &wan_options.dcs;
    let rtt = |a: usize, b: usize| wan_options.one_way(&dcs[a].city, &dcs[b].city) * 2;
    let mut to_followers: Vec<Duration> = (1..dcs.len()).map(|f| rtt(0, f)).collect();
    to_followers.sort();
    // A majority counts the leader: it needs the fastest (n/2) followers.
    let quorum = to_followers.get(dcs.len() / 2 - 1).copied().unwrap_or_default();
    let forward = if from == 0 { Duration::ZERO } else { rtt(from, 0) };
    forward + quorum
}

pub async fn run(args: WanLatencyArgs) -> anyhow::Result<()> {
    testkit::wan::supported().map_err(|reason| anyhow::anyhow!("wan-latency {reason}"))?;
    anyhow::ensure!(args.etcd.is_file(), "no etcd at {} (apt-get install etcd-server)", args.etcd.display());
    let base = WanOptions::default();
    let (mut etcd, mut fivefold): (Vec<Round>, Vec<Round>) = (Vec::new(), Vec::new());
    for n in 1..=args.rounds {
        eprintln!("round {n}/{}: etcd...", args.rounds);
        etcd.push(round(WanOptions::default().etcd(&args.etcd), args.samples).await?);
        eprintln!("round {n}/{}: fivefold...", args.rounds);
        fivefold.push(round(WanOptions::default().arg("--primary-city", "hangzhou"), args.samples).await?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "WAN latency, leader in hz-a, {} samples per dc and round, medians over {} rounds (ms):",
        args.samples, args.rounds
    );
    println!(
        "  {:<6} {:>7} {:>10} {:>9} {:>7} {:>10} {:>9} {:>7}",
        "dc", "floor", "put etcd", "fivefold", "ratio", "get etcd", "fivefold", "ratio"
    );
    for (dc, spec) in base.dcs.iter().enumerate() {
        let pick = |rounds: &[Round], put: bool| {
            median(rounds.iter().map(|r| if put { r[dc].0 } else { r[dc].1 }).collect())
        };
        let (ep, fp, eg, fg) =
            (pick(&etcd, true), pick(&fivefold, true), pick(&etcd, false), pick(&fivefold, false));
        println!(
            "  {:<6} {:>7.1} {:>10.2} {:>9.2} {:>7.2} {:>10.2} {:>9.2} {:>7.2}",
            spec.name,
            ms(floor(&base, dc)),
            ms(ep),
            ms(fp),
            fp.as_secs_f64() / ep.as_secs_f64(),
            ms(eg),
            ms(fg),
            fg.as_secs_f64() / eg.as_secs_f64()
        );
    }
    Ok(())
}
