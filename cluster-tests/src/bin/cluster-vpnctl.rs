//! The real `vpnctl`, built inside this crate so its tests can run it as a
//! process (see `cluster-vpnd.rs`).

fn main() -> std::process::ExitCode {
    vpnctl::main()
}
