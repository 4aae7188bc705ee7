//! `fivefold bench registry-push`: how fast a registry server pushes a change
//! to many subscribers. Opens `subscribers` watch streams
//! (`GET /v1/services/{service}/watch`, newline-delimited JSON) on one server,
//! then registers `changes` instances through the same server's HTTP API, one
//! at a time, and measures, for every subscriber and change, the time from the
//! registration's acknowledgement to the subscriber reading its line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Semaphore};

use crate::report::{histogram, Report};
use crate::BenchError;

/// Streams opened concurrently while setting up.
const OPENING_AT_ONCE: usize = 200;

/// One registry push run.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// `host:port` of a `fivefold registry serve`.
    pub registry: String,
    pub service: String,
    pub subscribers: usize,
    pub changes: usize,
    /// Bound on the whole run.
    pub time_limit: Duration,
}

fn bad(message: String) -> BenchError {
    BenchError::Invalid(message)
}

async fn connect(address: &str) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, BenchError> {
    let stream =
        tokio::net::TcpStream::connect(address).await.map_err(|e| bad(format!("connect {address}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad(format!("handshake with {address}: {e}")))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One subscriber: opens the stream, reads the snapshot line, reports ready,
/// then reports the arrival time of every further line.
async fn subscriber(
    address: Arc<String>,
    path: Arc<String>,
    opening: Arc<Semaphore>,
    ready: mpsc::Sender<()>,
    arrivals: mpsc::UnboundedSender<(usize, Instant)>,
    changes: usize,
) -> Result<(), BenchError> {
    let mut permit = Some(opening.acquire_owned().await.map_err(|e| bad(e.to_string()))?);
    let mut sender = connect(&address).await?;
    let request = http::Request::builder()
        .uri(path.as_str())
        .header(http::header::HOST, address.as_str())
        .body(Empty::new())
        .map_err(|e| bad(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| bad(format!("watch: {e}")))?;
    if !response.status().is_success() {
        return Err(bad(format!("watch answered {}", response.status())));
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    let mut lines = 0usize;
    while lines <= changes {
        // Every complete line in the buffer first.
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            buffer.advance(end + 1);
            if lines == 0 {
                // Open: let the next stream start.
                permit.take();
                ready.send(()).await.map_err(|e| bad(e.to_string()))?;
            } else {
                let _ = arrivals.send((lines - 1, Instant::now()));
            }
            lines += 1;
        }
        if lines > changes {
            break;
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
            }
            _ => return Err(bad("a watch stream ended early".into())),
        }
    }
    Ok(())
}

/// Runs the push benchmark; latencies are from each registration's
/// acknowledgement to each subscriber's read of the matching line.
pub async fn run_push(config: &PushConfig) -> Result<Report, BenchError> {
    let deadline = Instant::now() + config.time_limit;
    let address = Arc::new(config.registry.clone());
    let path = Arc::new(format!("/v1/services/{}/watch", config.service));
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let (ready_tx, mut ready_rx) = mpsc::channel(config.subscribers.max(1));
    let (arrivals_tx, mut arrivals_rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..config.subscribers {
        tasks.spawn(subscriber(
            address.clone(),
            path.clone(),
            opening.clone(),
            ready_tx.clone(),
            arrivals_tx.clone(),
            config.changes,
        ));
    }
    drop((ready_tx, arrivals_tx));
    for opened in 0..config.subscribers {
        let ready = tokio::time::timeout_at(deadline.into(), ready_rx.recv()).await;
        if !matches!(ready, Ok(Some(()))) {
            let failure = match tasks.try_join_next() {
                Some(Ok(Err(e))) => e.to_string(),
                _ => "timed out".to_string(),
            };
            return Err(bad(format!(
                "only {opened} of {} subscribers opened their stream: {failure}",
                config.subscribers
            )));
        }
    }
    let mut latencies = histogram();
    let mut errors = 0u64;
    let started = Instant::now();
    for change in 0..config.changes {
        let body = serde_json::json!({
            "instance": {
                "service": config.service, "id": format!("push-{change}"), "address": "127.0.0.1:9",
                "unit": "bench", "dc": "bench", "city": "bench"
            },
            "ttl_seconds": 60
        })
        .to_string();
        let acknowledged = post(&address, "/v1/instances", body).await?;
        let mut seen = 0usize;
        while seen < config.subscribers {
            match tokio::time::timeout_at(deadline.into(), arrivals_rx.recv()).await {
                Ok(Some((index, at))) if index == change => {
                    let _ = latencies
                        .record(at.saturating_duration_since(acknowledged).as_micros().max(1) as u64);
                    seen += 1;
                }
                Ok(Some(_)) => errors += 1,
                _ => {
                    errors += (config.subscribers - seen) as u64;
                    break;
                }
            }
        }
    }
    Ok(Report::new("registry-push", &latencies, errors, started.elapsed()))
}

/// POSTs `body` and returns when the 2xx answer arrived.
async fn post(address: &str, path: &str, body: String) -> Result<Instant, BenchError> {
    let stream =
        tokio::net::TcpStream::connect(address).await.map_err(|e| bad(format!("connect {address}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| bad(format!("handshake: {e}")))?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header(http::header::HOST, address)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| bad(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| bad(format!("register: {e}")))?;
    let at = Instant::now();
    let status = response.status();
    let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if !status.is_success() {
        return Err(bad(format!("register answered {status}: {}", String::from_utf8_lossy(&text))));
    }
    Ok(at)
}
