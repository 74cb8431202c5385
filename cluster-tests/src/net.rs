//! Loopback addresses for test nodes. Each cluster gets its own random
//! 127.x.y.1 address, and ports are checked free by binding them, so tests
//! that run in parallel do not collide.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A random loopback IP (127.0.0.0/8, never 127.0.0.1 itself).
pub fn random_loopback_ip() -> Ipv4Addr {
    let n = std::process::id()
        ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()));
    Ipv4Addr::new(127, ((n >> 8) % 250 + 2) as u8, (n % 250 + 2) as u8, 1)
}

/// A port on `ip` that was free a moment ago, from 20000-31999, claimed
/// for this process (see `vpn_test_ports`): below the kernel's ephemeral
/// range (32768-60999 by default), whose ports outgoing connections take (a
/// node once found its port so taken between this check and its start), and
/// above [`free_port`]'s range for engines.
pub fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    match vpn_test_ports::claim(20_000..32_000, |port| TcpListener::bind((ip, port)).is_ok()) {
        Some(port) => SocketAddr::from((ip, port)),
        None => TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("bind a loopback port"),
    }
}

/// A port free on every interface, for TCP and UDP, a moment ago, claimed
/// for this process: for engines, which use host networking and listen on
/// all interfaces.
///
/// It comes from 10000-19999: below the ephemeral range, where outgoing
/// connections would take it (an engine once found its port so taken), and
/// below [`free_addr`]'s range, whose loopback listeners a wildcard bind
/// would collide with. `runtime/tests/common` picks its engines' ports the
/// same way from 9000-9999.
pub fn free_port() -> u16 {
    vpn_test_ports::claim(10_000..20_000, vpn_test_ports::free_everywhere)
        .unwrap_or_else(|| panic!("no free port for an engine in 10000-19999"))
}
