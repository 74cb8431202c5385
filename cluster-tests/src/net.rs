//! Loopback addresses for test nodes. Each cluster gets its own random
//! 127.x.y.1 address, and ports are checked free by binding them, so tests
//! that run in parallel do not collide.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// A random loopback IP (127.0.0.0/8, never 127.0.0.1 itself).
pub fn random_loopback_ip() -> Ipv4Addr {
    let n = std::process::id()
        ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()));
    Ipv4Addr::new(127, ((n >> 8) % 250 + 2) as u8, (n % 250 + 2) as u8, 1)
}

/// A port on `ip` that was free a moment ago, from 20000-31999: below the
/// kernel's ephemeral range (32768-60999 by default), whose ports outgoing
/// connections take (a node once found its port so taken between this
/// check and its start), and above [`free_port`]'s range for engines.
pub fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    match walk_ports(20_000, 12_000, |port| TcpListener::bind((ip, port)).is_ok()) {
        Some(port) => SocketAddr::from((ip, port)),
        None => TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("bind a loopback port"),
    }
}

/// A port free on every interface, for TCP and UDP, a moment ago: for
/// engines, which use host networking and listen on all interfaces.
///
/// It comes from 10000-19999: below the ephemeral range, where outgoing
/// connections would take it (an engine once found its port so taken), and
/// below [`free_addr`]'s range, whose loopback listeners a wildcard bind
/// would collide with. `runtime/tests/common` picks its engines' ports the
/// same way from 9000-9999.
pub fn free_port() -> u16 {
    let free = |port| {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
            && UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
    };
    walk_ports(10_000, 10_000, free).unwrap_or_else(|| panic!("no free port for an engine in 10000-19999"))
}

/// The first of up to 200 ports in `first..first + span` that `free`
/// accepts. Successive calls walk the range from a per-process start (in
/// steps of a prime, so every port comes up), so two picks in a row never
/// come out the same and parallel test processes start apart.
fn walk_ports(first: u16, span: u32, free: impl Fn(u16) -> bool) -> Option<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    (0..200)
        .map(|_| NEXT.fetch_add(1, Ordering::Relaxed))
        .map(|step| first + (seed.wrapping_add(step.wrapping_mul(7_919)) % span) as u16)
        .find(|port| free(*port))
}
