//! The HTTP/JSON API of the registry server, for apps in any language.
//!
//! HTTP/1.1 and h2c (HTTP/2 without TLS, by prior knowledge) on one port.
//! Every answer is JSON; every error is `{"error": "..."}` saying what to fix.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/instances` `{"instance": {...}, "ttl_seconds": n}` | `{"key", "lease", "ttl_seconds", "revision"}`: a new lease, the record put under it |
//! | `POST /v1/instances` `{"instance": {...}, "lease": "id"}` | rewrites the record under a lease the app holds (health, weight...) |
//! | `PUT /v1/leases/{lease}/heartbeat` | `{"lease"}`: renewed to its full TTL; 404 once the lease is gone: register again |
//! | `DELETE /v1/instances/{service}/{id}` | revokes the record's lease (one record per lease, as registrations make them): gone for every subscriber at once; 404 if absent |
//! | `GET /v1/services/{service}[?min_revision=R]` | `{"service", "revision", "instances": [...]}` |
//! | `GET /v1/services/{service}/watch`, `GET /v1/watch` | newline-delimited JSON, see below |
//! | `GET /metrics` | Prometheus text |
//!
//! The app heartbeats its lease itself, every `ttl_seconds / 3`; an app that
//! dies stops, and the store deletes its record when the TTL runs out. Lease
//! ids are answered as decimal strings: they use all 63 bits, beyond what a
//! JSON number holds exactly in JavaScript (etcd's JSON gateway does the same).
//!
//! A watch answers a snapshot line, then one line per change, each pushed as
//! soon as the server's [`Catalog`] has it:
//!
//! ```text
//! {"type":"snapshot","revision":R,"instances":[{...},...]}
//! {"type":"upsert","revision":R,"instance":{...}}
//! {"type":"remove","revision":R,"service":"s","id":"i"}
//! ```
//!
//! A subscriber that falls behind by more than the catalog's buffer gets a fresh
//! snapshot line, and so does every subscriber when the store's history was
//! compacted under the catalog's watch: a snapshot line always replaces what the
//! subscriber knew. There is no debounce (SOFARegistry waits 1 s to batch
//! pushes); changes that are already waiting are written together. Each
//! subscriber is one [`Catalog::subscribe`], so any number of them cost the
//! server one store watch.

mod metrics;
mod route;
mod watch;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::http::{header, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use client::etcd_client::{self, Client, PutOptions};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use route::{Route, RouteError, ROUTES};

use metrics::Metrics;
use watch::{ApiBody, WatchBody};

use crate::{instance_key, Catalog, Instance, RegistryError, DEFAULT_TTL_SECONDS, TTL_SECONDS_MIN};

/// Largest request body accepted (a registration is well under 8 KiB: the
/// metadata is capped at 4 KiB).
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest TTL accepted: a crashed instance stays visible at most this long.
pub const TTL_SECONDS_MAX: i64 = 3600;
/// Longest a `GET ...?min_revision=R` waits for the catalog to reach `R`.
pub const MIN_REVISION_WAIT: Duration = Duration::from_secs(5);
/// Deadline of the store requests behind one API request.
const STORE_TIMEOUT: Duration = client::REQUEST_TIMEOUT;
/// A client has this long to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors, say) before retrying.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// An answer that is not a success: the status and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn store(error: etcd_client::Error) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the store did not answer ({error}); retry"))
    }

    fn store_timeout() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store did not answer within {STORE_TIMEOUT:?}; retry"),
        )
    }
}

/// Whether a store error says the lease does not exist (etcd's
/// `etcdserver: requested lease not found`).
fn lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            lease_not_found_status(status.code().into(), status.message())
        }
        other => crate::registration::lease_gone(other),
    }
}

/// gRPC status NotFound.
const GRPC_NOT_FOUND: i32 = 5;

fn lease_not_found_status(code: i32, message: &str) -> bool {
    code == GRPC_NOT_FOUND && message.contains("lease not found")
}

