//! Generates the ridegate.v1 code and its descriptor set (for server reflection) with a
//! vendored `protoc`, so a fresh machine needs nothing beyond cargo. Set `PROTOC` to use
//! another compiler.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/ridegate/v1/gate.proto",
    "proto/ridegate/v1/gate_state.proto",
    "proto/ridegate/v1/health_feed.proto",
    "proto/ridegate/v1/links.proto",
    "proto/ridegate/v1/platform.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    match env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ridegate_descriptor.bin"))
        // Malformed request bytes are the caller's fault: INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::StrictProstCodec")
        .compile_with_config(config, PROTOS, &["proto"])?;
    Ok(())
}
