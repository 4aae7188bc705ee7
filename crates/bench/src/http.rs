//! `fivefold bench http`: a closed-loop HTTP/1.1 load generator, for the
//! gateway against nginx and a backend alone. Each of `conns` connections
//! sends one request at a time (HTTP/1.1 has no multiplexing) until `total`
//! requests were sent or the time limit passed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::report::{histogram, Report};
use crate::BenchError;

/// One HTTP workload.
#[derive(Debug, Clone)]
pub struct HttpBenchConfig {
    /// `http://host:port/path?query`.
    pub url: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    pub conns: usize,
    pub total: u64,
    pub time_limit: Duration,
}

fn bad(message: String) -> BenchError {
    BenchError::Invalid(message)
}

/// Runs the workload; a non-2xx answer or a broken connection counts as an error
/// (the connection is opened again).
pub async fn run_http(config: &HttpBenchConfig) -> Result<Report, BenchError> {
    let uri: http::Uri = config.url.parse().map_err(|e| bad(format!("bad --url {:?}: {e}", config.url)))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(format!("--url {:?} must be http://host:port/...", config.url)));
    }
    let authority =
        uri.authority().ok_or_else(|| bad(format!("--url {:?} has no host", config.url)))?.clone();
    let path = uri.path_and_query().map_or("/".to_string(), |pq| pq.as_str().to_string());
    let mut headers = http::HeaderMap::new();
    for (name, value) in &config.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| bad(format!("header {name:?}: {e}")))?;
        let value =
            http::HeaderValue::from_str(value).map_err(|e| bad(format!("header value {value:?}: {e}")))?;
        headers.insert(name, value);
    }
    headers
        .insert(http::header::HOST, http::HeaderValue::from_str(authority.as_str()).expect("an authority"));
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + config.time_limit;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..config.conns.max(1) {
        let (sent, headers, path, address) =
            (sent.clone(), headers.clone(), path.clone(), authority.to_string());
        let total = config.total;
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut errors = 0u64;
            let mut connection = None;
            while sent.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                if connection.is_none() {
                    let Ok(stream) = tokio::net::TcpStream::connect(&address).await else {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
                    {
                        Ok((sender, conn)) => {
                            tokio::spawn(conn);
                            connection = Some(sender);
                        }
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    }
                }
                let sender = connection.as_mut().expect("connected above");
                let mut request = http::Request::new(Empty::new());
                *request.uri_mut() = path.parse().expect("a valid path");
                *request.headers_mut() = headers.clone();
                let began = Instant::now();
                let outcome = async {
                    let response = sender.send_request(request).await.ok()?;
                    let status = response.status();
                    response.into_body().collect().await.ok()?;
                    Some(status)
                }
                .await;
                match outcome {
                    Some(status) if status.is_success() => {
                        let _ = latencies.record(began.elapsed().as_micros().max(1) as u64);
                    }
                    Some(_) => errors += 1,
                    None => {
                        errors += 1;
                        connection = None;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = histogram();
    let mut errors = 0;
    for task in tasks {
        let (latencies, task_errors) =
            task.await.map_err(|e| bad(format!("a connection task failed: {e}")))?;
        all.add(&latencies).map_err(|e| bad(format!("merging latencies: {e}")))?;
        errors += task_errors;
    }
    Ok(Report::new("http", &all, errors, started.elapsed()))
}
