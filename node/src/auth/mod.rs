//! Who may call what on the gRPC port. Every call is authenticated by the
//! node that receives it and authorized by the rule of its path in one
//! table ([`table::rule`]):
//! - internal RPCs by the caller's node certificate (never by what a request
//!   claims): Raft traffic from control-plane members, each as itself;
//! - public RPCs by a principal ([`identity`]): an API token
//!   (`authorization: Bearer`), a client certificate, or the principal a
//!   control-plane node relays with a write it forwarded; that principal's
//!   roles must grant the RPC's permission.
//!
//! TLS has already checked certificates against the cluster's CA. A refusal
//! is UNAUTHENTICATED (no or a bad credential) or PERMISSION_DENIED (naming
//! what is missing), changes nothing, is counted in
//! `vpn_auth_refusals_total{caller, rule}` and logged at most once a second.
//! An accepted public call runs in an audit scope ([`audit`]): what it
//! proposes is written with its audit record. Handlers read the [`Caller`]
//! (a certificate's principal) and the [`Granted`] principal this layer
//! leaves in the request's extensions. Under `--insecure` there are no
//! credentials and everything passes, as the flag says.
//!
//! Layout: `table` (the rule of every RPC), `identity` (principals, API
//! tokens, what a principal may do), `audit` (the scope and the records).

pub mod audit;
pub mod identity;
pub mod table;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tokio::task::futures::TaskLocalFuture;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use vpn_pki::{CertInfo, Principal, Role};
use vpn_storage::access::{Permission, Permissions};

use crate::api::convert;
use crate::metrics::AuthRefusalLabels;
use crate::node::Node;
use crate::raft::network::HEADER_FROM;
use audit::CallScope;
use identity::{AuthMethod, Identity, IDENTITY_HEADER};
pub use table::Rule;

/// The node certificate's principal of a call, for handlers that check the
/// request against it (a heartbeat names its node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Principal);

/// The principal a public call was granted for, and all it may do (a
/// handler redacts what `users.secrets` would show, or refuses to grant
/// more than the caller holds).
#[derive(Debug, Clone)]
pub struct Granted {
    pub identity: Identity,
    pub permissions: Permissions,
}

impl Granted {
    pub fn may(&self, p: Permission) -> bool {
        self.permissions.contains(p)
    }
}

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
    /// The second of the last refusal logged (refusals are logged at most once a second).
    last_logged: Arc<AtomicU64>,
}

