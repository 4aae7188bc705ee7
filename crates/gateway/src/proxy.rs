//! The HTTP side: a hyper server (HTTP/1.1 and h2c on one port) that resolves
//! each request and forwards it over a pooled HTTP/1.1 client.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::resolve::{resolve, Refusal};
use crate::state::Watched;

/// Deadline of an upstream's response head.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send a request head (slowloris bound).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Idle upstream connections kept per instance.
pub const POOL_IDLE_PER_HOST: usize = 64;
/// The gateway's own paths (never routed).
pub const METRICS_PATH: &str = "/_fivefold/metrics";
pub const HEALTH_PATH: &str = "/_fivefold/health";

/// Headers that describe one hop and are not forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Where this gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub dc: String,
    pub city: String,
}

type Body = BoxBody<Bytes, hyper::Error>;

struct Shared {
    watched: Arc<Watched>,
    config: GatewayConfig,
    client: Client<HttpConnector, Incoming>,
    metrics: Arc<Metrics>,
    picks: AtomicU64,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn refusal(refusal: &Refusal) -> Response<Body> {
    let body = serde_json::json!({ "error": refusal.message }).to_string() + "\n";
    text(refusal.status, "application/json", body)
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let path = request.uri().path();
    if path == METRICS_PATH {
        return Ok(text(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.render()));
    }
    if path == HEALTH_PATH {
        let view = shared.watched.view();
        return Ok(text(StatusCode::OK, "application/json", format!("{{\"revision\":{}}}\n", view.revision)));
    }
    let view = shared.watched.view();
    let pick = shared.picks.fetch_add(1, Ordering::Relaxed);
    let target =
        match resolve(&view, &shared.config.city, path, request.uri().query(), request.headers(), pick) {
            Ok(target) => target,
            Err(refused) => {
                let route = refused.route.as_deref().unwrap_or("-");
                let unit = refused.unit.as_deref().unwrap_or("-");
                shared.metrics.record(route, unit, refused.status.as_u16(), started.elapsed());
                return Ok(refusal(&refused));
            }
        };
    let failed = |status: StatusCode, message: String| Refusal {
        status,
        message,
        route: Some(target.route.to_string()),
        unit: Some(target.unit.to_string()),
    };
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = http::uri::Builder::new()
        .scheme(http::uri::Scheme::HTTP)
        .authority(target.address)
        .path_and_query(path_and_query)
        .build();
    let uri: Uri = match uri {
        Ok(uri) => uri,
        Err(e) => {
            let message =
                format!("instance {} has an unusable address {:?}: {e}", target.instance, target.address);
            return Ok(refusal(&failed(StatusCode::BAD_GATEWAY, message)));
        }
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    let headers = &mut parts.headers;
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set(HOST.as_str(), target.address);
    // Routing facts the instance trusts: set here, never taken from the client.
    set("x-fivefold-unit", target.unit);
    set("x-fivefold-dc", target.dc);
    headers.insert(HeaderName::from_static("x-fivefold-epoch"), HeaderValue::from(target.epoch));
    match (target.uid, target.shard) {
        (Some(uid), Some(shard)) => {
            headers.insert(HeaderName::from_static("x-fivefold-uid"), HeaderValue::from(uid));
            headers.insert(HeaderName::from_static("x-fivefold-shard"), HeaderValue::from(u64::from(shard)));
        }
        _ => {
            parts.headers.remove("x-fivefold-uid");
            parts.headers.remove("x-fivefold-shard");
        }
    }
    let forwarded = Request::from_parts(parts, body);
    let response = tokio::time::timeout(UPSTREAM_TIMEOUT, shared.client.request(forwarded)).await;
    let response = match response {
        Ok(Ok(response)) => response.map(|body| body.boxed()),
        Ok(Err(e)) => {
            let message = format!("instance {} at {} failed: {e}", target.instance, target.address);
            refusal(&failed(StatusCode::BAD_GATEWAY, message))
        }
        Err(_) => {
            let message = format!("instance {} did not answer within {UPSTREAM_TIMEOUT:?}", target.instance);
            refusal(&failed(StatusCode::GATEWAY_TIMEOUT, message))
        }
    };
    shared.metrics.record(target.route, target.unit, response.status().as_u16(), started.elapsed());
    Ok(response)
}

/// Pending connections the kernel queues.
const LISTEN_BACKLOG: u32 = 4096;

/// Serves the gateway the way nginx runs its workers: `threads` threads, each
/// with its own single-threaded runtime and upstream pool, all accepting from
/// one listening socket (a thread that is free takes the next connection), so
/// a request never crosses threads. Returns the bound address at once (port 0
/// picks one) and a future that runs until `shutdown` resolves.
pub fn serve_per_thread(
    address: std::net::SocketAddr,
    threads: usize,
    watched: Arc<Watched>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<(std::net::SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let socket =
        if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    let first = socket.listen(LISTEN_BACKLOG)?.into_std()?;
    let bound = first.local_addr()?;
    let mut listeners = Vec::new();
    for _ in 1..threads.max(1) {
        listeners.push(first.try_clone()?);
    }
    listeners.push(first);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    let mut workers = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let (watched, config, mut stop) = (watched.clone(), config.clone(), stop_rx.clone());
        let metrics = metrics.clone();
        let worker = std::thread::Builder::new().name(format!("gateway-{n}")).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(listener)?;
                serve_with(listener, watched, config, metrics, async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })
                .await
            })
        })?;
        workers.push(worker);
    }
    let running = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        for worker in workers {
            let joined = tokio::task::spawn_blocking(move || worker.join()).await;
            if let Ok(Ok(Err(error))) = joined {
                return Err(error);
            }
        }
        Ok(())
    };
    Ok((bound, running))
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    watched: Arc<Watched>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, watched, config, Arc::new(Metrics::default()), shutdown).await
}

/// [`serve`] counting into `metrics` (shared by the threads of [`serve_per_thread`]).
async fn serve_with(
    listener: TcpListener,
    watched: Arc<Watched>,
    config: GatewayConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(POOL_IDLE_PER_HOST).build(connector);
    let shared = Arc::new(Shared { watched, config, client, metrics, picks: AtomicU64::new(0) });
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of descriptors or similar: do not spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(shared.clone(), request));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A client that never finishes its request head is dropped.
            builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
}
