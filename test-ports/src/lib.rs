//! Ports for the servers our tests start (vpnd nodes, engines, clients).
//!
//! A port checked free by binding it and then let go is free only until
//! someone else binds it. Within one process a walk that never repeats is
//! enough; across the test processes nextest runs side by side it is not:
//! two processes once walked onto the same port, both found it free, and the
//! second engine to start on it failed ("port 9802/tcp ... already in use").
//! So a test process first *claims* a port: an exclusive `flock` on a file
//! named for it in `$TMPDIR/vpn-test-ports`, held until the process exits
//! (the kernel drops the lock then, even after a crash or `kill -9`). A port
//! claimed by another live process is skipped; one whose claimant is gone
//! is claimed again.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use rustix::fs::{flock, FlockOperation};

/// How many ports one call tries before it gives up.
const TRIES: u32 = 1_000;

/// The first port of `range` that this process could claim and `free`
/// accepts, or `None` after [`TRIES`] ports. Successive calls walk the range
/// from a per-process start in steps of a prime (so every port comes up and
/// two calls never return the same port), and the claim keeps every other
/// test process off the port until this one exits.
pub fn claim(range: Range<u16>, free: impl Fn(u16) -> bool) -> Option<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(range.end.saturating_sub(range.start)).max(1);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    (0..TRIES)
        .map(|_| NEXT.fetch_add(1, Ordering::Relaxed))
        .map(|step| range.start + (seed.wrapping_add(step.wrapping_mul(7_919)) % span) as u16)
        .find(|port| claimed(*port) && free(*port))
}

/// True when nothing listens on `port` on any interface, for TCP and UDP:
/// what an engine needs, since engines use host networking.
pub fn free_everywhere(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() && UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// Takes the claim on `port` for the rest of this process. Where the claim
/// files cannot be made at all (a read-only temp dir) every port counts as
/// claimed, as before claims existed, and the reason is printed once.
fn claimed(port: u16) -> bool {
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
    static WARNED: Once = Once::new();
    let dir = std::env::temp_dir().join("vpn-test-ports");
    let file = std::fs::create_dir_all(&dir)
        .and_then(|()| OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string())));
    match file {
        Ok(file) => {
            let taken = flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok();
            if taken {
                HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(file);
            }
            taken
        }
        Err(e) => {
            WARNED.call_once(|| {
                eprintln!("vpn-test-ports: no claim files in {} ({e}); ports are only bind-checked", dir.display())
            });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_port_claimed_here_is_not_handed_out_again_here() {
        let first = claim(40_000..40_010, |_| true).expect("a port");
        let rest: Vec<u16> = (0..9).filter_map(|_| claim(40_000..40_010, |_| true)).collect();
        assert!(!rest.contains(&first), "{first} handed out twice: {rest:?}");
        assert_eq!(claim(40_000..40_010, |_| true), None, "all ten claimed, none left");
    }

    #[test]
    fn a_port_another_process_holds_is_skipped_until_it_exits() {
        // `flock -F` (util-linux) takes the lock and becomes `sleep`, so the
        // lock is held by one other process, as another test's claim is.
        let file = std::env::temp_dir().join("vpn-test-ports").join("40100");
        std::fs::create_dir_all(file.parent().expect("dir")).expect("claim dir");
        let mut holder =
            Command::new("flock").arg("-F").arg(&file).args(["sleep", "60"]).spawn().expect("flock(1) from util-linux");
        let held_elsewhere = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let probe = File::open(&file).expect("open the claim file");
            let free = flock(&probe, FlockOperation::NonBlockingLockExclusive).is_ok();
            drop(probe); // closing the only descriptor lets go of a probe's lock
            !free
        });
        assert!(held_elsewhere, "flock(1) took the lock within 10 s");
        assert_eq!(claim(40_100..40_101, |_| true), None, "held by another process");
        holder.kill().expect("kill the holder");
        holder.wait().expect("reap the holder");
        assert_eq!(claim(40_100..40_101, |_| true), Some(40_100), "claimed once the holder is gone");
    }
}
