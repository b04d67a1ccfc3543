//! Compiles proto/ with protox (pure Rust) so building needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("agent/v1/agent.proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages that carry secrets get a redacting Debug of their own (src/lib.rs).
        .skip_debug([
            "agent.v1.ConfigFile",
            "agent.v1.JoinRequest",
            "agent.v1.ExecRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
