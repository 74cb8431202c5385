//! Compiles the engine's gRPC protocol (the part vpnd reads) with the vendored
//! protoc, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().build_server(false).compile_protos(&["proto/singbox/daemon.proto"], &["proto"])?;
    Ok(())
}