/// Runs `request` with the store deadline.
async fn store<T>(request: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ApiError> {
    match tokio::time::timeout(STORE_TIMEOUT, request).await {
        Ok(result) => result.map_err(ApiError::store),
        Err(_) => Err(ApiError::store_timeout()),
    }
}

/// A lease id in a request body: the decimal string answered at registration,
/// or a JSON number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LeaseField {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    instance: Instance,
    #[serde(default)]
    ttl_seconds: Option<i64>,
    #[serde(default)]
    lease: Option<LeaseField>,
}

/// What a registration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Registering {
    /// A new lease of this many seconds.
    NewLease(i64),
    /// Rewrite the record under a lease the app already holds.
    Lease(i64),
}

/// Parses and checks a `POST /v1/instances` body.
fn parse_registration(body: &[u8]) -> Result<(Instance, Registering), ApiError> {
    let request: RegisterRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a registration: {e}; send {{\"instance\": {{\"service\", \"id\", \"address\", \
             \"unit\", \"dc\", \"city\", optional \"version\", \"weight\", \"metadata\", \"health\"}}, \
             \"ttl_seconds\": n}}"
        ))
    })?;
    request.instance.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let registering = match (request.lease, request.ttl_seconds) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request(
            "give either \"ttl_seconds\" (register under a new lease) or \"lease\" (update under a lease \
                 you hold), not both",
        )),
        (Some(LeaseField::Number(lease)), None) => {
            Registering::Lease(route::parse_lease(&lease.to_string()).map_err(ApiError::bad_request)?)
        }
        (Some(LeaseField::Text(lease)), None) => {
            Registering::Lease(route::parse_lease(&lease).map_err(ApiError::bad_request)?)
        }
        (None, ttl) => {
            let ttl = ttl.unwrap_or(DEFAULT_TTL_SECONDS);
            if ttl < TTL_SECONDS_MIN {
                return Err(ApiError::bad_request(format!(
                    "ttl_seconds {ttl} is below the minimum of {TTL_SECONDS_MIN}: an instance heartbeats every \
                     ttl/3 and needs room for a slow moment"
                )));
            }
            if ttl > TTL_SECONDS_MAX {
                return Err(ApiError::bad_request(format!(
                    "ttl_seconds {ttl} is above the maximum of {TTL_SECONDS_MAX}: a crashed instance would stay \
                     visible that long"
                )));
            }
            Registering::NewLease(ttl)
        }
    };
    Ok((request.instance, registering))
}

