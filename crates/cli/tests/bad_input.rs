//! Malformed and hostile requests get a gRPC error, never a panic, and the member
//! that got them keeps serving. Every case is sent to a follower and to the leader
//! (a follower forwards writes, which is a second place to trip over bad input).

mod common;

use std::time::Duration;

use common::{assert_member_healthy, assert_tonic_status, bounded, start};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use prost::bytes::{Buf, BufMut};
use testkit::{Cluster, ClusterOptions};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

const TEST_LIMIT: Duration = Duration::from_secs(120);
const EMPTY_KEY: &str = "etcdserver: key is not provided";
/// Far over the default request limit (1.5 MiB) and the gRPC receive limit above it.
const HUGE_BYTES: usize = 5 * 1024 * 1024;

/// A codec that sends and receives message bytes as they are, so a test can put
/// anything on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let length = src.remaining();
        Ok(Some(src.copy_to_bytes(length).to_vec()))
    }
}

async fn channel(cluster: &Cluster, index: usize) -> Channel {
    Channel::from_shared(cluster.client_url(index))
        .expect("valid URL")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to member {index}: {e}"))
}

/// Sends `body` as the message of unary method `path`; returns the answer's bytes.
async fn call_raw(channel: &Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let response = grpc.unary(tonic::Request::new(body), PathAndQuery::from_static(path), RawCodec).await?;
    Ok(response.into_inner())
}

/// Members to try every case on: a follower, then the leader.
async fn targets(cluster: &Cluster) -> [usize; 2] {
    let leader = cluster.leader().await.expect("leader");
    [(leader + 1) % cluster.len(), leader]
}

fn assert_no_panic(cluster: &Cluster) {
    for index in 0..cluster.len() {
        let log = cluster.log(index);
        assert!(!log.contains("panicked at"), "member {index} panicked:\n{}", cluster.log_tails(40));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_rejected() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        let samples: [(&str, Vec<u8>); 4] = [
            ("all ones", vec![0xff; 32]),
            ("field number zero", vec![0x00, 0x01, 0x02]),
            ("length past the end", vec![0x0a, 0x10, b'a']),
            ("varint where bytes belong", vec![0x08, 0x96, 0x01]),
        ];
        let methods = ["/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/Txn"];
        for index in targets(&cluster).await {
            let channel = channel(&cluster, index).await;
            for method in methods {
                for (name, bytes) in &samples {
                    let result = call_raw(&channel, method, bytes.clone()).await;
                    let what = format!("{name} to {method} on member {index}");
                    match &result {
                        Err(status) if matches!(status.code(), Code::Internal | Code::InvalidArgument) => {}
                        other => panic!("{what}: expected Internal or InvalidArgument, got {other:?}"),
                    }
                    assert_member_healthy(&cluster, index, &format!("garbage/{index}")).await;
                }
            }
        }
        assert_no_panic(&cluster);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_but_invalid_messages_are_rejected() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        for index in targets(&cluster).await {
            let channel = channel(&cluster, index).await;
            let mut kv = KvClient::new(channel.clone());
            let after = |case: &str| format!("after-{case}/{index}");

            let sort_target =
                RangeRequest { key: b"a".to_vec(), sort_order: 1, sort_target: 99, ..Default::default() };
            let result = kv.range(sort_target).await;
            assert_eq!(
                result.as_ref().map_err(Status::code).err(),
                Some(Code::InvalidArgument),
                "sort_target 99: {result:?}"
            );
            assert_member_healthy(&cluster, index, &after("sort-target")).await;

            // etcd itself answers these with success (it ignores the unknown value),
            // so success or InvalidArgument are both fine; a crash or another code is not.
            let sort_order = RangeRequest { key: b"a".to_vec(), sort_order: 99, ..Default::default() };
            assert_ok_or_invalid(kv.range(sort_order).await, "sort_order 99");
            assert_member_healthy(&cluster, index, &after("sort-order")).await;
            for (name, compare) in [
                ("compare target 99", Compare { target: 99, ..compare_version("a") }),
                ("compare result 99", Compare { result: 99, ..compare_version("a") }),
            ] {
                let txn = TxnRequest { compare: vec![compare], ..Default::default() };
                assert_ok_or_invalid(kv.txn(txn).await, name);
                assert_member_healthy(&cluster, index, &after("compare")).await;
            }

            let put = |key: &str| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            };
            for (name, txn) in [
                (
                    "empty op alone",
                    TxnRequest { success: vec![RequestOp { request: None }], ..Default::default() },
                ),
                (
                    "empty op after a put",
                    TxnRequest {
                        success: vec![put("oneof/a"), RequestOp { request: None }],
                        ..Default::default()
                    },
                ),
                (
                    "empty op in failure",
                    TxnRequest { failure: vec![RequestOp { request: None }], ..Default::default() },
                ),
            ] {
                let result = kv.txn(txn).await;
                assert_eq!(
                    result.as_ref().map_err(Status::code).err(),
                    Some(Code::InvalidArgument),
                    "{name}: {result:?}"
                );
                assert_member_healthy(&cluster, index, &after("oneof")).await;
            }
            let leaked =
                kv.range(RangeRequest { key: b"oneof/a".to_vec(), ..Default::default() }).await.unwrap();
            assert!(leaked.into_inner().kvs.is_empty(), "a rejected txn wrote nothing");

            assert_tonic_status(
                kv.range(RangeRequest::default()).await,
                Code::InvalidArgument,
                EMPTY_KEY,
                "empty-key Range",
            );
            assert_tonic_status(
                kv.put(PutRequest::default()).await,
                Code::InvalidArgument,
                EMPTY_KEY,
                "empty-key Put",
            );
            assert_tonic_status(
                kv.delete_range(DeleteRangeRequest::default()).await,
                Code::InvalidArgument,
                EMPTY_KEY,
                "empty-key DeleteRange",
            );
            let empty_in_txn = TxnRequest { success: vec![put("")], ..Default::default() };
            assert_tonic_status(
                kv.txn(empty_in_txn).await,
                Code::InvalidArgument,
                EMPTY_KEY,
                "empty-key put in a Txn",
            );
            assert_member_healthy(&cluster, index, &after("empty-key")).await;
        }
        assert_no_panic(&cluster);
    })
    .await;
}

