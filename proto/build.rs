//! Generates the Rust types and the router's gRPC service of the `.proto` files. protoc comes from `protoc-bin-vendored` unless
//! `PROTOC` names another one, so a fresh machine needs no manual install.

use std::error::Error;

const PROTOS: &[&str] = &[
    "proto/chat/v1/events.proto",
    "proto/chat/v1/store.proto",
    "proto/chat/v1/router.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    // The router's service: server and client code (tonic).
    tonic_prost_build::configure().compile_with_config(config, PROTOS, &["proto"])?;
    Ok(())
}