/// The registry's HTTP API over a [`Catalog`] (reads and watches) and a store
/// client (registrations, heartbeats, deregistrations). Serve it with [`serve`].
pub struct HttpApi {
    client: Client,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi").finish_non_exhaustive()
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ApiBody> {
    let mut bytes = serde_json::to_vec(value).expect("JSON values serialize");
    bytes.push(b'\n');
    let mut response = Response::new(ApiBody::full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<ApiBody> {
    json_response(error.status, &json!({ "error": error.message }))
}

impl HttpApi {
    /// Serves `catalog` and writes through `client`.
    pub fn new(client: Client, catalog: Arc<Catalog>) -> Arc<HttpApi> {
        Arc::new(HttpApi { client, catalog, metrics: Arc::new(Metrics::default()) })
    }

    /// Starts a catalog on `client` and serves it.
    pub async fn start(client: Client) -> Result<Arc<HttpApi>, RegistryError> {
        let catalog = Arc::new(Catalog::start(client.clone()).await?);
        Ok(HttpApi::new(client, catalog))
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self.catalog.revision())
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<ApiBody> {
        let method = request.method().clone();
        let (template, response) = match Route::parse(&method, request.uri().path()) {
            Ok(route) => {
                let template = route.template();
                let response = self.dispatch(route, request).await.unwrap_or_else(|e| error_response(&e));
                (template, response)
            }
            Err(RouteError::NotFound) => (
                "unmatched",
                error_response(&ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no route {method} {}; the routes are {ROUTES}", request.uri().path()),
                )),
            ),
            Err(RouteError::MethodNotAllowed { allow, template }) => {
                let mut response = error_response(&ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{template} takes {allow}, not {method}"),
                ));
                if let Ok(value) = HeaderValue::from_str(allow.as_str()) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                (template, response)
            }
            Err(RouteError::BadSegment { template, message }) => {
                (template, error_response(&ApiError::bad_request(message)))
            }
        };
        self.metrics.request(method.as_str(), template, response.status().as_u16());
        response
    }

    async fn dispatch(
        &self,
        route: Route,
        request: Request<Incoming>,
    ) -> Result<Response<ApiBody>, ApiError> {
        match route {
            Route::Register => {
                let body = read_body(request).await?;
                let (instance, registering) = parse_registration(&body)?;
                self.register(instance, registering).await
            }
            Route::Heartbeat { lease } => self.heartbeat(lease).await,
            Route::Deregister { service, id } => self.deregister(&service, &id).await,
            Route::Instances { service } => {
                let min_revision = match route::query_param(request.uri().query(), "min_revision") {
                    None => None,
                    Some(text) => Some(text.parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!("min_revision {text:?} is not a revision number"))
                    })?),
                };
                self.instances(&service, min_revision).await
            }
            Route::Watch { service } => Ok(self.watch(service)),
            Route::Metrics => {
                let mut response = Response::new(ApiBody::full(self.metrics_text()));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                Ok(response)
            }
        }
    }

    async fn register(
        &self,
        instance: Instance,
        registering: Registering,
    ) -> Result<Response<ApiBody>, ApiError> {
        let mut client = self.client.clone();
        let key = instance.key();
        let (lease, ttl) = match registering {
            Registering::NewLease(ttl) => {
                let granted = store(client.lease_grant(ttl, None)).await?;
                (granted.id(), Some(granted.ttl()))
            }
            Registering::Lease(lease) => (lease, None),
        };
        let options = PutOptions::new().with_lease(lease);
        let put = match tokio::time::timeout(
            STORE_TIMEOUT,
            client.put(key.clone(), instance.to_json(), Some(options)),
        )
        .await
        {
            Ok(Ok(put)) => put,
            failed => {
                if ttl.is_some() {
                    // Do not leave the new lease behind; it would expire anyway.
                    let _ = tokio::time::timeout(STORE_TIMEOUT, client.lease_revoke(lease)).await;
                }
                return Err(match failed {
                    Ok(Err(error)) if ttl.is_none() && lease_not_found(&error) => ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!(
                            "lease {lease} is gone (expired or revoked): register again without \"lease\""
                        ),
                    ),
                    Ok(Err(error)) => ApiError::store(error),
                    _ => ApiError::store_timeout(),
                });
            }
        };
        let revision = put.header().map_or(0, |h| h.revision());
        self.metrics.registered();
        tracing::info!(%key, lease, "registered");
        let mut answer = json!({ "key": key, "lease": lease.to_string(), "revision": revision });
        if let Some(ttl) = ttl {
            answer["ttl_seconds"] = json!(ttl);
        }
        Ok(json_response(StatusCode::OK, &answer))
    }

    async fn heartbeat(&self, lease: i64) -> Result<Response<ApiBody>, ApiError> {
        let gone = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("lease {lease} is gone (expired or revoked): register the instance again"),
            )
        };
        // etcd-client's keep-alive call sends one renewal and reads its answer;
        // a lease that is gone answers TTL 0, which it reports as an error.
        let mut client = self.client.clone();
        match tokio::time::timeout(STORE_TIMEOUT, client.lease_keep_alive(lease)).await {
            Err(_) => return Err(ApiError::store_timeout()),
            Ok(Err(error)) if lease_not_found(&error) => return Err(gone()),
            Ok(Err(error)) => return Err(ApiError::store(error)),
            Ok(Ok(_stream)) => {}
        }
        self.metrics.heartbeat();
        Ok(json_response(StatusCode::OK, &json!({ "lease": lease.to_string() })))
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<Response<ApiBody>, ApiError> {
        let mut client = self.client.clone();
        let key = instance_key(service, id);
        let got = store(client.get(key.as_str(), None)).await?;
        let Some(kv) = got.kvs().first() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no instance {id:?} of service {service:?} is registered"),
            ));
        };
        // Delete exactly the record read (a re-registration meanwhile is not
        // undone), then drop its lease if nothing else lives under it.
        let (lease, mod_revision) = (kv.lease(), kv.mod_revision());
        let txn = client::etcd_client::Txn::new()
            .when([client::etcd_client::Compare::mod_revision(
                key.as_str(),
                client::etcd_client::CompareOp::Equal,
                mod_revision,
            )])
            .and_then([client::etcd_client::TxnOp::delete(key.as_str(), None)]);
        let deleted = store(client.txn(txn)).await?;
        if !deleted.succeeded() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("instance {id:?} of service {service:?} was registered again meanwhile; nothing was removed"),
            ));
        }
        let revision = deleted.header().map_or(0, |h| h.revision());
        if lease != 0 {
            let options = client::etcd_client::LeaseTimeToLiveOptions::new().with_keys();
            let still_used = match store(client.lease_time_to_live(lease, Some(options))).await {
                Ok(answer) => !answer.keys().is_empty(),
                Err(_) => true,
            };
            if !still_used {
                match tokio::time::timeout(STORE_TIMEOUT, client.lease_revoke(lease)).await {
                    Ok(Ok(_)) => {}
                    // Expired meanwhile: gone all the same.
                    Ok(Err(error)) if lease_not_found(&error) => {}
                    Ok(Err(error)) => return Err(ApiError::store(error)),
                    Err(_) => return Err(ApiError::store_timeout()),
                }
            }
        }
        self.metrics.deregistered();
        tracing::info!(%key, "deregistered");
        Ok(json_response(StatusCode::OK, &json!({ "deregistered": key, "revision": revision })))
    }

    async fn instances(
        &self,
        service: &str,
        min_revision: Option<i64>,
    ) -> Result<Response<ApiBody>, ApiError> {
        if let Some(wanted) = min_revision {
            if tokio::time::timeout(MIN_REVISION_WAIT, self.catalog.wait_for(wanted)).await.is_err() {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the catalog did not reach revision {wanted} within {MIN_REVISION_WAIT:?} (it is at {}); \
                         retry",
                        self.catalog.revision()
                    ),
                ));
            }
        }
        let (revision, instances) = self.catalog.snapshot(Some(service));
        Ok(json_response(
            StatusCode::OK,
            &json!({ "service": service, "revision": revision, "instances": instances }),
        ))
    }

    fn watch(&self, service: Option<String>) -> Response<ApiBody> {
        let body = WatchBody::new(self.catalog.clone(), service, self.metrics.clone());
        let mut response = Response::new(ApiBody::Watch(Box::new(body)));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Tells buffering proxies (nginx) to pass lines on at once.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
    }
}

