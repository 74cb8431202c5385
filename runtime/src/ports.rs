//! Host ports. With host networking every engine shares the host's ports, so
//! two things are checked here:
//!
//! - An inbound's port must be free before its container is created (a bind
//!   test on 0.0.0.0, TCP and, for Shadowsocks, UDP), so a taken port is a
//!   clear error instead of a container that crash-loops.
//! - Each engine also listens on a loopback API port (clash API), and each
//!   generation on a port of its own. The port scheme: these are **allocated, not derived**.
//!   At container creation the kernel hands out free ports on 127.0.0.1 (bind
//!   to port 0; the listeners are held until just before the container starts),
//!   skipping every port recorded in the `vpn.api-ports` or `vpn.engine-port` label of any engine
//!   container on this host (any node's, running or not). The ports are then
//!   recorded in the new container's `vpn.api-ports` label, so a restarted
//!   vpnd adopts them. Derived ports (say listen port + 10000) can hit another
//!   inbound's port or another node's API; allocated ones cannot. If a port is
//!   taken while an engine is down (e.g. across a host reboot), sing-box fails
//!   to start, Docker shows the container not running, and the reconciler
//!   recreates it with fresh ports.
//! - A public port routed to a generation (see [`crate::nftables`]) is bound
//!   by nothing, so the kernel would hand it to the next program that asks
//!   for a port, which would then never see a connection. [`PublicPorts`]
//!   holds each routed port bound (never listening) while vpnd runs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Mutex, MutexGuard};

use socket2::{Domain, Socket, Type};

use crate::{Protocol, RuntimeError};

/// Fails with [`RuntimeError::PortInUse`] when something already listens on `port`.
pub fn ensure_free(protocol: Protocol, port: u16) -> Result<(), RuntimeError> {
    let in_use = |transport| RuntimeError::PortInUse { port, transport, protocol: protocol.as_str().to_string() };
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|_| in_use("tcp"))?;
    if protocol.uses_udp() {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|_| in_use("udp"))?;
    }
    Ok(())
}

/// The public ports this node routes, each held by a socket bound to every
/// address (IPv6 and IPv4), without `SO_REUSEADDR` and never listening: no
/// other bind of the port succeeds and the kernel hands it out to no one,
/// while the redirect still takes every connection (it runs before the
/// socket lookup). After a vpnd restart the next reconcile takes them again.
#[derive(Debug, Default)]
pub struct PublicPorts {
    held: Mutex<BTreeMap<u16, Held>>,
}

#[derive(Debug)]
struct Held {
    _tcp: Socket,
    udp: Option<Socket>,
}

impl PublicPorts {
    /// Holds `port` for `protocol` (TCP, and UDP when it uses UDP); a port
    /// held already is kept. Fails with [`RuntimeError::PortInUse`] when
    /// something else has it.
    pub fn take(&self, protocol: Protocol, port: u16) -> Result<(), RuntimeError> {
        let in_use = |transport| RuntimeError::PortInUse { port, transport, protocol: protocol.as_str().to_string() };
        let mut held = self.lock();
        let tcp = match held.contains_key(&port) {
            true => None,
            false => Some(bind_exclusive(port, Type::STREAM).map_err(|_| in_use("tcp"))?),
        };
        let udp = match protocol.uses_udp() && held.get(&port).is_none_or(|h| h.udp.is_none()) {
            true => Some(bind_exclusive(port, Type::DGRAM).map_err(|_| in_use("udp"))?),
            false => None,
        };
        match (tcp, held.get_mut(&port)) {
            (Some(tcp), _) => {
                held.insert(port, Held { _tcp: tcp, udp });
            }
            (None, Some(h)) => h.udp = h.udp.take().or(udp),
            (None, None) => {}
        }
        Ok(())
    }

    /// Lets go of every port `routed` says is no longer routed.
    pub fn retain(&self, routed: impl Fn(u16) -> bool) {
        self.lock().retain(|port, _| routed(*port));
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, Held>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Binds `port` on every address: dual-stack IPv6, or IPv4 where IPv6 is off.
fn bind_exclusive(port: u16, kind: Type) -> std::io::Result<Socket> {
    let v6 = Socket::new(Domain::IPV6, kind, None).and_then(|s| {
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(s)
    });
    v6.or_else(|_| {
        let s = Socket::new(Domain::IPV4, kind, None)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
        Ok(s)
    })
}

/// Loopback ports held open until [`release`](Reserved::release) so nothing else takes them meanwhile.
#[derive(Debug)]
pub struct Reserved {
    listeners: Vec<TcpListener>,
}

impl Reserved {
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.port()).collect()
    }

    /// Frees the ports for the engine about to bind them.
    pub fn release(self) {
        drop(self.listeners);
    }
}

