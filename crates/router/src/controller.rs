//! The automatic failover controller: when every store member of a city has
//! been unreachable for `down_after`, move the units served from that city to
//! their dc outside it ([`failover_city`]), once per outage. Failback stays a
//! decision for people (`fivefold failback`).
//!
//! Any number of controllers may run (one per city is the idea); one leads, by
//! a lease on [`LEADER_KEY`] written with a create-if-absent Txn. A controller
//! cut off with a minority of the store cannot keep its lease alive, so the
//! leader is always on the side that can still write. Store members are
//! matched to cities by name: a member is named after its dc (as `fivefold up`
//! and the default topology do).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::time::Instant;

use crate::failover::{failover_city_fenced, Move};
use crate::publish::read_topology_with;
use crate::record::read_all_with;
use crate::RouterError;

/// The key the leading controller holds under its lease.
pub const LEADER_KEY: &str = "/fivefold/controllers/failover/leader";

/// How a controller behaves.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Who this controller is (written under [`LEADER_KEY`] while it leads).
    pub identity: String,
    /// How long every member of a city must be unreachable before its units move.
    pub down_after: Duration,
    /// How often members are probed.
    pub probe_interval: Duration,
    /// Deadline of one probe (a Status call).
    pub probe_timeout: Duration,
    /// TTL of the leadership lease, in seconds.
    pub lease_ttl: i64,
}

impl Default for ControllerConfig {
    fn default() -> ControllerConfig {
        ControllerConfig {
            identity: format!("controller-{}", std::process::id()),
            down_after: Duration::from_secs(3),
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(500),
            lease_ttl: 5,
        }
    }
}

/// What the controller did, for the caller to report.
#[derive(Debug, Clone)]
pub enum ControllerEvent {
    Leading,
    /// A city was found down and its units moved.
    FailedOver {
        city: String,
        down_for: Duration,
        moves: Vec<Move>,
    },
    CityBack {
        city: String,
    },
}