#[track_caller]
fn assert_ok_or_invalid<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    match &result {
        Ok(_) => {}
        Err(status) if status.code() == Code::InvalidArgument => {}
        Err(_) => panic!("{what}: expected success or InvalidArgument, got {result:?}"),
    }
}

fn compare_version(key: &str) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Version as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::Version(0)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_rejected_cleanly() {
    bounded(TEST_LIMIT, async {
        let cluster = start(ClusterOptions::default()).await;
        for index in targets(&cluster).await {
            let channel = channel(&cluster, index).await;
            let mut kv = KvClient::new(channel.clone());
            let value = vec![b'x'; HUGE_BYTES];
            let huge = PutRequest { key: b"huge".to_vec(), value, ..Default::default() };
            // gRPC's code for a message over the receive limit (grpc-go, so etcd, uses it).
            let clean = [Code::ResourceExhausted, Code::InvalidArgument];
            let result = kv.put(huge).await;
            match &result {
                Err(status) if clean.contains(&status.code()) => {}
                other => panic!("5 MiB put on member {index}: expected one of {clean:?}, got {other:?}"),
            }
            let raw = call_raw(&channel, "/etcdserverpb.KV/Range", vec![0x0a; HUGE_BYTES]).await;
            match &raw {
                Err(status) if clean.contains(&status.code()) => {}
                other => {
                    panic!("5 MiB garbage Range on member {index}: expected one of {clean:?}, got {other:?}")
                }
            }
            assert_member_healthy(&cluster, index, &format!("after-huge/{index}")).await;
            let probe = RangeRequest { key: b"huge".to_vec(), ..Default::default() };
            let stored = kv.range(probe).await.unwrap();
            assert!(stored.into_inner().kvs.is_empty(), "the oversized put wrote nothing");
        }
        assert_no_panic(&cluster);
    })
    .await;
}
