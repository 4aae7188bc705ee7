//! The response bodies: a whole JSON document, or a watch stream of
//! newline-delimited JSON driven by one [`Subscription`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use serde::Serialize;

use super::metrics::{Metrics, Push};
use crate::{Catalog, Change, Delta, Instance, RegistryError, Subscription};

/// Lines already waiting are sent together, up to about this many bytes per
/// frame (a burst of changes costs one write, not one per change).
const FRAME_BYTES_MAX: usize = 64 * 1024;

/// One line of a watch stream, as JSON.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line<'a> {
    Snapshot { revision: i64, instances: &'a [Instance] },
    Upsert { revision: i64, instance: &'a Instance },
    Remove { revision: i64, service: &'a str, id: &'a str },
}

/// `delta` as one line of newline-delimited JSON.
pub(crate) fn encode(delta: &Delta) -> Vec<u8> {
    let line = match delta {
        Delta::Snapshot { revision, instances } => Line::Snapshot { revision: *revision, instances },
        Delta::Upsert { revision, instance } => Line::Upsert { revision: *revision, instance },
        Delta::Remove { revision, service, id } => Line::Remove { revision: *revision, service, id },
    };
    let mut bytes = serde_json::to_vec(&line).expect("a delta serializes");
    bytes.push(b'\n');
    bytes
}

fn push_kind(delta: &Delta) -> Push {
    match delta {
        Delta::Snapshot { .. } => Push::Snapshot,
        Delta::Upsert { .. } => Push::Upsert,
        Delta::Remove { .. } => Push::Remove,
    }
}

type Pull = Pin<Box<dyn Future<Output = (Subscription, Result<Arc<Change>, RegistryError>)> + Send>>;

fn pull(mut subscription: Subscription) -> Pull {
    Box::pin(async move {
        let next = subscription.next_shared().await;
        (subscription, next)
    })
}

/// A watch stream: the subscription's snapshot, then its deltas, each pushed
/// as soon as the catalog has it. A subscriber that falls behind the catalog's
/// buffer is subscribed again and gets a fresh snapshot line. Costs no store
/// watch: it is one [`Catalog::subscribe`].
pub(crate) struct WatchBody {
    catalog: Arc<Catalog>,
    service: Option<String>,
    metrics: Arc<Metrics>,
    /// `None` once the catalog stopped (the stream then ends).
    pull: Option<Pull>,
}

impl WatchBody {
    pub fn new(catalog: Arc<Catalog>, service: Option<String>, metrics: Arc<Metrics>) -> WatchBody {
        metrics.subscriber_opened();
        let subscription = catalog.subscribe(service.as_deref());
        WatchBody { catalog, service, metrics, pull: Some(pull(subscription)) }
    }
}

impl Drop for WatchBody {
    fn drop(&mut self) {
        self.metrics.subscriber_closed();
    }
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let mut buffer = Vec::new();
        while buffer.len() < FRAME_BYTES_MAX {
            let Some(next) = this.pull.as_mut() else { break };
            let (subscription, result) = match next.as_mut().poll(cx) {
                Poll::Pending => break,
                Poll::Ready(done) => done,
            };
            match result {
                Ok(change) => {
                    // Encoded once for every subscriber that gets this change.
                    let line = change.json_line(encode);
                    this.metrics.pushed(push_kind(&change.delta));
                    buffer.extend_from_slice(&line);
                    this.pull = Some(pull(subscription));
                }
                Err(RegistryError::Lagged(missed)) => {
                    tracing::debug!(missed, "a watch subscriber fell behind; sending a fresh snapshot");
                    this.metrics.resubscribed();
                    this.pull = Some(pull(this.catalog.subscribe(this.service.as_deref())));
                }
                Err(error) => {
                    tracing::warn!(%error, "ending a watch stream");
                    this.pull = None;
                }
            }
        }
        if !buffer.is_empty() {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(buffer)))))
        } else if this.pull.is_none() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// Every response body of the API.
pub(crate) enum ApiBody {
    /// A whole document (taken once sent).
    Full(Option<Bytes>),
    Watch(Box<WatchBody>),
}

impl ApiBody {
    pub fn full(bytes: impl Into<Bytes>) -> ApiBody {
        ApiBody::Full(Some(bytes.into()))
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Watch(watch) => Pin::new(watch.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ApiBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ApiBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ApiBody::Watch(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::tests::sample;

    fn line(delta: Delta) -> (Push, serde_json::Value) {
        let (push, bytes) = (push_kind(&delta), encode(&delta));
        assert_eq!(bytes.last(), Some(&b'\n'), "a line ends with a newline");
        assert!(!bytes[..bytes.len() - 1].contains(&b'\n'), "a line is one line");
        (push, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn deltas_encode_as_typed_lines() {
        let (push, value) = line(Delta::Snapshot { revision: 7, instances: vec![sample()] });
        assert_eq!(push, Push::Snapshot);
        assert_eq!(value["type"], "snapshot");
        assert_eq!(value["revision"], 7);
        assert_eq!(value["instances"][0]["id"], "hz-a-1");
        assert_eq!(value["instances"][0]["health"], "up");

        let (push, value) = line(Delta::Upsert { revision: 8, instance: sample() });
        assert_eq!(push, Push::Upsert);
        assert_eq!((value["type"].as_str(), value["revision"].as_i64()), (Some("upsert"), Some(8)));
        let instance: Instance = serde_json::from_value(value["instance"].clone()).unwrap();
        assert_eq!(instance, sample());

        let (push, value) =
            line(Delta::Remove { revision: 9, service: "account".into(), id: "hz-a-1".into() });
        assert_eq!(push, Push::Remove);
        assert_eq!(
            value,
            serde_json::json!({"type": "remove", "revision": 9, "service": "account", "id": "hz-a-1"})
        );
    }

    #[test]
    fn a_full_body_is_one_frame_with_its_length() {
        let mut body = ApiBody::full("{}");
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"{}")),
            _ => panic!("expected the document"),
        }
        assert!(body.is_end_stream());
        assert!(matches!(Pin::new(&mut body).poll_frame(&mut cx), Poll::Ready(None)));
    }
}