/// Tries to lead; `Some((lease, granted))` when this controller now holds
/// [`LEADER_KEY`] under `lease`, which the store granted no earlier than `granted`.
async fn campaign(
    client: &mut Client,
    config: &ControllerConfig,
) -> Result<Option<(i64, Instant)>, RouterError> {
    let granted = Instant::now();
    let lease = client.lease_grant(config.lease_ttl, None).await?.id();
    let txn =
        Txn::new().when([Compare::create_revision(LEADER_KEY, CompareOp::Equal, 0)]).and_then([TxnOp::put(
            LEADER_KEY,
            config.identity.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    if client.txn(txn).await?.succeeded() {
        return Ok(Some((lease, granted)));
    }
    let _ = client.lease_revoke(lease).await;
    Ok(None)
}

/// Probes every store member once: the cities with at least one member that answered.
async fn cities_up(
    client: &mut Client,
    config: &ControllerConfig,
    probes: &mut BTreeMap<String, Client>,
    city_of: &BTreeMap<String, String>,
) -> Result<(BTreeSet<String>, BTreeSet<String>), RouterError> {
    let members = client.member_list().await?;
    let mut known = BTreeSet::new();
    let mut asks = tokio::task::JoinSet::new();
    for member in members.members() {
        let Some(city) = city_of.get(member.name()) else { continue };
        known.insert(city.clone());
        let Some(url) = member.client_urls().first() else { continue };
        if !probes.contains_key(url) {
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(config.probe_timeout)
                .with_timeout(config.probe_timeout);
            match Client::connect([url.as_str()], Some(options)).await {
                Ok(probe) => {
                    probes.insert(url.clone(), probe);
                }
                Err(_) => continue,
            }
        }
        let mut probe = probes.get(url).expect("inserted above").clone();
        let (city, timeout) = (city.clone(), config.probe_timeout);
        // All members at once: a city that is down costs one timeout, not one each.
        asks.spawn(async move {
            (city, matches!(tokio::time::timeout(timeout, probe.status()).await, Ok(Ok(_))))
        });
    }
    let mut up = BTreeSet::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok((city, true)) = answer {
            up.insert(city);
        }
    }
    Ok((known, up))
}

/// One keep-alive of `lease`: `Some(true)` renewed, `Some(false)` the lease is
/// gone, `None` no answer (a leader change; try again).
async fn renew(
    client: &mut Client,
    keep: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    lease: i64,
    timeout: Duration,
) -> Option<bool> {
    if keep.is_none() {
        *keep = tokio::time::timeout(timeout, client.lease_keep_alive(lease)).await.ok()?.ok();
    }
    // (The caller takes the time before this call: the lease runs from the
    // moment the renewal was sent, not from when its answer arrived.)
    let (keeper, responses) = keep.as_mut()?;
    let answer = tokio::time::timeout(timeout, async {
        keeper.keep_alive().await?;
        responses.message().await
    })
    .await;
    match answer {
        Ok(Ok(Some(response))) => Some(response.ttl() > 0),
        _ => {
            *keep = None;
            None
        }
    }
}

/// One round of the leader: probe, and fail over a city down long enough.
async fn step(
    client: &mut Client,
    config: &ControllerConfig,
    lease: i64,
    probes: &mut BTreeMap<String, Client>,
    last_seen: &mut BTreeMap<String, Instant>,
    failed_over: &mut BTreeSet<String>,
    report: &mut impl FnMut(ControllerEvent),
) -> Result<(), RouterError> {
    // Served locally: while the store elects a new leader (the lost city may
    // have held it) these must not wait; the failover Txn itself is checked.
    let (topology, _) = read_topology_with(client, true).await?;
    let city_of: BTreeMap<String, String> = topology
        .cities
        .iter()
        .flat_map(|city| city.dcs.iter().map(move |dc| (dc.clone(), city.name.clone())))
        .collect();
    let (known, up) = cities_up(client, config, probes, &city_of).await?;
    let now = Instant::now();
    for city in &known {
        if up.contains(city) {
            last_seen.insert(city.clone(), now);
            if failed_over.remove(city) {
                report(ControllerEvent::CityBack { city: city.clone() });
            }
            continue;
        }
        let since = *last_seen.entry(city.clone()).or_insert(now);
        let down_for = now.duration_since(since);
        if down_for < config.down_after || failed_over.contains(city) {
            continue;
        }
        let records = read_all_with(client, true).await?;
        let serving = records.values().any(|r| city_of.get(&r.routing.current_dc) == Some(city));
        if serving {
            // Only while this controller still holds the leadership lease.
            let fence = Compare::lease(LEADER_KEY, CompareOp::Equal, lease);
            let moves = failover_city_fenced(client, city, Some(fence)).await?;
            report(ControllerEvent::FailedOver { city: city.clone(), down_for, moves });
        }
        failed_over.insert(city.clone());
    }
    Ok(())
}

/// Leads while the lease lives: probes, and fails cities over. Store errors in
/// a round (a leader election under way) are retried; the lease not renewed for
/// its whole TTL ends the leadership.
async fn lead(
    client: &mut Client,
    config: &ControllerConfig,
    (lease, granted): (i64, Instant),
    report: &mut impl FnMut(ControllerEvent),
) -> Result<(), RouterError> {
    // Leadership ends a third of the TTL before the lease could expire.
    let ttl = Duration::from_secs(config.lease_ttl as u64);
    let safe = ttl - ttl / 3;
    let mut keep = None;
    let mut last_keep = granted;
    let mut probes = BTreeMap::new();
    let mut last_seen: BTreeMap<String, Instant> = BTreeMap::new();
    let mut failed_over: BTreeSet<String> = BTreeSet::new();
    report(ControllerEvent::Leading);
    loop {
        if last_keep.elapsed() >= ttl / 3 {
            let sent = Instant::now();
            match renew(client, &mut keep, lease, config.probe_timeout * 2).await {
                Some(true) => last_keep = sent,
                Some(false) => return Ok(()),
                None => {}
            }
        }
        if last_keep.elapsed() >= safe {
            tracing::warn!("failover controller: could not renew the leadership lease; campaigning again");
            return Ok(());
        }
        if let Err(error) =
            step(client, config, lease, &mut probes, &mut last_seen, &mut failed_over, report).await
        {
            tracing::warn!(%error, "failover controller: round failed; retrying");
        }
        tokio::time::sleep(config.probe_interval).await;
    }
}

/// Runs until `shutdown` resolves: campaigns, leads while it can, and reports
/// what it did through `report`. Store errors are retried after a pause.
pub async fn run_controller(
    mut client: Client,
    config: ControllerConfig,
    mut report: impl FnMut(ControllerEvent),
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // The lease this controller leads under, if it does (0: none).
    let held = std::sync::atomic::AtomicI64::new(0);
    loop {
        let round = async {
            match campaign(&mut client, &config).await? {
                Some((lease, granted)) => {
                    held.store(lease, std::sync::atomic::Ordering::SeqCst);
                    let led = lead(&mut client, &config, (lease, granted), &mut report).await;
                    let _ = client.lease_revoke(lease).await;
                    held.store(0, std::sync::atomic::Ordering::SeqCst);
                    led
                }
                None => {
                    tokio::time::sleep(config.probe_interval).await;
                    Ok(())
                }
            }
        };
        tokio::select! {
            outcome = round => {
                if let Err(error) = outcome {
                    tracing::warn!(%error, "failover controller: retrying");
                    tokio::time::sleep(config.probe_interval).await;
                }
            }
            _ = &mut shutdown => {
                // Hand the leadership over now rather than after the TTL.
                let lease = held.load(std::sync::atomic::Ordering::SeqCst);
                if lease != 0 {
                    let _ = client.lease_revoke(lease).await;
                }
                return;
            }
        }
    }
}
