//! Who may call what on the gRPC port, decided by the caller's certificate
//! (never by what a request claims), in one table: [`rule`].
//!
//! TLS has already checked the certificate against the cluster's CA; this
//! layer reads the identity it names (`vpn_pki::Principal`) and applies the
//! rule of the RPC's path. A refusal is UNAUTHENTICATED (no certificate) or
//! PERMISSION_DENIED (the wrong kind of caller), changes nothing, and is
//! counted in `vpn_auth_refusals_total{caller, rule}`. Handlers that must also
//! check the request against the caller (a heartbeat names its node) read the
//! [`Caller`] this layer leaves in the request's extensions.
//! Under `--insecure` there is no certificate and everything passes, as the
//! flag says.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use vpn_pki::{CertInfo, Principal, Role};

use crate::metrics::AuthRefusalLabels;
use crate::node::Node;
use crate::raft::network::HEADER_FROM;

/// What an RPC requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Health probes (load balancers carry no certificate), and a node
    /// joining with a token (the handler checks the token).
    Anyone,
    /// The public API: a client certificate, or a control-plane node
    /// relaying a client's write it forwarded.
    Client,
    /// Raft traffic: control-plane members only, each as itself.
    ControlPlane,
    /// Leadership transfer: only the current leader may tell a node to run.
    Leader,
    /// Calls every node makes about itself (the agent protocol, certificate
    /// renewal); the handler checks that the request is about the caller.
    AnyNode,
    /// Adding a member: a client, or a control-plane node adding itself
    /// (`vpnd --join`; the handler checks the id and refuses a data-plane node).
    Join,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::Anyone => "anyone",
            Rule::Client => "client",
            Rule::ControlPlane => "controlplane",
            Rule::Leader => "leader",
            Rule::AnyNode => "node",
            Rule::Join => "join",
        }
    }
}

/// The one table: each RPC path to what it requires. An unknown path needs
/// a client (tonic then answers UNIMPLEMENTED to whoever got that far).
pub fn rule(path: &str) -> Rule {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Rule::Anyone,
        ("vpn.v1.Cluster", "AddMember") => Rule::Join,
        // A node with no certificate yet: the join token in the request is its credential.
        ("vpn.v1.Cluster", "Join") => Rule::Anyone,
        // A node about itself: the handler signs for the caller's own identity.
        ("vpn.v1.Cluster", "RenewCertificate") => Rule::AnyNode,
        // A data-plane node's agent, about itself: the handler checks the id.
        ("vpn.internal.v1.Agent", _) => Rule::AnyNode,
        ("vpn.internal.v1.Raft", "TimeoutNow") => Rule::Leader,
        // Raft traffic, and what a member relays to the leader for an agent
        // it serves (registrations, heartbeats).
        ("vpn.internal.v1.Raft", _) => Rule::ControlPlane,
        _ => Rule::Client,
    }
}

/// The authenticated caller of a request, for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Principal);

/// Under TLS, a node may add only itself, and a data-plane node not at all
/// (it is no Raft member); a request a control-plane node forwarded was
/// checked where it came in.
pub fn check_join<T>(req: &tonic::Request<T>, id: u64) -> Result<(), Status> {
    if crate::api::forward::was_forwarded(req) {
        return Ok(());
    }
    match req.extensions().get::<Caller>() {
        Some(Caller(Principal::Node { id: caller, .. })) if *caller != id => {
            Err(Status::permission_denied(format!("node {caller} may add only itself, not node {id}")))
        }
        Some(Caller(Principal::Node { role: Role::DataPlane, .. })) => Err(Status::permission_denied(format!(
            "node {id} holds a data-plane certificate: a data-plane node is no Raft member; its agent registers it"
        ))),
        _ => Ok(()),
    }
}

/// Checks that the request's [`Caller`] (when the port runs TLS) is node `id`.
pub fn require_node<T>(req: &tonic::Request<T>, id: u64, what: &str) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        None => Ok(()),
        Some(Caller(Principal::Node { id: caller, .. })) if *caller == id => Ok(()),
        Some(Caller(other)) => Err(Status::permission_denied(format!("{other} may not {what} for node {id}"))),
    }
}

/// The layer put in front of every service of the gRPC port.
#[derive(Clone)]
pub struct AuthLayer {
    node: Arc<Node>,
    /// False under `--insecure`.
    tls: bool,
}