impl AuthLayer {
    pub fn new(node: Arc<Node>, tls: bool) -> Self {
        Self { node, tls, last_logged: Arc::default() }
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

/// What the layer lets through: the caller's certificate principal, and
/// for a public call, its principal and method (the audit scope).
struct Admitted {
    caller: Option<Caller>,
    granted: Option<(Granted, String)>,
}

type Scoped<F> = TaskLocalFuture<Option<CallScope>, F>;

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Scoped<S::Future>, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.policy.admit(&req) {
            Ok(Admitted { caller, granted }) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
                let scope = granted.map(|(granted, method)| {
                    let scope = CallScope { identity: granted.identity.clone(), method };
                    req.extensions_mut().insert(granted);
                    scope
                });
                Either::Left(audit::SCOPE.scope(scope, self.inner.call(req)))
            }
            Err(status) => Either::Right(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

impl AuthLayer {
    fn admit<B>(&self, req: &http::Request<B>) -> Result<Admitted, Status> {
        let path = req.uri().path();
        // A path no service declares: let a principal through to UNIMPLEMENTED.
        let rule = table::rule(path).unwrap_or(Rule::Public(None));
        let method = path.rsplit('/').next().unwrap_or_default().to_owned();
        let source = source(req);
        if !self.tls {
            // Nothing is verified: a forwarded call keeps its first node's record of the caller.
            let relayed = relayed_identity(req).filter(|_| forwarded(req)).and_then(Result::ok);
            let identity = relayed.unwrap_or(Identity {
                principal: "insecure".into(),
                method: AuthMethod::None,
                groups: Vec::new(),
                source,
            });
            let granted = Granted { identity, permissions: Permissions::all() };
            return Ok(Admitted { caller: None, granted: Some((granted, method)) });
        }
        let principal =
            peer_principal(req).map_err(|why| self.refuse(rule, "invalid", Status::unauthenticated(why)))?;
        let caller = principal.clone().map(Caller);
        match rule {
            Rule::Anyone => {
                // A join a control-plane node forwarded is the joiner's, not the node's.
                let relayed = match &principal {
                    Some(Principal::Node { role: Role::ControlPlane, .. }) if forwarded(req) => {
                        relayed_identity(req).and_then(Result::ok)
                    }
                    _ => None,
                };
                let identity = relayed.unwrap_or_else(|| Identity {
                    principal: principal.as_ref().map_or_else(|| "anonymous".to_owned(), ToString::to_string),
                    method: AuthMethod::None,
                    groups: Vec::new(),
                    source,
                });
                let granted = Granted { identity, permissions: Permissions::NONE };
                Ok(Admitted { caller, granted: Some((granted, method)) })
            }
            Rule::Join if matches!(principal, Some(Principal::Node { .. })) && !forwarded(req) => {
                // A node adding itself; `check_join` holds it to its own id.
                // Its identity goes with the call should it be forwarded.
                let id = match &principal {
                    Some(Principal::Node { id, .. }) => *id,
                    _ => 0,
                };
                let identity = Identity {
                    principal: node_principal(id),
                    method: AuthMethod::Certificate,
                    groups: Vec::new(),
                    source,
                };
                let granted = Granted { identity, permissions: Permissions::NONE };
                Ok(Admitted { caller, granted: Some((granted, method)) })
            }
            Rule::Public(_) | Rule::Join if !matches!(principal, Some(Principal::Node { .. })) || forwarded(req) => {
                let need = match rule {
                    Rule::Public(need) => need,
                    _ => Some(Permission::MembersWrite),
                };
                let granted = self.grant(req, principal.as_ref(), need, rule, source)?;
                Ok(Admitted { caller, granted: Some((granted, method)) })
            }
            _ => {
                let Some(principal) = principal else {
                    let why = "no client certificate: present one issued by the cluster's CA (vpnctl --cert/--key)";
                    return Err(self.refuse(rule, "anonymous", Status::unauthenticated(why)));
                };
                self.check_node(req, &principal, rule).map_err(|why| {
                    let status = Status::permission_denied(format!("{principal} may not call {path}: {why}"));
                    self.refuse(rule, &principal.uri(), status)
                })?;
                Ok(Admitted { caller, granted: None })
            }
        }
    }

    /// The principal of a public call, if it holds `need`.
    fn grant<B>(
        &self,
        req: &http::Request<B>,
        cert: Option<&Principal>,
        need: Option<Permission>,
        rule: Rule,
        source: String,
    ) -> Result<Granted, Status> {
        let now = convert::now_ms();
        let identity = match (bearer(req), cert) {
            // A control-plane node relaying a write it forwarded: believed
            // for its certificate, re-authorized here.
            (_, Some(Principal::Node { role: Role::ControlPlane, id })) => {
                let identity = relayed_identity(req)
                    .ok_or_else(|| {
                        let why =
                            format!("node {id} forwarded a call without its caller's identity: upgrade node {id}");
                        self.refuse(rule, &format!("node {id}"), Status::unauthenticated(why))
                    })?
                    .map_err(|why| self.refuse(rule, "invalid", Status::unauthenticated(why)))?;
                // A control-plane node adding itself, through a member that
                // checked its certificate and id (`check_join`).
                if rule == Rule::Join && identity.principal.starts_with(NODE_PRINCIPAL) {
                    return Ok(Granted { identity, permissions: Permissions::NONE });
                }
                identity
            }
            (_, Some(node @ Principal::Node { .. })) => {
                let why =
                    format!("{node} may not call the public API: a data-plane node speaks only the agent protocol");
                return Err(self.refuse(rule, &node.uri(), Status::permission_denied(why)));
            }
            (Some(bearer), _) => self
                .node
                .state
                .read(|s| identity::bearer_identity(bearer, s, now, source))
                .map_err(|status| self.refuse(rule, "invalid", status))?,
            (None, Some(Principal::Client { name })) => {
                Identity { principal: name.clone(), method: AuthMethod::Certificate, groups: Vec::new(), source }
            }
            (None, None) => {
                let why =
                    "no credential: give an API token (vpnctl --token) or a client certificate (vpnctl --cert/--key)";
                return Err(self.refuse(rule, "anonymous", Status::unauthenticated(why)));
            }
        };
        let permissions = self
            .node
            .state
            .read(|s| identity.permissions(s, now))
            .map_err(|status| self.refuse(rule, &identity.principal, status))?;
        if let Some(need) = need.filter(|p| !permissions.contains(*p)) {
            let why = format!(
                "{} lacks permission {need} for {}: an admin can bind a role that has it (vpnctl role bind ROLE --user {})",
                identity.principal,
                req.uri().path(),
                identity.principal
            );
            return Err(self.refuse(rule, &identity.principal, Status::permission_denied(why)));
        }
        Ok(Granted { identity, permissions })
    }

    /// Whether a node certificate may make an internal call.
    fn check_node<B>(&self, req: &http::Request<B>, principal: &Principal, rule: Rule) -> Result<(), String> {
        let claimed = req.headers().get(HEADER_FROM).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        match (principal, rule) {
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
            (Principal::Node { .. }, _) => {
                Err("a node certificate may call the public API only to relay a forwarded write".to_owned())
            }
            (Principal::Client { .. }, _) => Err("internal RPCs take node certificates only".to_owned()),
        }
    }

    fn refuse(&self, rule: Rule, caller: &str, status: Status) -> Status {
        let labels = AuthRefusalLabels { caller: caller.to_owned(), rule: rule.name() };
        self.node.metrics.auth_refusals.get_or_create(&labels).inc();
        let second = u64::try_from(convert::now_ms() / 1000).unwrap_or_default();
        if self.last_logged.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(caller, "refused a call (more this second are counted, not logged): {}", status.message());
        }
        status
    }
}

/// How a node adding itself is named in a forwarded identity and the
/// audit log; no client certificate, token or login can carry a ':' this way.
const NODE_PRINCIPAL: &str = "node:";

fn node_principal(id: u64) -> String {
    format!("{NODE_PRINCIPAL}{id}")
}

/// The caller's identity that a forwarding node put on the call
/// (`x-vpn-identity`), if there is one; believed only as each caller of this
/// says (from a control-plane member, or where nothing is verified).
fn relayed_identity<B>(req: &http::Request<B>) -> Option<Result<Identity, String>> {
    let header = req.headers().get(IDENTITY_HEADER)?;
    Some(header.to_str().map_err(|e| format!("{IDENTITY_HEADER}: {e}")).and_then(Identity::from_header))
}

fn forwarded<B>(req: &http::Request<B>) -> bool {
    req.headers().contains_key(crate::api::forward::FORWARDED_HEADER)
}

/// The API token of an `authorization: Bearer` header.
fn bearer<B>(req: &http::Request<B>) -> Option<&str> {
    let value = req.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

/// The caller's address, as this node saw it.
fn source<B>(req: &http::Request<B>) -> String {
    let tcp = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
        .or_else(|| req.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr));
    tcp.as_ref().map(SocketAddr::to_string).unwrap_or_default()
}

/// What the TLS client certificate of the connection names, if it sent one.
fn peer_principal<B>(req: &http::Request<B>) -> Result<Option<Principal>, String> {
    let certs = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs());
    let Some(leaf) = certs.as_ref().and_then(|certs| certs.first()) else { return Ok(None) };
    CertInfo::from_der(leaf).map(|info| Some(info.principal)).map_err(|e| format!("client certificate: {e}"))
}
