//! The unit-based architecture end to end: a store cluster, the default unit
//! topology, account instances registered for every unit at its home and
//! standby dcs, and two `fivefold gateway` processes (hangzhou and shanghai).
//! - 10,000 requests with random user ids all reach an instance of the unit
//!   that owns the uid's shard (each instance echoes its unit): zero misroutes.
//! - Moving 25 shards by publishing a new topology under load: both gateways
//!   apply it within 1 s, and no request started after that is misrouted.
//! - A unit fails over under write load: no write of the old epoch is accepted
//!   after the move (checked on every write's epoch and revision), stray
//!   requests to the old dc are refused by the fence, money is conserved, and
//!   writes resume from the standby dc (RTO printed).

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{bin, bounded, poll_until, start};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use testkit::{Cluster, ClusterOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use topology::{RoutingTable, UnitKind, UnitTopology};

const TEST_LIMIT: Duration = Duration::from_secs(150);
const ROUTES: &str = gateway::DEFAULT_ROUTES_TOML;

type Http = HttpClient<HttpConnector, Empty<Bytes>>;

struct Gateway {
    dc: &'static str,
    address: String,
    _child: Child,
}

struct Platform {
    cluster: Cluster,
    endpoints: String,
    gateways: Vec<Gateway>,
    /// (unit, dc) -> address of its account instance.
    instances: BTreeMap<(String, String), String>,
    _shutdown: tokio::sync::watch::Sender<bool>,
    http: Http,
}

fn http() -> Http {
    HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http()
}

/// One request: (status, JSON body).
async fn request(
    http: &Http,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
) -> (u16, serde_json::Value) {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let response =
        http.request(builder.body(Empty::new()).unwrap()).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

async fn start_gateway(endpoints: &str, dc: &'static str) -> Gateway {
    let mut child = Command::new(bin())
        .args(["gateway", "serve", "--listen", "127.0.0.1:0", "--dc", dc, "--endpoints", endpoints])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("the gateway says where it listens");
    let address =
        line.split("listening on ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap().to_string();
    assert!(line.starts_with(&format!("gateway for dc {dc}")), "{line}");
    Gateway { dc, address, _child: child }
}

/// Waits until `gateway`'s view reflects store revision `revision`; returns when.
async fn applied(http: &Http, gateway: &Gateway, revision: i64) -> Instant {
    loop {
        let (_, body) =
            request(http, "GET", &format!("http://{}/_fivefold/health", gateway.address), &[]).await;
        if body["revision"].as_i64().unwrap_or(0) >= revision {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn platform() -> Platform {
    let cluster = start(ClusterOptions::members(3)).await;
    let endpoints: Vec<String> = cluster.client_urls();
    let mut store = client::connect(&endpoints).await.unwrap();
    let topology = UnitTopology::default_deployment();
    router::publish(&mut store, &topology).await.unwrap();
    gateway::publish_routes(&mut store, &gateway::RoutesFile::from_toml(ROUTES).unwrap()).await.unwrap();
    let (shutdown, stopped) = tokio::sync::watch::channel(false);
    let mut instances = BTreeMap::new();
    let table = RoutingTable::new(topology.clone()).unwrap();
    for unit in &topology.units {
        for dc in [Some(&unit.home_dc), unit.standby_dc.as_ref()].into_iter().flatten() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let config = account::AccountConfig {
                unit: unit.name.clone(),
                dc: dc.clone(),
                city: table.city_of_dc(dc).unwrap().to_string(),
                id: format!("{}-{dc}", unit.name),
                registration_ttl_seconds: 5,
            };
            let mut stopped = stopped.clone();
            let client = store.clone();
            tokio::spawn(async move {
                let until = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                account::serve(listener, client, config, until).await.expect("account service");
            });
            instances.insert((unit.name.clone(), dc.clone()), address);
        }
    }
    let joined = endpoints.iter().map(|u| common::host_port(u)).collect::<Vec<_>>().join(",");
    let gateways = vec![start_gateway(&joined, "hz-a").await, start_gateway(&joined, "sh-a").await];
    let http = http();
    // Every gateway sees every instance registered.
    let catalog = registry::Catalog::start(store.clone()).await.unwrap();
    let registered = loop {
        if catalog.instances(account::SERVICE).len() == instances.len() {
            break catalog.revision();
        }
        let mut revisions = catalog.revisions();
        let _ = tokio::time::timeout(Duration::from_millis(200), revisions.changed()).await;
    };
    for gateway in &gateways {
        applied(&http, gateway, registered).await;
    }
    Platform { cluster, endpoints: joined, gateways, instances, _shutdown: shutdown, http }
}

/// A small deterministic generator for user ids.
struct Uids(u64);

impl Uids {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 10_000_000
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_reach_the_owning_unit() {
    bounded(TEST_LIMIT, async {
        let platform = Arc::new(platform().await);
        let table = Arc::new(RoutingTable::new(UnitTopology::default_deployment()).unwrap());
        const REQUESTS: u64 = 10_000;
        const TASKS: u64 = 16;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (platform, table) = (platform.clone(), table.clone());
            tasks.push(tokio::spawn(async move {
                let mut uids = Uids(0x9E37_79B9_7F4A_7C15 ^ (task + 1));
                let mut misrouted = Vec::new();
                for n in 0..REQUESTS / TASKS {
                    let uid = uids.next();
                    let gateway = &platform.gateways[(n % 2) as usize];
                    let url = format!("http://{}/whoami", gateway.address);
                    let (status, body) =
                        request(&platform.http, "GET", &url, &[("x-uid", uid.to_string())]).await;
                    let expected = table.unit_for_uid(uid);
                    let home = &expected.home_dc;
                    let ok = status == 200
                        && body["unit"] == expected.name.as_str()
                        && body["dc"] == home.as_str()
                        && body["routed"]["x-fivefold-shard"] == table.shard_of(uid).to_string().as_str()
                        && body["routed"]["x-fivefold-uid"] == uid.to_string().as_str();
                    if !ok {
                        misrouted.push((uid, status, body));
                    }
                }
                misrouted
            }));
        }
        let mut misrouted = Vec::new();
        for task in tasks {
            misrouted.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        println!(
            "{REQUESTS} requests through 2 gateways in {:.2} s ({:.0} req/s): {} misrouted",
            elapsed.as_secs_f64(),
            REQUESTS as f64 / elapsed.as_secs_f64(),
            misrouted.len()
        );
        assert!(misrouted.is_empty(), "misrouted: {:?}", &misrouted[..misrouted.len().min(5)]);

        // GZone and CZone routes.
        for gateway in &platform.gateways {
            let (status, body) =
                request(&platform.http, "GET", &format!("http://{}/config/whoami", gateway.address), &[])
                    .await;
            assert_eq!((status, body["unit"].as_str()), (200, Some("gz")), "{body}");
            let (status, body) =
                request(&platform.http, "GET", &format!("http://{}/rates/whoami", gateway.address), &[])
                    .await;
            let city = if gateway.dc == "hz-a" { "cz-hangzhou" } else { "cz-shanghai" };
            assert_eq!((status, body["unit"].as_str()), (200, Some(city)), "{body}");
        }
        // Bad input: a clear 400 each, never forwarded.
        let gw = &platform.gateways[0].address;
        let (status, body) = request(&platform.http, "GET", &format!("http://{gw}/whoami"), &[]).await;
        assert_eq!(status, 400);
        assert!(body["error"].as_str().unwrap().contains("needs a user id in header \"x-uid\""), "{body}");
        let (status, body) =
            request(&platform.http, "GET", &format!("http://{gw}/whoami"), &[("x-uid", "12ab".into())]).await;
        assert!(status == 400 && body["error"].as_str().unwrap().contains("not a number"), "{body}");
        let (status, _) = request(&platform.http, "GET", &format!("http://{gw}/nowhere"), &[]).await;
        assert_eq!(status, 404);
        // h2c (HTTP/2 without TLS, prior knowledge) is served on the same port.
        let h2: Http = HttpClient::builder(TokioExecutor::new()).http2_only(true).build_http();
        let (status, body) =
            request(&h2, "GET", &format!("http://{gw}/whoami"), &[("x-uid", "60".into())]).await;
        assert_eq!((status, body["unit"].as_str()), (200, Some("rz-sh-a")), "h2c: {body}");
        let metrics = request_text(&platform.http, &format!("http://{gw}/_fivefold/metrics")).await;
        assert!(metrics
            .contains("fivefold_gateway_requests_total{route=\"whoami\",unit=\"rz-hz-a\",status=\"2xx\"}"));
        drop(platform);
    })
    .await;
}

async fn request_text(http: &Http, url: &str) -> String {
    let response = http.get(url.parse().unwrap()).await.unwrap();
    String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).to_string()
}

/// Records of the load: (started, uid, unit that answered).
type Answers = Arc<Mutex<Vec<(Instant, u64, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_25_shards_applies_within_a_second_under_load() {
    bounded(TEST_LIMIT, async {
        let platform = Arc::new(platform().await);
        let stop = Arc::new(AtomicBool::new(false));
        let answers: Answers = Arc::default();
        let mut load = Vec::new();
        for task in 0..8u64 {
            let (platform, stop, answers) = (platform.clone(), stop.clone(), answers.clone());
            load.push(tokio::spawn(async move {
                let mut uids = Uids(0x51_7CC1_B727_220A ^ (task + 1));
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let uid = uids.next();
                    let gateway = &platform.gateways[n % 2];
                    let began = Instant::now();
                    let url = format!("http://{}/whoami", gateway.address);
                    let (status, body) = request(&platform.http, "GET", &url, &[("x-uid", uid.to_string())]).await;
                    assert_eq!(status, 200, "{body}");
                    answers.lock().unwrap().push((began, uid, body["unit"].as_str().unwrap().to_string()));
                }
            }));
        }
        wait_for(&answers, "answers before the move", |answers| !answers.is_empty()).await;
        // 13-24 move from rz-hz-a to rz-hz-b and 25-37 from rz-hz-b to rz-hz-a: 25 shards.
        let mut topology = UnitTopology::default_deployment();
        for unit in &mut topology.units {
            match unit.name.as_str() {
                "rz-hz-a" => unit.shards = vec!["0-12".parse().unwrap(), "25-37".parse().unwrap()],
                "rz-hz-b" => unit.shards = vec!["13-24".parse().unwrap(), "38-49".parse().unwrap()],
                _ => {}
            }
        }
        let new_table = RoutingTable::new(topology.clone()).unwrap();
        let old_table = RoutingTable::new(UnitTopology::default_deployment()).unwrap();
        let owner = |table: &RoutingTable, shard: u32| table.unit_for_shard(shard).map(|u| u.name.clone());
        let moved = (0..100).filter(|s| owner(&new_table, *s) != owner(&old_table, *s)).count();
        assert_eq!(moved, 25);
        let mut store = client::connect(&[platform.cluster.client_url(0)]).await.unwrap();
        let published_at = Instant::now();
        let published = router::publish(&mut store, &topology).await.unwrap();
        let mut applied_after = Vec::new();
        for gateway in &platform.gateways {
            let at = applied(&platform.http, gateway, published.revision).await;
            applied_after.push((gateway.dc, at.duration_since(published_at)));
        }
        let all_applied = published_at + applied_after.iter().map(|(_, d)| *d).max().unwrap();
        wait_for(&answers, "more than 50 answers after the move", |answers| {
            answers.iter().filter(|(began, _, _)| *began > all_applied).count() > 50
        })
        .await;
        stop.store(true, Ordering::SeqCst);
        for task in load {
            task.await.unwrap();
        }
        let answers = answers.lock().unwrap().clone();
        let after: Vec<_> = answers.iter().filter(|(began, _, _)| *began > all_applied).collect();
        let misrouted: Vec<_> =
            after.iter().filter(|(_, uid, unit)| new_table.unit_for_uid(*uid).name != *unit).collect();
        println!(
            "25 shards moved: applied by {} ; {} requests in all, {} after every gateway applied it, {} misrouted",
            applied_after
                .iter()
                .map(|(dc, d)| format!("gateway {dc} in {:.1} ms", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(", "),
            answers.len(),
            after.len(),
            misrouted.len()
        );
        for (dc, took) in &applied_after {
            assert!(*took < Duration::from_secs(1), "gateway {dc} applied the topology after {took:?}");
        }
        assert!(after.len() > 50, "load kept running after the change ({})", after.len());
        assert!(misrouted.is_empty(), "misrouted after the change: {:?}", &misrouted[..misrouted.len().min(5)]);
    })
    .await;
}

/// Waits until what the load tasks recorded in `shared` satisfies `done`.
async fn wait_for<T>(shared: &Arc<Mutex<Vec<T>>>, what: &str, done: impl Fn(&[T]) -> bool) {
    poll_until(Duration::from_secs(30), what, || {
        let reached = done(&shared.lock().unwrap());
        async move {
            if reached {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;
}

/// One deposit's outcome: (uid, status, epoch, revision, dc).
type Deposits = Arc<Mutex<Vec<(Instant, u64, u16, u64, i64, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_failover_under_write_load_is_fenced() {
    bounded(TEST_LIMIT, async {
        let platform = Arc::new(platform().await);
        let table = RoutingTable::new(UnitTopology::default_deployment()).unwrap();
        assert_eq!(table.unit("rz-hz-a").unwrap().kind, UnitKind::Rzone);
        // Users of rz-hz-a: shards 0-24.
        let uids: Arc<Vec<u64>> = Arc::new((0..8u64).map(|i| 1_000 + i * 100 + i * 3).collect());
        assert!(uids.iter().all(|uid| table.unit_for_uid(*uid).name == "rz-hz-a"));
        let stop = Arc::new(AtomicBool::new(false));
        let deposits: Deposits = Arc::default();
        let mut load = Vec::new();
        for (task, uid) in uids.iter().copied().enumerate() {
            let (platform, stop, deposits) = (platform.clone(), stop.clone(), deposits.clone());
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let gateway = &platform.gateways[task % 2];
                    let url = format!("http://{}/accounts/{uid}/deposit?amount=1", gateway.address);
                    let began = Instant::now();
                    let (status, body) = request(&platform.http, "POST", &url, &[]).await;
                    let epoch = body["epoch"].as_u64().unwrap_or(0);
                    let revision = body["revision"].as_i64().unwrap_or(0);
                    let dc = body["dc"].as_str().unwrap_or("").to_string();
                    deposits.lock().unwrap().push((began, uid, status, epoch, revision, dc));
                }
            }));
        }
        // A stray client that keeps calling the hz-a instance directly, as a
        // stale load balancer would.
        let stray_address = platform.instances[&("rz-hz-a".to_string(), "hz-a".to_string())].clone();
        let strays: Deposits = Arc::default();
        let stray = {
            let (platform, stop, strays) = (platform.clone(), stop.clone(), strays.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let url = format!("http://{stray_address}/accounts/1000/deposit?amount=1");
                    let began = Instant::now();
                    let headers = [("x-fivefold-unit", "rz-hz-a".to_string()), ("x-fivefold-epoch", "1".to_string())];
                    let (status, body) = request(&platform.http, "POST", &url, &headers).await;
                    let revision = body["revision"].as_i64().unwrap_or(0);
                    strays.lock().unwrap().push((began, 1000, status, body["epoch"].as_u64().unwrap_or(0), revision, String::new()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        wait_for(&deposits, "a write acknowledged under epoch 1", |d| d.iter().any(|d| d.2 == 200 && d.3 == 1))
            .await;
        wait_for(&strays, "a stray write answered", |strays| !strays.is_empty()).await;
        let mut store = client::connect(&[platform.cluster.client_url(0)]).await.unwrap();
        let (ok, out, err) = {
            let output = Command::new(bin())
                .args(["failover", "unit", "rz-hz-a", "--endpoints", &platform.endpoints])
                .output()
                .await
                .unwrap();
            (output.status.success(), String::from_utf8_lossy(&output.stdout).to_string(), String::from_utf8_lossy(&output.stderr).to_string())
        };
        let moved_at = Instant::now();
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "rz-hz-a: hz-a -> sh-a (epoch 2)");
        let record = store.get(router::routing_key("rz-hz-a"), None).await.unwrap();
        let move_revision = record.kvs()[0].mod_revision();
        wait_for(&deposits, "a write acknowledged under epoch 2", |d| d.iter().any(|d| d.2 == 200 && d.3 == 2))
            .await;
        wait_for(&strays, "a stray write refused by the fence", |strays| strays.iter().any(|s| s.2 == 409)).await;
        stop.store(true, Ordering::SeqCst);
        for task in load {
            task.await.unwrap();
        }
        stray.await.unwrap();

        let deposits = deposits.lock().unwrap().clone();
        let acked: Vec<_> = deposits.iter().filter(|d| d.2 == 200).collect();
        let mut old = 0;
        let mut new = 0;
        for (_, uid, _, epoch, revision, dc) in &acked {
            match epoch {
                1 => {
                    assert!(*revision < move_revision, "uid {uid}: epoch-1 write at {revision} after the move at {move_revision}");
                    assert_eq!(dc, "hz-a");
                    old += 1;
                }
                2 => {
                    assert!(*revision > move_revision, "uid {uid}: epoch-2 write at {revision} before the move");
                    assert_eq!(dc, "sh-a");
                    new += 1;
                }
                other => panic!("a write under epoch {other}"),
            }
        }
        let strays = strays.lock().unwrap().clone();
        let stray_acked: Vec<_> = strays.iter().filter(|s| s.2 == 200).collect();
        assert!(stray_acked.iter().all(|s| s.4 < move_revision), "a stray write was accepted after the move");
        let stray_refused = strays.iter().filter(|s| s.2 == 409).count();
        assert!(stray_refused > 0, "the stray client was refused by the fence after the move");
        // Money is conserved: each balance is exactly its acknowledged deposits.
        for uid in uids.iter() {
            let mut acked_for = acked.iter().filter(|d| d.1 == *uid).count() as i64;
            if *uid == 1000 {
                acked_for += stray_acked.len() as i64;
            }
            let got = store.get(account::balance_key("rz-hz-a", *uid), None).await.unwrap();
            let balance: account::Balance = serde_json::from_slice(got.kvs()[0].value()).unwrap();
            assert_eq!(balance.balance, acked_for, "uid {uid}: balance vs acknowledged deposits");
        }
        let first_new = deposits
            .iter()
            .filter(|d| d.2 == 200 && d.3 == 2)
            .map(|d| d.0)
            .min()
            .expect("writes resumed from sh-a");
        let rto = first_new.saturating_duration_since(moved_at);
        println!(
            "failover rz-hz-a hz-a -> sh-a under load: {old} writes at epoch 1 (all before revision {move_revision}), \
             {new} at epoch 2 from sh-a, {} refused, stray client: {} accepted before the move, {stray_refused} refused after; \
             RTO (failover command done -> first acknowledged write from sh-a) {:.0} ms",
            deposits.len() - acked.len(),
            stray_acked.len(),
            rto.as_secs_f64() * 1000.0
        );
        assert!(old > 0 && new > 0);
        assert!(rto < Duration::from_secs(5), "RTO {rto:?}");
    })
    .await;
}
