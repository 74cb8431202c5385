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

/// A port on `ip` that was free a moment ago, below the kernel's ephemeral
/// range (32768-60999 by default). A node once found its port taken between
/// this check and its start: parallel tests' engines listen on all
/// interfaces on ports from that range ([`free_port`]), and outgoing
/// connections take theirs from it too.
pub fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    // Successive calls walk the range from a per-process start, so a node's
    // two ports (reserved one after the other) never come out the same.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..200 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(step.wrapping_mul(7_919)) % 12_000) as u16;
        if let Ok(listener) = TcpListener::bind((ip, port)) {
            return listener.local_addr().expect("local addr");
        }
    }
    let listener = TcpListener::bind((ip, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local addr")
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
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_246_822_519);
    for _ in 0..200 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + (seed.wrapping_add(step.wrapping_mul(7_919)) % 10_000) as u16;
        if free_on_every_interface(port) {
            return port;
        }
    }
    panic!("no free port for an engine in 10000-19999 after 200 tries");
}

fn free_on_every_interface(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() && UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}
