//! Join tokens, joining by CSR and renewing: the `Cluster` service's
//! certificate RPCs.
//!
//! A token's use is spent through Raft (`RedeemJoinToken`) before the leader
//! signs anything, so a token with N uses lets in at most N new ids, however
//! many nodes race for it, and an id is never issued twice. The leader signs
//! with the CA key it was given (`--ca-key-file`, or `--dev`'s own CA).

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use vpn_pki::join_token::JoinToken as TokenText;
use vpn_pki::{Principal, Role};
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::{
    CreateJoinTokenRequest, JoinRequest, JoinResponse, JoinTokenInfo, JoinTokenSecret, ListJoinTokensRequest,
    ListJoinTokensResponse, RenewCertificateRequest, RevokeJoinTokenRequest,
};
use vpn_storage::command::{Command, CommandResponse, Refusal};
use vpn_storage::trust::{JoinRole, JoinToken, TrustCommand};

use super::{convert, forward};
use crate::auth::Caller;
use crate::error::Error;
use crate::node::{Node, Route};

/// A token's lifetime when none is asked for, and the longest one allowed:
/// a token is a bearer secret, so it should die soon.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most nodes one token may let in.
const MAX_USES: u32 = 1000;

fn role_name(role: JoinRole) -> &'static str {
    match role {
        JoinRole::Controlplane => "controlplane",
        JoinRole::Dataplane => "dataplane",
    }
}

fn info(token: &JoinToken) -> JoinTokenInfo {
    JoinTokenInfo {
        id: token.id.clone(),
        role: role_name(token.role).to_owned(),
        expires_at: convert::rfc3339(token.expires_at_ms),
        uses_left: token.uses_left,
    }
}

fn ca_digest(node: &Node) -> Result<String, Error> {
    node.ca_digest
        .clone()
        .ok_or_else(|| Error::FailedPrecondition("this node runs --insecure: joining by token needs mutual TLS".into()))
}

async fn propose(node: &Node, cmd: TrustCommand) -> Result<CommandResponse, Error> {
    match node.propose(Command::Trust(cmd)).await? {
        CommandResponse::Refused(r) => Err(r.into()),
        other => Ok(other),
    }
}

/// The role, lifetime and uses a CreateJoinToken request asks for.
pub(crate) fn token_request(r: &CreateJoinTokenRequest) -> Result<(JoinRole, Duration, u32), Error> {
    let role = match r.role.as_str() {
        "controlplane" => JoinRole::Controlplane,
        "dataplane" => JoinRole::Dataplane,
        other => {
            let detail = format!("{other:?}: use controlplane or dataplane");
            return Err(Error::InvalidArgument { field: "role", detail });
        }
    };
    let ttl = match r.ttl_seconds {
        0 => DEFAULT_TTL,
        s if Duration::from_secs(s) > MAX_TTL => {
            let detail = format!("{s} s is over the longest lifetime of a token, {} days", MAX_TTL.as_secs() / 86_400);
            return Err(Error::InvalidArgument { field: "ttl_seconds", detail });
        }
        s => Duration::from_secs(s),
    };
    let uses = match r.uses {
        0 => 1,
        n if n > MAX_USES => {
            let detail = format!("{n} is over {MAX_USES}: make several tokens");
            return Err(Error::InvalidArgument { field: "uses", detail });
        }
        n => n,
    };
    Ok((role, ttl, uses))
}

pub async fn create(
    node: &Arc<Node>,
    req: Request<CreateJoinTokenRequest>,
) -> Result<Response<JoinTokenSecret>, Status> {
    let (role, ttl, uses) = token_request(req.get_ref())?;
    let digest = ca_digest(node)?;
    if let Route::Leader(ch) = node.route_write(forward::was_forwarded(&req))? {
        let fwd = forward::to_leader(node, "CreateJoinToken", req.into_inner());
        return forward::relayed(ClusterClient::new(ch).create_join_token(fwd).await);
    }
    let token = TokenText::generate(&digest).map_err(|e| Error::Internal(e.to_string()))?;
    let now = convert::now_ms();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let record = JoinToken {
        id: token.id.clone(),
        secret_sha256: token.secret_sha256(),
        role,
        created_at_ms: now,
        expires_at_ms: now.saturating_add(ttl_ms),
        uses_left: uses,
    };
    propose(node, TrustCommand::CreateJoinToken(record.clone())).await?;
    Ok(Response::new(JoinTokenSecret {
        id: record.id,
        token: token.to_string(),
        role: role_name(role).to_owned(),
        expires_at: convert::rfc3339(record.expires_at_ms),
    }))
}

