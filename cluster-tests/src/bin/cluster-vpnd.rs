//! The real `vpnd` entry point, built inside this crate so its tests can find
//! it through `CARGO_BIN_EXE_cluster-vpnd` (cargo offers that only for a
//! package's own binaries).

fn main() -> std::process::ExitCode {
    vpn_node::main()
}