/// The whole request body, at most [`REQUEST_BODY_BYTES_MAX`].
async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {REQUEST_BODY_BYTES_MAX} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > REQUEST_BODY_BYTES_MAX as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), REQUEST_BODY_BYTES_MAX).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(ApiError::bad_request(format!("reading the body failed: {error}"))),
    }
}

/// Serves `api` on `listener` (HTTP/1.1 and h2c) until `shutdown` resolves or
/// the future is dropped; either way every open connection, watch streams
/// included, is closed.
pub async fn serve(listener: TcpListener, api: Arc<HttpApi>, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Watch lines are small: send each at once.
                    let _ = stream.set_nodelay(true);
                    let builder = builder.clone();
                    let api = api.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let api = api.clone();
                            async move { Ok::<_, Infallible>(api.handle(request).await) }
                        });
                        if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; retrying");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTANCE: &str = r#"{"service":"account","id":"hz-a-1","address":"127.0.0.1:8080","unit":"rz-hz-a","dc":"hz-a","city":"hangzhou"}"#;

    fn registration(body: &str) -> Result<(Instance, Registering), ApiError> {
        parse_registration(body.as_bytes())
    }

    #[track_caller]
    fn refused(body: &str, expected: &str) {
        match registration(body) {
            Err(error) => {
                assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
                assert!(
                    error.message.contains(expected),
                    "{body}: {:?} should mention {expected:?}",
                    error.message
                );
            }
            Ok(parsed) => panic!("{body}: expected a refusal, got {parsed:?}"),
        }
    }

    #[test]
    fn registrations_parse_with_defaults() {
        let (instance, registering) = registration(&format!(r#"{{"instance":{INSTANCE}}}"#)).unwrap();
        assert_eq!(instance.key(), "/fivefold/registry/account/hz-a-1");
        assert_eq!(registering, Registering::NewLease(DEFAULT_TTL_SECONDS));
        let (_, registering) =
            registration(&format!(r#"{{"instance":{INSTANCE},"ttl_seconds":3}}"#)).unwrap();
        assert_eq!(registering, Registering::NewLease(3));
        let (_, registering) =
            registration(&format!(r#"{{"instance":{INSTANCE},"lease":"7587869913443542273"}}"#)).unwrap();
        assert_eq!(registering, Registering::Lease(7587869913443542273));
        let (_, registering) = registration(&format!(r#"{{"instance":{INSTANCE},"lease":12}}"#)).unwrap();
        assert_eq!(registering, Registering::Lease(12));
    }

    #[test]
    fn bad_registrations_say_what_to_fix() {
        refused("", "not a registration");
        refused("{", "not a registration");
        refused("[]", "not a registration");
        refused(r#"{"ttl_seconds":5}"#, "missing field `instance`");
        refused(&format!(r#"{{"instance":{INSTANCE},"ttl":5}}"#), "unknown field `ttl`");
        refused(r#"{"instance":{"service":"account"}}"#, "missing field");
        refused(&format!(r#"{{"instance":{INSTANCE},"ttl_seconds":"5"}}"#), "not a registration");
        refused(&format!(r#"{{"instance":{INSTANCE},"ttl_seconds":1}}"#), "below the minimum");
        refused(&format!(r#"{{"instance":{INSTANCE},"ttl_seconds":-4}}"#), "below the minimum");
        refused(&format!(r#"{{"instance":{INSTANCE},"ttl_seconds":99999}}"#), "above the maximum");
        refused(&format!(r#"{{"instance":{INSTANCE},"lease":"x"}}"#), "decimal");
        refused(&format!(r#"{{"instance":{INSTANCE},"lease":0}}"#), "decimal");
        refused(&format!(r#"{{"instance":{INSTANCE},"lease":"5","ttl_seconds":5}}"#), "not both");
        let bad_address = INSTANCE.replace("127.0.0.1:8080", "nowhere");
        refused(&format!(r#"{{"instance":{bad_address}}}"#), "host:port");
        let bad_service = INSTANCE.replace("\"account\"", "\"Account\"");
        refused(&format!(r#"{{"instance":{bad_service}}}"#), "service name");
    }

    #[test]
    fn lease_errors_are_recognised() {
        assert!(lease_not_found_status(GRPC_NOT_FOUND, "etcdserver: requested lease not found"));
        assert!(!lease_not_found_status(14, "etcdserver: leader changed"));
        assert!(lease_not_found(&etcd_client::Error::LeaseKeepAliveError("lease not found".into())));
        assert!(!lease_not_found(&etcd_client::Error::InvalidArgs("lease not found".into())));
    }
}