pub async fn list(
    node: &Arc<Node>,
    _req: Request<ListJoinTokensRequest>,
) -> Result<Response<ListJoinTokensResponse>, Status> {
    node.ensure_persisted()?;
    node.linearizable_barrier().await?;
    let join_tokens = node.state.read(|s| s.trust.join_tokens.values().map(info).collect());
    Ok(Response::new(ListJoinTokensResponse { join_tokens }))
}

pub async fn revoke(node: &Arc<Node>, req: Request<RevokeJoinTokenRequest>) -> Result<Response<JoinTokenInfo>, Status> {
    if let Route::Leader(ch) = node.route_write(forward::was_forwarded(&req))? {
        let fwd = forward::to_leader(node, "RevokeJoinToken", req.into_inner());
        return forward::relayed(ClusterClient::new(ch).revoke_join_token(fwd).await);
    }
    match propose(node, TrustCommand::RevokeJoinToken { id: req.into_inner().id }).await? {
        CommandResponse::JoinToken(token) => Ok(Response::new(info(&token))),
        other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
    }
}

/// Signs a new certificate for the calling node's own identity (its current
/// certificate's id and role): renewal needs no token and no Raft write.
pub async fn renew(node: &Arc<Node>, req: Request<RenewCertificateRequest>) -> Result<Response<JoinResponse>, Status> {
    let Some(Caller(Principal::Node { id, role })) = req.extensions().get::<Caller>().cloned() else {
        return Err(Error::FailedPrecondition("renewal takes a node certificate over mutual TLS".into()).into());
    };
    let ca = node.ca_signer.clone().ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "node {} holds no CA key to sign with: ask a node started with --ca-key-file",
            node.id
        ))
    })?;
    let lifetime = node.cert_lifetime;
    let cert_pem = ca
        .sign_node_csr(&req.get_ref().csr_pem, id, role, lifetime)
        .map_err(|e| Error::InvalidArgument { field: "csr_pem", detail: e.to_string() })?;
    tracing::info!(node = id, role = role.as_str(), "renewed a node certificate");
    Ok(Response::new(JoinResponse { cert_pem, ca_pem: ca.cert_pem().to_owned(), role: role.as_str().to_owned() }))
}

/// The node id and token of a Join request, checked (the CSR is read when signing).
pub(crate) fn join_token(r: &JoinRequest) -> Result<TokenText, Error> {
    if r.node_id == 0 {
        return Err(Error::InvalidArgument { field: "node_id", detail: "0 is reserved".into() });
    }
    TokenText::parse(&r.token).map_err(|e| Error::Unauthenticated(e.to_string()))
}

pub async fn join(node: &Arc<Node>, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
    let token = join_token(req.get_ref())?;
    if token.ca_digest != ca_digest(node)? {
        return Err(Error::Unauthenticated("the join token names another cluster's CA".into()).into());
    }
    if let Route::Leader(ch) = node.route_write(forward::was_forwarded(&req))? {
        let fwd = forward::to_leader(node, "Join", req.into_inner());
        return forward::relayed(ClusterClient::new(ch).join(fwd).await);
    }
    let ca = node.ca_signer.clone().ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "the leader (node {}) holds no CA key to sign with: start control-plane nodes with --ca-key-file",
            node.id
        ))
    })?;
    let req = req.into_inner();
    // A token this leader's state refuses costs nothing more (the apply
    // decides for good): no CSR parsed, no trial signature for a guesser.
    let now = convert::now_ms();
    if !node.state.read(|s| s.trust.admits(&token.id, &token.secret_sha256(), now)) {
        return Err(Error::from(Refusal::JoinTokenRefused).into());
    }
    // A CSR that cannot be signed spends no use of the token.
    let lifetime = node.cert_lifetime;
    ca.sign_node_csr(&req.csr_pem, req.node_id, Role::DataPlane, lifetime)
        .map_err(|e| Error::InvalidArgument { field: "csr_pem", detail: e.to_string() })?;
    let redeem = TrustCommand::RedeemJoinToken {
        id: token.id.clone(),
        secret_sha256: token.secret_sha256(),
        node: req.node_id,
        at_ms: convert::now_ms(),
    };
    let role = match propose(node, redeem).await? {
        CommandResponse::JoinTokenRedeemed(JoinRole::Controlplane) => Role::ControlPlane,
        CommandResponse::JoinTokenRedeemed(JoinRole::Dataplane) => Role::DataPlane,
        other => return Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
    };
    let cert_pem =
        ca.sign_node_csr(&req.csr_pem, req.node_id, role, lifetime).map_err(|e| Error::Internal(e.to_string()))?;
    tracing::info!(node = req.node_id, role = role.as_str(), token = %token.id, "issued a node certificate for a join token");
    Ok(Response::new(JoinResponse { cert_pem, ca_pem: ca.cert_pem().to_owned(), role: role.as_str().to_owned() }))
}