impl AuthLayer {
    pub fn new(node: Arc<Node>, tls: bool) -> Self {
        Self { node, tls }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner, policy: self.clone() }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !self.policy.tls {
            return Either::Left(self.inner.call(req));
        }
        match self.policy.check(&req) {
            Ok(Some(caller)) => {
                req.extensions_mut().insert(caller);
                Either::Left(self.inner.call(req))
            }
            Ok(None) => Either::Left(self.inner.call(req)),
            Err(status) => Either::Right(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

impl AuthLayer {
    /// The caller, when the rule lets it through; else the refusal, counted.
    fn check<B>(&self, req: &http::Request<B>) -> Result<Option<Caller>, Status> {
        let path = req.uri().path();
        let rule = rule(path);
        let principal = match peer_principal(req) {
            Ok(principal) => principal,
            Err(why) => return Err(self.refuse(rule, "invalid", Status::unauthenticated(why))),
        };
        let Some(principal) = principal else {
            if rule == Rule::Anyone {
                return Ok(None);
            }
            let why = "no client certificate: present one issued by the cluster's CA (vpnctl --cert/--key)";
            return Err(self.refuse(rule, "anonymous", Status::unauthenticated(why)));
        };
        let claimed = req.headers().get(HEADER_FROM).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let allowed = match (&principal, rule) {
            (_, Rule::Anyone) => Ok(()),
            (Principal::Client { .. }, Rule::Client | Rule::Join) => Ok(()),
            (Principal::Node { .. }, Rule::Join) => Ok(()),
            (Principal::Node { role: Role::ControlPlane, .. }, Rule::Client) if forwarded(req) => Ok(()),
            (Principal::Node { role: Role::ControlPlane, id }, Rule::ControlPlane) => match claimed {
                Some(claimed) if claimed != *id => {
                    Err(format!("presents node {id}'s certificate but claims to be node {claimed}"))
                }
                _ => Ok(()),
            },
            (Principal::Node { role: Role::ControlPlane, id }, Rule::Leader) => match self.node.leader() {
                Some((leader, _)) if leader == *id => Ok(()),
                _ => Err("only the current leader may hand leadership over".to_owned()),
            },
            (Principal::Node { .. }, Rule::AnyNode) => Ok(()),
            (Principal::Node { role: Role::DataPlane, .. }, _) => {
                Err("a data-plane node may only speak the agent protocol, as itself".to_owned())
            }
            (Principal::Node { .. }, Rule::Client) => {
                Err("a node certificate may call the public API only to relay a forwarded write".to_owned())
            }
            (Principal::Client { .. }, _) => Err("internal RPCs take node certificates only".to_owned()),
        };
        match allowed {
            Ok(()) => Ok(Some(Caller(principal))),
            Err(why) => {
                let status = Status::permission_denied(format!("{principal} may not call {path}: {why}"));
                Err(self.refuse(rule, &principal.uri(), status))
            }
        }
    }

    fn refuse(&self, rule: Rule, caller: &str, status: Status) -> Status {
        let labels = AuthRefusalLabels { caller: caller.to_owned(), rule: rule.name() };
        self.node.metrics.auth_refusals.get_or_create(&labels).inc();
        tracing::debug!(caller, "refused: {}", status.message());
        status
    }
}

fn forwarded<B>(req: &http::Request<B>) -> bool {
    req.headers().contains_key(crate::api::forward::FORWARDED_HEADER)
}

/// What the TLS client certificate of the connection names, if it sent one.
fn peer_principal<B>(req: &http::Request<B>) -> Result<Option<Principal>, String> {
    let certs = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs());
    let Some(leaf) = certs.as_ref().and_then(|certs| certs.first()) else { return Ok(None) };
    CertInfo::from_der(leaf).map(|info| Some(info.principal)).map_err(|e| format!("client certificate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_has_the_rule_its_callers_need() {
        assert_eq!(rule("/grpc.health.v1.Health/Check"), Rule::Anyone);
        assert_eq!(rule("/vpn.v1.Users/CreateUser"), Rule::Client);
        assert_eq!(rule("/vpn.v1.Cluster/AddMember"), Rule::Join);
        assert_eq!(rule("/vpn.v1.Cluster/RemoveMember"), Rule::Client);
        assert_eq!(rule("/vpn.v1.Cluster/Join"), Rule::Anyone);
        assert_eq!(rule("/vpn.v1.Cluster/RenewCertificate"), Rule::AnyNode);
        assert_eq!(rule("/vpn.v1.Cluster/CreateJoinToken"), Rule::Client);
        assert_eq!(rule("/vpn.v1.Nodes/DrainNode"), Rule::Client);
        for raft in ["AppendEntries", "Vote", "InstallSnapshot", "ReadIndex"] {
            assert_eq!(rule(&format!("/vpn.internal.v1.Raft/{raft}")), Rule::ControlPlane, "{raft}");
        }
        assert_eq!(rule("/vpn.internal.v1.Raft/TimeoutNow"), Rule::Leader);
        assert_eq!(rule("/vpn.internal.v1.Raft/Heartbeat"), Rule::ControlPlane);
        assert_eq!(rule("/vpn.internal.v1.Raft/Propose"), Rule::ControlPlane);
        for agent in ["Register", "WatchAssignment", "Heartbeat"] {
            assert_eq!(rule(&format!("/vpn.internal.v1.Agent/{agent}")), Rule::AnyNode, "{agent}");
        }
        assert_eq!(rule("/something.Else/Method"), Rule::Client, "unknown paths need a client");
    }
}
