//! `etcdserverpb.Watch`: many watchers per stream, history replay, progress.
//!
//! One task per stream owns its watchers. Each watcher remembers the next
//! revision it owes its client; the task sends every revision in order, whole,
//! from the hub's window or from disk, so events are never lost, duplicated or
//! split across responses — also on a follower and across leader changes,
//! because events come from this member's own applied log.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use etcd_proto::etcdserverpb::watch_create_request::FilterType;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::watch_server::Watch;
use etcd_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use etcd_proto::mvccpb::{event::EventType, Event};
use mvcc::span::Span;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

use crate::node::StoreNode;

/// Batches of responses queued for one stream before its task waits for the
/// client (with small events, about 1 MiB).
pub const WATCH_STREAM_QUEUE: usize = 16;
/// Encoded bytes of responses gathered into one batch before it is queued.
/// A batch reaches the connection as one piece, which gRPC encodes into one
/// frame and the socket takes in one write: queued one by one, 10,000
/// watchers' events for a revision cost 10,000 wake-ups and 10,000 writes.
pub const WATCH_BATCH_BYTES: usize = 64 * 1024;
/// Bytes of events in one response, at most, unless one revision alone is
/// larger: under clients' default 4 MiB message limit.
pub const WATCH_RESPONSE_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Watchers one stream may hold.
pub const WATCHERS_PER_STREAM_MAX: usize = 10_000;
/// Events per response to one watcher (whole revisions, so a revision with
/// more events is still sent whole): keeps replies under clients' default
/// 4 MiB message limit and bounds what a catch-up step holds in memory.
pub const WATCH_BATCH_EVENTS_MAX: usize = 1_000;
/// etcd's answer to a client-chosen watch id that is taken.
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// The watch id of a progress response that speaks for every watcher.
const PROGRESS_ALL: i64 = -1;
/// The watch id of a refused create.
const REFUSED: i64 = -1;

pub struct WatchService {
    pub node: Arc<StoreNode>,
    pub progress_notify_interval: Duration,
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<tonic::codegen::BoxStream<WatchResponse>>, Status> {
        let (tx, rx) = mpsc::channel::<Vec<WatchResponse>>(WATCH_STREAM_QUEUE);
        // A side channel that can overtake a full queue, for the stall error.
        let (control, control_rx) = mpsc::channel(1);
        let stream = WatchStream {
            node: self.node.clone(),
            tx,
            batch: Vec::new(),
            batch_bytes: 0,
            control,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_interval: self.progress_notify_interval,
            stall_timeout: self.node.config.watch_stall_timeout,
        };
        tokio::spawn(stream.run(request.into_inner()));
        let batches = Batches { rx, current: Vec::new().into_iter() };
        let responses = ReceiverStream::new(control_rx).merge(batches);
        Ok(Response::new(Box::pin(responses)))
    }
}

/// The responses of queued batches, one by one: when several are ready, gRPC
/// encodes them into one frame.
struct Batches {
    rx: mpsc::Receiver<Vec<WatchResponse>>,
    current: std::vec::IntoIter<WatchResponse>,
}

impl tokio_stream::Stream for Batches {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(response) = self.current.next() {
                return Poll::Ready(Some(Ok(response)));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(batch) => self.current = batch.into_iter(),
                None => return Poll::Ready(None),
            }
        }
    }
}

struct Watcher {
    span: Span,
    /// The next revision this watcher owes its client.
    next: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether anything was sent since the last progress tick.
    sent_recently: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let put = event.r#type == EventType::Put as i32;
        if (put && self.no_put) || (!put && self.no_delete) {
            return false;
        }
        event.kv.as_ref().is_some_and(|kv| self.span.contains(&kv.key))
    }

    fn shape(&self, event: &Event) -> Event {
        let mut event = event.clone();
        if !self.prev_kv {
            event.prev_kv = None;
        }
        event
    }
}

/// The client went away: the stream ends.
struct Gone;

struct WatchStream {
    node: Arc<StoreNode>,
    tx: mpsc::Sender<Vec<WatchResponse>>,
    /// Responses not yet queued, and their encoded size.
    batch: Vec<WatchResponse>,
    batch_bytes: usize,
    control: mpsc::Sender<Result<WatchResponse, Status>>,
    /// How long the client may leave a full queue unread before the stream
    /// is ended with an error (`--experimental-watch-stall-timeout`).
    stall_timeout: Duration,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    progress_interval: Duration,
}

