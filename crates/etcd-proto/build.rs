//! Compiles the protos with a `protoc` shipped inside a crate, so a fresh machine
//! needs no system install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().generate_default_stubs(true).compile_protos(
        &[
            "proto/mvccpb/kv.proto",
            "proto/authpb/auth.proto",
            "proto/etcdserverpb/rpc.proto",
            "proto/fivefoldpb/peer.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