/// `count` free loopback ports, none of them in `exclude` (ports recorded by other engines).
pub fn reserve_loopback(count: usize, exclude: &BTreeSet<u16>) -> Result<Reserved, RuntimeError> {
    reserve(Ipv4Addr::LOCALHOST, count, exclude)
}

/// A port free on every address (for TCP, and UDP if `protocol` uses it),
/// not in `exclude`: where a generation listens (the public port is
/// redirected to it, see [`crate::nftables`]).
pub fn reserve_generation_port(protocol: Protocol, exclude: &BTreeSet<u16>) -> Result<Reserved, RuntimeError> {
    let mut taken = exclude.clone();
    for _ in 0..100 {
        let reserved = reserve(Ipv4Addr::UNSPECIFIED, 1, &taken)?;
        let port = reserved.ports()[0];
        if !protocol.uses_udp() || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return Ok(reserved);
        }
        taken.insert(port);
    }
    Err(RuntimeError::io("find a port free on TCP and UDP on", "0.0.0.0", std::io::Error::other("none in 100 tries")))
}

fn reserve(ip: Ipv4Addr, count: usize, exclude: &BTreeSet<u16>) -> Result<Reserved, RuntimeError> {
    let mut listeners = Vec::with_capacity(count);
    // Rejected picks stay bound until the end so the kernel does not hand them out again.
    let mut rejected = Vec::new();
    while listeners.len() < count {
        let listener =
            TcpListener::bind((ip, 0)).map_err(|e| RuntimeError::io("bind a free port on", ip.to_string(), e))?;
        let port = listener.local_addr().map_err(|e| RuntimeError::io("read address of", ip.to_string(), e))?.port();
        if exclude.contains(&port) {
            rejected.push(listener);
            if rejected.len() > 1000 {
                return Err(RuntimeError::io(
                    "find a free port on",
                    ip.to_string(),
                    std::io::Error::other("every port offered is recorded by another engine"),
                ));
            }
        } else {
            listeners.push(listener);
        }
    }
    Ok(Reserved { listeners })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_reported_with_its_transport() {
        // Below the ephemeral range and claimed from the other tests: a port
        // the kernel handed out could carry another test's outgoing
        // connection once let go, and would not be "free again".
        let port = vpn_test_ports::claim(9_000..10_000, vpn_test_ports::free_everywhere).expect("a free port");
        let taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind");
        let err = ensure_free(Protocol::VlessTls, port).expect_err("taken").to_string();
        assert!(err.contains(&format!("port {port}/tcp")) && err.contains("--inbound vless-tls="), "{err}");
        drop(taken);
        ensure_free(Protocol::VlessTls, port).expect("free again");

        // Another such port, for UDP.
        let port = vpn_test_ports::claim(9_000..10_000, vpn_test_ports::free_everywhere).expect("a free port");
        let _udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind udp");
        let err = ensure_free(Protocol::Shadowsocks2022, port).expect_err("udp taken").to_string();
        assert!(err.contains("/udp"), "{err}");
    }

    #[test]
    fn a_held_public_port_is_taken_from_everyone_else_until_let_go() {
        // Below the kernel's ephemeral range (a port it hands out may
        // meanwhile carry a parallel test's outgoing connection), claimed
        // from the other tests.
        let ports = PublicPorts::default();
        let port = vpn_test_ports::claim(9_000..10_000, |p| ports.take(Protocol::Shadowsocks2022, p).is_ok())
            .expect("a port free on TCP and UDP");
        ports.take(Protocol::Shadowsocks2022, port).expect("taking it again keeps it");
        for ip in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST] {
            assert!(TcpListener::bind((ip, port)).is_err(), "tcp {ip}:{port} held");
            assert!(UdpSocket::bind((ip, port)).is_err(), "udp {ip}:{port} held");
        }
        assert!(ensure_free(Protocol::Shadowsocks2022, port).is_err());
        let other = PublicPorts::default();
        let err = other.take(Protocol::VlessTls, port).expect_err("held by the first").to_string();
        assert!(err.contains(&format!("port {port}/tcp")), "{err}");

        ports.retain(|p| p != port);
        ensure_free(Protocol::Shadowsocks2022, port).expect("free once let go");
    }

    #[test]
    fn reserved_ports_are_distinct_held_and_avoid_recorded_ones() {
        let first = reserve_loopback(2, &BTreeSet::new()).expect("reserve");
        let ports = first.ports();
        assert_eq!(ports.len(), 2);
        assert_ne!(ports[0], ports[1]);
        // Held: binding them again fails until released.
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).is_err());
        let exclude: BTreeSet<u16> = ports.iter().copied().collect();
        first.release();
        for _ in 0..20 {
            let next = reserve_loopback(2, &exclude).expect("reserve");
            assert!(next.ports().iter().all(|p| !exclude.contains(p)));
        }
    }
}
