//! The peer port of a real member takes raft streams beside gRPC: without
//! this, replication would fall back to gRPC silently and every other test
//! would still pass.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{bounded, start};
use store::raft_stream::{RaftStream, StreamError, METHOD_APPEND_ENTRIES};
use testkit::ClusterOptions;

const TEST_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_peer_port_serves_raft_streams_and_grpc() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::members(3)).await;
        let peer: SocketAddr = store::config::parse_url("peer URL", &cluster.peer_url(1)).unwrap();
        let mut stream = RaftStream::connect(peer).await.expect("the member answers the magic bytes");
        // A payload that is not an AppendEntries gets the member's error,
        // on the same stream, which then serves the next request.
        for _ in 0..2 {
            match stream.call(METHOD_APPEND_ENTRIES, b"not bincode").await {
                Err(StreamError::Remote(message)) => {
                    assert!(message.contains("bad raft payload"), "{message}")
                }
                other => panic!("expected the member's error, got {other:?}"),
            }
        }
        match stream.call(99, b"").await {
            Err(StreamError::Remote(message)) => {
                assert!(message.contains("unknown raft stream method"), "{message}")
            }
            other => panic!("expected the member's error, got {other:?}"),
        }
        // gRPC on the same port still works: the members replicate a write.
        let mut client = cluster.client(0).await;
        client.put("after-streams", "v", None).await.expect("put");
        let mut follower = cluster.client(2).await;
        let got = follower.get("after-streams", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"v");
    })
    .await;
}
