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
    metrics: Metrics,
    picks: AtomicU64,
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("ascii"));
    response
}

fn refusal(refusal: &Refusal) -> Response<Body> {
    let body = serde_json::json!({ "error": refusal.message }).to_string() + "\n";
    text(refusal.status, "application/json", body)
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let path = request.uri().path().to_string();
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
        match resolve(&view, &shared.config.city, &path, request.uri().query(), request.headers(), pick) {
            Ok(target) => target,
            Err(refused) => {
                let route = refused.route.as_deref().unwrap_or("-");
                let unit = refused.unit.as_deref().unwrap_or("-");
                shared.metrics.record(route, unit, refused.status.as_u16(), started.elapsed());
                return Ok(refusal(&refused));
            }
        };
    drop(view);
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri: Uri = match format!("http://{}{path_and_query}", target.address).parse() {
        Ok(uri) => uri,
        Err(e) => {
            let refused = Refusal {
                status: StatusCode::BAD_GATEWAY,
                message: format!(
                    "instance {} has an unusable address {:?}: {e}",
                    target.instance, target.address
                ),
                route: Some(target.route.clone()),
                unit: Some(target.unit.clone()),
            };
            return Ok(refusal(&refused));
        }
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    if let Ok(host) = HeaderValue::from_str(&target.address) {
        parts.headers.insert(HOST, host);
    }
    // Routing facts the instance trusts: set here, never taken from the client.
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            parts.headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-fivefold-unit", target.unit.clone());
    set("x-fivefold-epoch", target.epoch.to_string());
    set("x-fivefold-dc", target.dc.clone());
    match (target.uid, target.shard) {
        (Some(uid), Some(shard)) => {
            set("x-fivefold-uid", uid.to_string());
            set("x-fivefold-shard", shard.to_string());
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
            let refused = Refusal {
                status: StatusCode::BAD_GATEWAY,
                message: format!("instance {} at {} failed: {e}", target.instance, target.address),
                route: Some(target.route.clone()),
                unit: Some(target.unit.clone()),
            };
            refusal(&refused)
        }
        Err(_) => {
            let refused = Refusal {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: format!("instance {} did not answer within {UPSTREAM_TIMEOUT:?}", target.instance),
                route: Some(target.route.clone()),
                unit: Some(target.unit.clone()),
            };
            refusal(&refused)
        }
    };
    shared.metrics.record(&target.route, &target.unit, response.status().as_u16(), started.elapsed());
    Ok(response)
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    watched: Arc<Watched>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(POOL_IDLE_PER_HOST).build(connector);
    let shared =
        Arc::new(Shared { watched, config, client, metrics: Metrics::default(), picks: AtomicU64::new(0) });
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(shared.clone(), request));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
}
