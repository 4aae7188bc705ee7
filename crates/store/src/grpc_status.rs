//! Aligns gRPC status codes that tonic chooses differently from grpc-go (and
//! so from etcd), where clients look at the code.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::HeaderMap;
use http_body::{Body, Frame};

/// gRPC's numeric codes, as text in the `grpc-status` header.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// A request larger than the server's decoding limit: tonic answers
/// OutOfRange, grpc-go (etcd) ResourceExhausted. Clients treat the latter as
/// "too large, do not retry", so answer that.
fn fix_oversized(headers: &mut HeaderMap) {
    let oversized = headers.get("grpc-status").is_some_and(|v| v == OUT_OF_RANGE)
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            // grpc-message is percent-encoded; spaces travel as %20.
            .is_some_and(|m| m.replace("%20", " ").contains("decoded message length too large"));
    if oversized {
        headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
}

/// The response mapper for the client-facing server: fixes the status whether
/// it travels in the headers (trailers-only responses) or in the trailers.
pub fn align_codes(response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    fix_oversized(&mut parts.headers);
    http::Response::from_parts(parts, tonic::body::Body::new(AlignTrailers { inner: body }))
}

struct AlignTrailers<B> {
    inner: B,
}

impl<B: Body + Unpin> Body for AlignTrailers<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|result| {
                result.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        fix_oversized(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &'static str, message: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(status));
        h.insert("grpc-message", HeaderValue::from_static(message));
        h
    }

    #[test]
    fn only_the_oversized_decode_error_is_rewritten() {
        let mut h = headers("11", "Error,%20decoded%20message%20length%20too%20large:%20found%205%20bytes");
        fix_oversized(&mut h);
        assert_eq!(h["grpc-status"], "8");
        let mut h = headers("11", "etcdserver: mvcc: required revision is a future revision");
        fix_oversized(&mut h);
        assert_eq!(h["grpc-status"], "11");
    }
}
