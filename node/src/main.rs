//! `vpnd`: see the library's documentation.

fn main() -> std::process::ExitCode {
    vpn_node::main()
}
