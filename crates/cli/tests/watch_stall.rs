//! A watch client that stops reading is cut off after
//! `--experimental-watch-stall-timeout`, with a reason; one that merely reads
//! slowly never is (see `watch.rs`, the slow consumer).

mod common;

use std::time::Duration;

use common::{bounded, start};
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use testkit::ClusterOptions;

const TEST_LIMIT: Duration = Duration::from_secs(60);
/// Puts of 64 KiB: enough to fill the stream's queue and HTTP/2 windows.
const PUTS: usize = 200;
const VALUE_BYTES: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_client_that_stops_reading_is_cut_off_with_a_reason() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::members(1).arg("--experimental-watch-stall-timeout", "1s")).await;
        let mut watch = WatchClient::connect(cluster.client_url(0)).await.unwrap();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"stall/".to_vec(),
                range_end: b"stall0".to_vec(),
                ..Default::default()
            })),
        };
        let requests = tokio_stream::iter(vec![create]).chain(tokio_stream::pending());
        let mut stream = watch.watch(requests).await.unwrap().into_inner();
        let created = stream.message().await.unwrap().unwrap();
        assert!(created.created);

        // Write without reading the watch.
        let mut client = cluster.client(0).await;
        for i in 0..PUTS {
            client.put(format!("stall/{i:04}"), vec![b'v'; VALUE_BYTES], None).await.unwrap();
        }
        // Read nothing for well over the stall timeout, then drain.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut events = 0;
        let status = loop {
            match stream.message().await {
                Ok(Some(response)) => events += response.events.len(),
                Ok(None) => panic!("the stream ended without a reason after {events} events"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("read nothing for"), "{status:?}");
        assert!(events < PUTS, "the stream was cut off before delivering everything ({events} events)");
        // The member is fine and a new watch works.
        let mut again = WatchClient::connect(cluster.client_url(0)).await.unwrap();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"stall/".to_vec(),
                range_end: b"stall0".to_vec(),
                start_revision: 2,
                ..Default::default()
            })),
        };
        let requests = tokio_stream::iter(vec![create]).chain(tokio_stream::pending());
        let mut stream = again.watch(requests).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().unwrap().created);
        let replay = stream.message().await.unwrap().unwrap();
        assert!(!replay.events.is_empty(), "history replays to a new watcher");
    })
    .await;
}

use tokio_stream::StreamExt as _;
