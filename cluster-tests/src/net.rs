//! Loopback addresses for test nodes. Each cluster gets its own random
//! 127.x.y.1 address, and ports are reserved by binding port 0, so tests that
//! run in parallel do not collide.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A random loopback IP (127.0.0.0/8, never 127.0.0.1 itself).
pub fn random_loopback_ip() -> Ipv4Addr {
    let n = std::process::id()
        ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()));
    Ipv4Addr::new(127, ((n >> 8) % 250 + 2) as u8, (n % 250 + 2) as u8, 1)
}

/// A port on `ip` that was free a moment ago.
pub fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local addr")
}

/// A port free on every interface a moment ago (engines use host networking
/// and listen on all interfaces).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind a port");
    listener.local_addr().expect("local addr").port()
}
