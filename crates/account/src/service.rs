//! The HTTP service.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use client::etcd_client::{Client, Compare, CompareOp, TxnOp};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use registry::{Instance, Registration};
use router::fence::FencedWrite;
use router::Fence;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::RwLock;

use crate::{balance_key, Balance};

/// The registry service name.
pub const SERVICE: &str = "account";
/// Optimistic retries of one deposit when the balance changed under it.
const DEPOSIT_RETRIES: usize = 16;
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// Largest amount one deposit may move.
pub const AMOUNT_MAX: i64 = 1_000_000_000;

/// Which unit and dc this instance serves.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub unit: String,
    pub dc: String,
    pub city: String,
    pub id: String,
    pub registration_ttl_seconds: i64,
}

struct Shared {
    config: AccountConfig,
    address: SocketAddr,
    client: Client,
    fence: RwLock<Fence>,
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message }))
}

fn header<'a>(request: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    request.headers().get(name)?.to_str().ok()
}

impl Shared {
    fn me(&self, epoch: u64) -> serde_json::Value {
        json!({ "unit": self.config.unit, "dc": self.config.dc, "instance": self.config.id, "epoch": epoch })
    }

    async fn balance(&self, uid: u64) -> Result<Option<(Balance, i64)>, Response<Full<Bytes>>> {
        let key = balance_key(&self.config.unit, uid);
        let mut client = self.client.clone();
        let got = client
            .get(key.as_str(), None)
            .await
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")))?;
        match got.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                serde_json::from_slice(kv.value()).map(|b| Some((b, kv.mod_revision()))).map_err(|e| {
                    error(StatusCode::INTERNAL_SERVER_ERROR, format!("stored balance at {key}: {e}"))
                })
            }
        }
    }

    async fn deposit(&self, uid: u64, amount: i64, routed_epoch: Option<u64>) -> Response<Full<Bytes>> {
        // Routed under another epoch than ours: the unit moved (back here,
        // perhaps); look again.
        let ours = self.fence.read().await.epoch();
        if routed_epoch.is_some_and(|epoch| epoch != ours) {
            let mut client = self.client.clone();
            if let Ok(fresh) = Fence::acquire(&mut client, &self.config.unit).await {
                *self.fence.write().await = fresh;
            }
        }
        let key = balance_key(&self.config.unit, uid);
        for _ in 0..DEPOSIT_RETRIES {
            let fence = self.fence.read().await.clone();
            if fence.routing.current_dc != self.config.dc {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "unit {} is served from dc {} since epoch {}; this instance is in {}",
                        self.config.unit,
                        fence.routing.current_dc,
                        fence.epoch(),
                        self.config.dc
                    ),
                );
            }
            let (current, revision) = match self.balance(uid).await {
                Ok(Some((balance, revision))) => (balance.balance, revision),
                Ok(None) => (0, 0),
                Err(response) => return response,
            };
            let Some(next) = current.checked_add(amount) else {
                return error(StatusCode::BAD_REQUEST, "the balance would overflow".into());
            };
            let stored = Balance { balance: next, epoch: fence.epoch() };
            let compare = Compare::mod_revision(key.as_str(), CompareOp::Equal, revision);
            let put = TxnOp::put(key.as_str(), serde_json::to_vec(&stored).expect("serializes"), None);
            let mut client = self.client.clone();
            match fence.write(&mut client, vec![compare], vec![put]).await {
                Ok(FencedWrite::Done(response)) => {
                    let mut body = self.me(fence.epoch());
                    body["uid"] = json!(uid);
                    body["balance"] = json!(next);
                    body["revision"] = json!(response.header().map_or(0, |h| h.revision()));
                    return reply(StatusCode::OK, body);
                }
                Ok(FencedWrite::ConditionFailed) => continue,
                Ok(FencedWrite::Fenced(Some(now))) => {
                    let moved_away = now.current_dc != self.config.dc;
                    let mut client = self.client.clone();
                    if let Ok(fresh) = Fence::acquire(&mut client, &self.config.unit).await {
                        *self.fence.write().await = fresh;
                    }
                    if moved_away {
                        return error(
                            StatusCode::CONFLICT,
                            format!(
                                "unit {} moved to dc {} at epoch {}; write refused by the fence",
                                self.config.unit, now.current_dc, now.epoch
                            ),
                        );
                    }
                }
                Ok(FencedWrite::Fenced(None)) => {
                    return error(
                        StatusCode::CONFLICT,
                        format!("unit {} has no routing record", self.config.unit),
                    )
                }
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
            }
        }
        error(StatusCode::SERVICE_UNAVAILABLE, "the balance kept changing; retry".into())
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // `/whoami`, or `.../whoami` under any route's prefix: who served this.
    if segments.last() == Some(&"whoami") {
        let mut body = shared.me(shared.fence.read().await.epoch());
        body["address"] = json!(shared.address.to_string());
        for name in ["x-fivefold-uid", "x-fivefold-shard", "x-fivefold-unit", "x-fivefold-epoch"] {
            body["routed"][name] = json!(header(&request, name));
        }
        return Ok(reply(StatusCode::OK, body));
    }
    // Only what the gateway routed to this unit.
    if let Some(unit) = header(&request, "x-fivefold-unit") {
        if unit != shared.config.unit {
            return Ok(error(
                StatusCode::MISDIRECTED_REQUEST,
                format!("routed for unit {unit}, but this instance serves {}", shared.config.unit),
            ));
        }
    }
    let uid = match segments.as_slice() {
        ["accounts", uid, ..] => match uid.parse::<u64>() {
            Ok(uid) => uid,
            Err(_) => return Ok(error(StatusCode::BAD_REQUEST, format!("user id {uid:?} is not a number"))),
        },
        _ => return Ok(error(StatusCode::NOT_FOUND, format!("no such resource {path:?}"))),
    };
    let routed_epoch = header(&request, "x-fivefold-epoch").and_then(|e| e.parse().ok());
    let response = match (request.method(), &segments[2..]) {
        (&http::Method::GET, []) => match shared.balance(uid).await {
            Ok(found) => {
                let mut body = shared.me(shared.fence.read().await.epoch());
                body["uid"] = json!(uid);
                body["balance"] = json!(found.map_or(0, |(b, _)| b.balance));
                reply(StatusCode::OK, body)
            }
            Err(response) => response,
        },
        (&http::Method::POST, ["deposit"]) => {
            let amount = request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|pair| pair.strip_prefix("amount="))
                .map(str::parse::<i64>);
            match amount {
                Some(Ok(amount)) if (-AMOUNT_MAX..=AMOUNT_MAX).contains(&amount) => {
                    shared.deposit(uid, amount, routed_epoch).await
                }
                _ => error(StatusCode::BAD_REQUEST, format!("give ?amount=N with |N| <= {AMOUNT_MAX}")),
            }
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such resource {path:?}")),
    };
    Ok(response)
}

/// Takes the unit's fence, registers, and serves on `listener` until `shutdown`
/// resolves; then deregisters.
pub async fn serve(
    listener: TcpListener,
    mut client: Client,
    config: AccountConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), registry::RegistryError> {
    let address = listener.local_addr().map_err(|e| registry::RegistryError::Invalid(e.to_string()))?;
    let fence = Fence::acquire(&mut client, &config.unit)
        .await
        .map_err(|e| registry::RegistryError::Invalid(format!("unit {}: {e}", config.unit)))?;
    let instance = Instance {
        service: SERVICE.to_string(),
        id: config.id.clone(),
        address: address.to_string(),
        unit: config.unit.clone(),
        dc: config.dc.clone(),
        city: config.city.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        weight: 100,
        metadata: Default::default(),
        health: registry::Health::Up,
    };
    let registration =
        Registration::register(client.clone(), instance, config.registration_ttl_seconds).await?;
    let shared = Arc::new(Shared { config, address, client, fence: RwLock::new(fence) });
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Out of descriptors or similar: do not spin.
                Err(_) => {
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(shared.clone(), request));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
    registration.deregister().await
}
