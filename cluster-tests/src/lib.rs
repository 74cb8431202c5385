//! Fixtures for multi-node tests over real processes, real gRPC and real sled.
//!
//! Layout:
//! - [`net`]: loopback addresses for test nodes.
//! - [`process`]: one `vpnd` process ([`NodeProcess`]): start, SIGTERM, kill -9.
//! - [`cluster`]: a [`Cluster`] of processes formed by `--initial-members`,
//!   with clients and waits on conditions (never fixed sleeps).
//! - [`netns`]: a [`netns::Lab`] of network namespaces (a bridge, an address
//!   per node and one for clients) where tests cut links with iptables.
//! - [`cli`]: the real `vpnctl` as a process.
//! - [`mtls`]: certificates from the real `vpnctl pki` and a cluster on them.
//! - [`identity`]: real LDAP and OIDC servers (slapd, glewlwyd) for the login tests.
//! - [`docker`]: whether `docker_*` tests can run, and engine cleanup.
//! - [`traffic`]: a byte source, a real sing-box client, SOCKS5 fetches and
//!   downloads through it, client outbounds from users' links.
//! - [`dataplane`]: a cluster with data-plane nodes on real Docker, their
//!   catch-up, users' links and clients made from them.
//! - [`sim`]: simulated data-plane agents (real wire protocol, an engine
//!   double that applies at once) for scale runs without containers.
//! - [`fleet_checks`]: what a simulated fleet must see through faults (no
//!   placement on a down node, usage equal to what was billed).
//! - [`linearizability`]: a checker of recorded user-registry histories.

pub mod cli;
pub mod cluster;
pub mod dataplane;
pub mod docker;
pub mod fleet_checks;
pub mod identity;
pub mod linearizability;
pub mod mtls;
pub mod net;
pub mod netns;
pub mod process;
pub mod secrecy;
pub mod sim;
pub mod traffic;

pub use cluster::Cluster;
pub use process::NodeProcess;

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

use vpn_proto::v1::User;

/// The mutex's value, also after a panic elsewhere while it was held (a test
/// that failed says so on its own; its state is still worth reading).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A user as every node must agree on it: the subscription URL names the
/// answering node (without `--subscription-base-url`), so it is left out.
pub fn replicated(mut user: User) -> User {
    user.subscription_url.clear();
    user
}
use std::time::Duration;

/// Polls `check` until it returns `Ok`, or fails the test after `timeout`
/// with `what` and the last error seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    within(what, timeout, check).await.unwrap_or_else(|e| panic!("{e}"))
}

/// As [`eventually`], but a timeout is an `Err` naming `what` and the last
/// error seen, for a caller that adds what it knows (say a node's log).
pub async fn within<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