impl WatchStream {
    async fn run(mut self, mut incoming: Streaming<WatchRequest>) {
        let mut published = self.node.watch_hub.subscribe();
        let mut ticker = tokio::time::interval(self.progress_interval);
        ticker.tick().await;
        loop {
            if self.deliver().await.is_err() || self.flush().await.is_err() {
                return;
            }
            tokio::select! {
                request = incoming.message() => match request {
                    Ok(Some(request)) => {
                        if self.handle(request).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
                changed = published.changed() => if changed.is_err() { return },
                _ = ticker.tick() => if self.progress_tick().await.is_err() { return },
            }
        }
    }

    /// Adds a response to the batch, and queues the batch once it is full.
    /// The run loop flushes what is left before it waits for anything.
    async fn send(&mut self, response: WatchResponse) -> Result<(), Gone> {
        self.batch_bytes += response.encoded_len();
        self.batch.push(response);
        if self.batch_bytes >= WATCH_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues the batch. A client that reads nothing for `stall_timeout`
    /// while the queue is full loses the stream, with a reason: a slow reader
    /// is otherwise only ever behind (it catches up from disk), never cut off.
    async fn flush(&mut self) -> Result<(), Gone> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        let batch = match self.tx.try_send(batch) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Gone),
            Err(mpsc::error::TrySendError::Full(batch)) => batch,
        };
        match tokio::time::timeout(self.stall_timeout, self.tx.send(batch)).await {
            Ok(sent) => sent.map_err(|_| Gone),
            Err(_) => {
                let reason = format!(
                    "fivefold: watch stream canceled: the client read nothing for {:?} (--experimental-watch-stall-timeout)",
                    self.stall_timeout
                );
                tracing::warn!(watchers = self.watchers.len(), "{reason}");
                let _ = self.control.try_send(Err(Status::resource_exhausted(reason)));
                Err(Gone)
            }
        }
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse { header: Some(self.node.header(revision)), watch_id, ..Default::default() }
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Gone> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let revision = self.node.watch_hub.revision();
                    let response =
                        WatchResponse { canceled: true, ..self.response(cancel.watch_id, revision) };
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Speak for every watcher: the revision all of them have reached.
                let head = self.node.watch_hub.revision();
                let reached = self.watchers.values().map(|w| w.next - 1).min().unwrap_or(head).min(head);
                self.send(self.response(PROGRESS_ALL, reached)).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Gone> {
        let head = self.node.watch_hub.revision();
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        // etcd answers a refused create with watch id -1, so that clients do
        // not take it for the cancel of a live watcher.
        let refuse = |reason: &str| WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..self.response(REFUSED, head)
        };
        if self.watchers.contains_key(&id) {
            let refused = refuse(DUPLICATE_WATCH_ID);
            return self.send(refused).await;
        }
        if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            let reason = format!("fivefold: more than {WATCHERS_PER_STREAM_MAX} watchers on one stream");
            let refused = refuse(&reason);
            return self.send(refused).await;
        }
        let filters: Vec<i32> = create.filters.clone();
        let watcher = Watcher {
            span: Span::new(&create.key, &create.range_end),
            next: if create.start_revision > 0 { create.start_revision } else { head + 1 },
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            sent_recently: false,
        };
        self.watchers.insert(id, watcher);
        if id == self.next_id {
            self.next_id += 1;
        }
        self.send(WatchResponse { created: true, ..self.response(id, head) }).await
    }

    /// Sends every watcher what it is owed up to the published revision.
    async fn deliver(&mut self) -> Result<(), Gone> {
        let head = self.node.watch_hub.revision();
        let ids: Vec<i64> = self.watchers.iter().filter(|(_, w)| w.next <= head).map(|(id, _)| *id).collect();
        for id in ids {
            while let Some(next) = self.watchers.get(&id).map(|w| w.next).filter(|next| *next <= head) {
                let Some((events, reached)) = self.read(next, head).await? else {
                    self.cancel_compacted(id, head).await?;
                    break;
                };
                let watcher = self.watchers.get_mut(&id).expect("watcher present");
                watcher.next = reached + 1;
                let events: Vec<Event> =
                    events.iter().filter(|e| watcher.wants(e)).map(|e| watcher.shape(e)).collect();
                if events.is_empty() {
                    continue;
                }
                watcher.sent_recently = true;
                let fragment = watcher.fragment;
                self.send_events(id, head, events, fragment).await?;
            }
        }
        Ok(())
    }

    /// The events of `from..=to` (at most about `WATCH_BATCH_EVENTS_MAX`,
    /// whole revisions), from the window or from disk, and the last revision
    /// they cover. `None`: `from` has been compacted (or history could not
    /// be read: the watcher is canceled as if it had been).
    async fn read(&mut self, from: i64, to: i64) -> Result<Option<(Vec<Event>, i64)>, Gone> {
        match self.node.watch_hub.window(from, to, WATCH_BATCH_EVENTS_MAX) {
            Err(_compacted) => return Ok(None),
            Ok(Some((revisions, reached))) => {
                let events = revisions.iter().flat_map(|(_, events)| events.iter().cloned()).collect();
                return Ok(Some((events, reached)));
            }
            Ok(None) => {}
        }
        // What is gathered goes out before a disk read, which may take a
        // while (a catch-up that finds little for this watcher).
        self.flush().await?;
        let mvcc = self.node.mvcc.clone();
        let Ok(history) =
            tokio::task::spawn_blocking(move || mvcc.history(from, to, WATCH_BATCH_EVENTS_MAX)).await
        else {
            return Ok(None);
        };
        Ok(match history {
            Ok(history) => Some((history.events, history.next - 1)),
            Err(mvcc::KvError::Request(mvcc::MvccError::Compacted)) => None,
            Err(e) => {
                tracing::error!(error = %e, "reading watch history");
                None
            }
        })
    }

    async fn cancel_compacted(&mut self, id: i64, head: i64) -> Result<(), Gone> {
        self.watchers.remove(&id);
        let compacted = self.node.watch_hub.compacted();
        let response =
            WatchResponse { compact_revision: compacted, canceled: true, ..self.response(id, head) };
        self.send(response).await
    }

    async fn send_events(
        &mut self,
        id: i64,
        head: i64,
        events: Vec<Event>,
        fragment: bool,
    ) -> Result<(), Gone> {
        let limit = self.node.config.max_request_bytes;
        if !fragment {
            // Whole revisions per response, as many as fit in
            // `WATCH_RESPONSE_BYTES_MAX` (a larger revision goes alone).
            let mut chunk: Vec<Event> = Vec::new();
            let mut size = 0;
            for event in events {
                let revision = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                let new_revision = chunk.last().is_some_and(|last| revision(last) != revision(&event));
                let bytes = event.encoded_len();
                if new_revision && size + bytes > WATCH_RESPONSE_BYTES_MAX {
                    self.send(WatchResponse {
                        events: std::mem::take(&mut chunk),
                        ..self.response(id, head)
                    })
                    .await?;
                    size = 0;
                }
                size += bytes;
                chunk.push(event);
            }
            return self.send(WatchResponse { events: chunk, ..self.response(id, head) }).await;
        }
        if events.iter().map(Message::encoded_len).sum::<usize>() <= limit {
            return self.send(WatchResponse { events, ..self.response(id, head) }).await;
        }
        // Split one large response into fragments, each marked but the last.
        let mut chunk = Vec::new();
        let mut size = 0;
        let total = events.len();
        for (i, event) in events.into_iter().enumerate() {
            size += event.encoded_len();
            chunk.push(event);
            if size >= limit || i + 1 == total {
                let last = i + 1 == total;
                let response = WatchResponse {
                    events: std::mem::take(&mut chunk),
                    fragment: !last,
                    ..self.response(id, head)
                };
                self.send(response).await?;
                size = 0;
            }
        }
        Ok(())
    }

    async fn progress_tick(&mut self) -> Result<(), Gone> {
        let head = self.node.watch_hub.revision();
        let mut due = Vec::new();
        for (id, watcher) in self.watchers.iter_mut() {
            if watcher.progress_notify && watcher.next > head && !watcher.sent_recently {
                due.push(*id);
            }
            watcher.sent_recently = false;
        }
        for id in due {
            self.send(self.response(id, head)).await?;
        }
        Ok(())
    }
}
