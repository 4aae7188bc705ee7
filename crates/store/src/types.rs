//! The Raft type configuration: what a log entry carries, what applying one
//! returns, and what a member is.

use std::fmt;

use etcd_proto::fivefoldpb::{Command, CommandResponse};
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A member's Raft id: the etcd member id (`topology::member_id`).
pub type NodeId = u64;

/// What the membership records about a member: only what every member
/// derives identically from `--initial-cluster` (initial members must agree on
/// the first membership byte for byte). Client URLs and placement labels are
/// published through the log once the member runs (`MemberAttributes`), as
/// etcd publishes its member attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Added as a voter (etcd's MemberAdd without `--learner`): the member
    /// joins as a learner and the leader promotes it once it has caught up,
    /// so it never votes on entries it does not have.
    pub promote_when_caught_up: bool,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

/// A log entry's payload: an etcd write, encoded with protobuf.
#[derive(Debug, Clone, PartialEq)]
pub struct Request(pub Command);

/// Bytes an entry's payload takes (its protobuf encoding; 0 for a blank or
/// membership entry): what replication budgets and durable commits count.
pub fn payload_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(request) => prost::Message::encoded_len(&request.0),
        _ => 0,
    }
}

/// The result of applying one entry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Response(pub CommandResponse);

/// Decodes a protobuf message from serde bytes. Asking for bytes (not a
/// `Vec<u8>`, which serde reads element by element) lets bincode hand over
/// the whole slice at once; the encoding is the same either way.
struct ProtobufVisitor<M>(std::marker::PhantomData<M>);

impl<M: Message + Default> serde::de::Visitor<'_> for ProtobufVisitor<M> {
    type Value = M;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("protobuf-encoded bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<M, E> {
        M::decode(bytes).map_err(E::custom)
    }

    fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<M, E> {
        self.visit_bytes(&bytes)
    }
}

macro_rules! serde_as_protobuf {
    ($wrapper:ident, $message:ty) => {
        impl Serialize for $wrapper {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0.encode_to_vec())
            }
        }

        impl<'de> Deserialize<'de> for $wrapper {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_byte_buf(ProtobufVisitor::<$message>(std::marker::PhantomData)).map($wrapper)
            }
        }
    };
}
serde_as_protobuf!(Request, Command);
serde_as_protobuf!(Response, CommandResponse);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use etcd_proto::fivefoldpb::command::Kind;
        let kind = match &self.0.kind {
            Some(Kind::Put(_)) => "put",
            Some(Kind::DeleteRange(_)) => "delete_range",
            Some(Kind::Txn(_)) => "txn",
            Some(Kind::Compaction(_)) => "compaction",
            Some(Kind::MemberAttributes(_)) => "member_attributes",
            Some(Kind::LeaseGrant(_)) => "lease_grant",
            Some(Kind::LeaseRevoke(_)) => "lease_revoke",
            Some(Kind::Alarm(_)) => "alarm",
            Some(Kind::Batch(_)) => "batch",
            None => "empty",
        };
        f.write_str(kind)
    }
}

openraft::declare_raft_types!(
    /// fivefold's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_data::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Vote = openraft::Vote<NodeId>;

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::PutRequest;
    use etcd_proto::fivefoldpb::command::Kind;

    #[test]
    fn requests_keep_their_bincode_encoding() {
        let put = PutRequest { key: b"k".to_vec(), value: vec![7; 300], ..Default::default() };
        let request = Request(Command { kind: Some(Kind::Put(put)) });
        let bytes = bincode::serialize(&request).unwrap();
        // The same bytes as a length-prefixed byte string: logs written
        // before the bytes visitor still read back.
        let as_vec: Vec<u8> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(as_vec, request.0.encode_to_vec());
        assert_eq!(bincode::serialize(&as_vec).unwrap(), bytes);
        assert_eq!(bincode::deserialize::<Request>(&bytes).unwrap(), request);
        assert!(bincode::deserialize::<Request>(&bytes[..bytes.len() - 1]).is_err());
    }
}
