//! Compiles the protos with the vendored protoc, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC.
    std::env::set_var("PROTOC", protoc);
    // The descriptors let tests walk every RPC the services declare (the
    // authorization table must name each one).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("vpn_descriptor.bin");
    tonic_prost_build::configure().file_descriptor_set_path(descriptors).compile_protos(
        &["proto/vpn/v1/vpn.proto", "proto/vpn/v1/raft.proto", "proto/vpn/v1/agent.proto"],
        &["proto"],
    )?;
    Ok(())
}
