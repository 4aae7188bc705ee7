//! etcd v3 wire types and fivefold's peer protocol, generated from the protos in
//! `proto/`. No logic lives here.
//!
//! - `etcdserverpb`, `mvccpb`, `authpb`: etcd 3.5's packages, services and field
//!   numbers, written from etcd's public API reference so stock clients work.
//! - `fivefoldpb`: the replicated-log command format and the member-to-member
//!   `Peer` service. Never exposed to etcd clients.
//!
//! Must not depend on any other fivefold crate.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod fivefoldpb {
    tonic::include_proto!("fivefoldpb");
}
