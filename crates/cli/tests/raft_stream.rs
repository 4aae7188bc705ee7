//! The peer port of a real member takes raft streams beside gRPC: without
//! this, replication (and a follower's forwarded writes) would fall back to
//! gRPC silently and every other test would still pass.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{bounded, http_get, metric_samples, start};
use etcd_proto::etcdserverpb::PutRequest;
use etcd_proto::fivefoldpb::{command, command_response, Command, CommandBatch, CommandResponse};
use prost::Message;
use store::raft_stream::{RaftStream, StreamError, METHOD_APPEND_ENTRIES, METHOD_PROPOSE};
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

fn put(key: &str, value: &str) -> Command {
    let put = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
    Command { kind: Some(command::Kind::Put(put)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_takes_forwarded_writes_on_a_stream_and_others_refuse_them() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::members(3)).await;
        let addr =
            |index| -> SocketAddr { store::config::parse_url("peer URL", &cluster.peer_url(index)).unwrap() };
        let batch = |round: usize| {
            let commands = vec![put(&format!("fwd-a{round}"), "1"), put(&format!("fwd-b{round}"), "2")];
            Command { kind: Some(command::Kind::Batch(CommandBatch { commands })) }.encode_to_vec()
        };

        // A batch of two puts, as a follower forwards it: one entry, one
        // response each, on a stream that then serves the next batch. (A
        // loaded machine may move leadership: look for the leader again.)
        let (leader, mut stream, first) = loop {
            let leader = cluster.leader().await.expect("a leader");
            let mut stream = RaftStream::connect(addr(leader)).await.expect("the leader takes streams");
            match stream.call(METHOD_PROPOSE, &batch(0)).await {
                Ok(reply) => break (leader, stream, reply),
                Err(StreamError::Status { message, .. }) if message == store::node::NOT_LEADER => continue,
                Err(e) => panic!("the leader refused a forwarded batch: {e}"),
            }
        };
        let follower = (leader + 1) % 3;
        for round in 0..2 {
            let reply = match round {
                0 => first.clone(),
                _ => stream.call(METHOD_PROPOSE, &batch(round)).await.expect("the batch is applied"),
            };
            let response = CommandResponse::decode(reply.as_slice()).expect("a CommandResponse");
            let Some(command_response::Kind::Batch(batch)) = response.kind else {
                panic!("not a batch answer")
            };
            assert_eq!(batch.responses.len(), 2);
            let revisions: Vec<i64> = batch.responses.iter().map(|r| r.revision).collect();
            assert_eq!(revisions[1], revisions[0] + 1, "the two puts applied in order: {revisions:?}");
        }
        let mut client = cluster.client(follower).await;
        let got = client.get("fwd-b1", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"2");

        // A command that does not decode is the leader's InvalidArgument.
        match stream.call(METHOD_PROPOSE, b"\xff\xff").await {
            Err(StreamError::Status { code, message }) => {
                assert_eq!(tonic::Code::from_i32(code), tonic::Code::InvalidArgument, "{message}");
            }
            other => panic!("expected a status, got {other:?}"),
        }

        // A follower proposes nothing: it answers "not the leader", and the
        // key stays absent.
        let mut stream = RaftStream::connect(addr(follower)).await.expect("a follower takes streams");
        match stream.call(METHOD_PROPOSE, &put("fwd-refused", "x").encode_to_vec()).await {
            Err(StreamError::Status { code, message }) => {
                assert_eq!(tonic::Code::from_i32(code), tonic::Code::Unavailable);
                assert_eq!(message, store::node::NOT_LEADER);
            }
            other => panic!("expected 'not the leader', got {other:?}"),
        }
        client.put("fwd-after", "y", None).await.expect("put");
        let got = client.get("fwd-refused", None).await.expect("get");
        assert!(got.kvs().is_empty(), "a follower proposed a forwarded write");
    })
    .await;
}

/// This member's forwarded batches by transport: (stream, gRPC).
async fn forwards(cluster: &testkit::Cluster, index: usize) -> (f64, f64) {
    let (status, _, text) = http_get(&cluster.client_url(index), "/metrics").await;
    assert_eq!(status, 200);
    let samples = metric_samples(&text);
    let of = |transport: &str| {
        let series = format!("fivefold_forwarded_batches_total{{transport=\"{transport}\"}}");
        *samples.get(&series).unwrap_or_else(|| panic!("{series} in the metrics"))
    };
    (of("stream"), of("grpc"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_writes_reach_the_leader_on_streams() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::members(3)).await;
        let leader = cluster.leader().await.expect("a leader");
        let follower = (leader + 1) % 3;
        // Members publish their attributes through the log at start, so
        // the counters need not be zero: what the puts add is compared.
        let (streams_before, grpc_before) = forwards(&cluster, follower).await;
        let mut client = cluster.client(follower).await;
        for i in 0..20 {
            client
                .put(format!("via-follower-{i}"), format!("v{i}"), None)
                .await
                .expect("put through a follower");
        }
        let got = client.get("via-follower-19", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"v19");
        let (streams_after, grpc_after) = forwards(&cluster, follower).await;
        assert!(
            streams_after >= streams_before + 1.0,
            "the follower's writes did not go on streams: {streams_before} -> {streams_after}"
        );
        assert_eq!(grpc_after, grpc_before, "a forward fell back to gRPC");
    })
    .await;
}
