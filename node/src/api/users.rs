//! The `Users` service, and a user's client links.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::users_server::Users;
use vpn_proto::v1::{
    CreateUserRequest, DeleteUserRequest, DeleteUserResponse, GetUserLinksRequest, GetUserLinksResponse,
    GetUserRequest, ListUsersRequest, ListUsersResponse, ResetTrafficRequest, RotateTokenRequest, UpdateUserRequest,
    User, UserLink,
};
use vpn_storage::access::Permission;
use vpn_storage::command::{Command, CommandResponse, LimitsChange};
use vpn_storage::model::{self, validate_user_name, Limits, UserStatus};
use vpn_storage::state::State;

use super::{convert, forward, user_fields};
use crate::auth::Granted;
use crate::error::Error;
use crate::node::{Node, Route};

pub struct UsersApi {
    pub node: Arc<Node>,
}

/// Whether the caller may see users' credentials and subscription tokens
/// (`users.secrets`); a call the auth layer granted nothing shows none.
fn sees_secrets<T>(req: &Request<T>) -> bool {
    req.extensions().get::<Granted>().is_some_and(|g| g.may(Permission::UsersSecrets))
}

pub(crate) fn check_name(field: &'static str, name: &str) -> Result<(), Error> {
    validate_user_name(name).map_err(|e| Error::InvalidArgument { field, detail: e.to_string() })
}

/// What a CreateUser request sets besides the name (checked apart, before
/// forwarding): the limits and the placement constraint.
pub(crate) fn new_user_fields(
    req: &CreateUserRequest,
    now_ms: i64,
) -> Result<(Limits, BTreeMap<String, String>), Error> {
    let limits = Limits {
        expires_at_ms: user_fields::expires_at(&req.expires_at, now_ms, false)?,
        data_limit_bytes: req.data_limit_bytes,
        reset: user_fields::reset(&req.reset)?,
    };
    Ok((limits, user_fields::constraint(&req.placement_constraint)?))
}

/// The page a ListUsers request asks for: the names after this one, this many.
pub(crate) fn page(req: &ListUsersRequest) -> Result<(Option<&str>, usize), Error> {
    let after = match req.page_token.as_str() {
        "" => None,
        token => {
            check_name("page_token", token)?;
            Some(token)
        }
    };
    let page_size = crate::limits::page_size(req.page_size);
    Ok((after, page_size))
}

/// The changes an UpdateUser request asks for (at least one), besides its name.
pub(crate) fn changes(r: &UpdateUserRequest, now_ms: i64) -> Result<(Option<UserStatus>, LimitsChange), Error> {
    let status = r
        .status
        .map(|raw| {
            convert::status_from_wire(raw).ok_or(Error::InvalidArgument {
                field: "status",
                detail: format!("{raw} is not a status an operator sets: use ACTIVE or DISABLED"),
            })
        })
        .transpose()?;
    let limits = LimitsChange {
        expires_at_ms: r.expires_at.as_deref().map(|e| user_fields::expires_at(e, now_ms, true)).transpose()?,
        data_limit_bytes: r.data_limit_bytes,
        reset: r.reset.as_deref().map(user_fields::reset).transpose()?,
    };
    if status.is_none() && limits.is_empty() {
        let detail = "nothing to update: set status, expires_at, data_limit_bytes or reset".into();
        return Err(Error::InvalidArgument { field: "status", detail });
    }
    Ok((status, limits))
}

impl UsersApi {
    async fn read_barrier(&self, consistency: i32) -> Result<(), Error> {
        super::read_barrier(&self.node, consistency).await
    }

    /// The user as the API shows it; without `secrets`, its credentials
    /// and subscription token are left out.
    fn user(&self, u: &model::User, secrets: bool) -> User {
        let mut user = convert::user(u, &self.node.scheduling.subscription_base_url);
        if !secrets {
            user.credentials = None;
            user.subscription_token.clear();
            user.subscription_url.clear();
        }
        user
    }

    /// Proposes `cmd` here and expects a user back.
    async fn write_user(&self, cmd: Command, secrets: bool) -> Result<Response<User>, Status> {
        match self.node.propose(cmd).await? {
            CommandResponse::User(u) => Ok(Response::new(self.user(&u, secrets))),
            CommandResponse::Refused(r) => Err(Error::from(r).into()),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }
}

#[tonic::async_trait]
impl Users for UsersApi {
    async fn create_user(&self, req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        check_name("name", &req.get_ref().name)?;
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "CreateUser", req.into_inner());
            return forward::relayed(UsersClient::new(ch).create_user(fwd).await);
        }
        let secrets = sees_secrets(&req);
        let req = req.into_inner();
        let now = convert::now_ms();
        let (limits, constraint) = new_user_fields(&req, now)?;
        // A taken name is refused only from state as of now: this node's copy
        // may be stale (a leader cut off from its majority still holds a user
        // the majority deleted), so a refusal waits for a linearizable barrier
        // first (a read-index round, cheaper than the Raft write the apply's
        // own refusal would cost, and nothing logged). A name this node does
        // not know goes to the apply, which refuses it in log order if taken.
        let taken = |node: &Node| node.state.read(|s| s.users.contains_key(&req.name));
        if taken(&self.node) {
            self.node.linearizable_barrier().await?;
            if taken(&self.node) {
                return Err(Error::AlreadyExists(format!("user {:?} already exists", req.name)).into());
            }
        }
        // Ids, keys and the token are made here, before the log: every
        // replica applies the same bytes.
        let mut user = model::User::new(req.name, now);
        user.limits = limits;
        user.constraint = constraint;
        self.write_user(Command::CreateUser(user), secrets).await
    }

    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let secrets = sees_secrets(&req);
        let req = req.into_inner();
        check_name("name", &req.name)?;
        self.read_barrier(req.consistency).await?;
        self.node
            .state
            .read(|s| s.users.get(&req.name).map(|u| self.user(u, secrets)))
            .map(Response::new)
            .ok_or_else(|| Error::NotFound(format!("user {:?} not found", req.name)).into())
    }

    async fn list_users(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        let secrets = sees_secrets(&req);
        let req = req.into_inner();
        let (after, page_size) = page(&req)?;
        self.read_barrier(req.consistency).await?;
        // One more than asked tells whether another page follows.
        let mut users = self.node.state.read(|s| s.users_after(after, page_size + 1));
        let next_page_token = if users.len() > page_size {
            users.truncate(page_size);
            users.last().map(|u| u.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListUsersResponse {
            users: users.iter().map(|u| self.user(u, secrets)).collect(),
            next_page_token,
        }))
    }

    async fn update_user(&self, req: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        check_name("name", &req.get_ref().name)?;
        let now = convert::now_ms();
        let (status, limits) = changes(req.get_ref(), now)?;
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "UpdateUser", req.into_inner());
            return forward::relayed(UsersClient::new(ch).update_user(fwd).await);
        }
        let secrets = sees_secrets(&req);
        self.write_user(Command::UpdateUser { name: req.into_inner().name, status, limits, at_ms: now }, secrets).await
    }

    async fn reset_traffic(&self, req: Request<ResetTrafficRequest>) -> Result<Response<User>, Status> {
        check_name("name", &req.get_ref().name)?;
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "ResetTraffic", req.into_inner());
            return forward::relayed(UsersClient::new(ch).reset_traffic(fwd).await);
        }
        let secrets = sees_secrets(&req);
        self.write_user(Command::ResetTraffic { name: req.into_inner().name, at_ms: convert::now_ms() }, secrets).await
    }

    async fn rotate_token(&self, req: Request<RotateTokenRequest>) -> Result<Response<User>, Status> {
        check_name("name", &req.get_ref().name)?;
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "RotateToken", req.into_inner());
            return forward::relayed(UsersClient::new(ch).rotate_token(fwd).await);
        }
        let secrets = sees_secrets(&req);
        let rotate = Command::RotateToken { name: req.into_inner().name, token: model::new_sub_token() };
        self.write_user(rotate, secrets).await
    }

    async fn get_user_links(
        &self,
        req: Request<GetUserLinksRequest>,
    ) -> Result<Response<GetUserLinksResponse>, Status> {
        let req = req.into_inner();
        check_name("name", &req.name)?;
        self.read_barrier(req.consistency).await?;
        let links = self.node.state.read(|s| user_links(s, &req.name))?;
        Ok(Response::new(GetUserLinksResponse { links }))
    }

    async fn delete_user(&self, req: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        check_name("name", &req.get_ref().name)?;
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "DeleteUser", req.into_inner());
            return forward::relayed(UsersClient::new(ch).delete_user(fwd).await);
        }
        match self.node.propose(Command::DeleteUser { name: req.into_inner().name }).await? {
            CommandResponse::Deleted => Ok(Response::new(DeleteUserResponse {})),
            CommandResponse::Refused(r) => Err(Error::from(r).into()),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }
}

/// Every link of `name`: each healthy node holding the user x each inbound,
/// in node then inbound order. A user that is not active has none, which is
/// an error rather than an empty list so an operator learns why.
fn user_links(state: &State, name: &str) -> Result<Vec<UserLink>, Error> {
    let user = state.users.get(name).ok_or_else(|| Error::NotFound(format!("user {name:?} not found")))?;
    if user.status != UserStatus::Active {
        let why = match user.status {
            UserStatus::Limited => format!("has used its data limit: vpnctl user reset-traffic {name}"),
            UserStatus::Expired => format!("has expired: vpnctl user enable {name} --expires 30d"),
            _ => format!("is disabled: enable it first (vpnctl user enable {name})"),
        };
        return Err(Error::FailedPrecondition(format!("user {name:?} has no links: it {why}")));
    }
    let mut out = Vec::new();
    for node in state.nodes_serving(user).filter(|n| n.is_ready()) {
        for inbound in &node.inbounds {
            match vpn_client_config::link(user, node, inbound) {
                Some(url) => out.push(UserLink { node_id: node.id, protocol: inbound.protocol.to_string(), url }),
                None => {
                    tracing::warn!(node = node.id, protocol = %inbound.protocol, "inbound record lacks its public parameters; no link")
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use vpn_storage::command::{apply, Move};
    use vpn_storage::model::{DataplaneNode, InboundRecord, NodeHealth, Protocol};

    use super::*;

    fn node(id: u64) -> DataplaneNode {
        let mut ss = InboundRecord::new(Protocol::Shadowsocks2022, 8388);
        ss.ss2022_server_key = Some("c2VydmVyLWtleS0xNmJ5dA==".into());
        let mut tls = InboundRecord::new(Protocol::VlessTls, 443);
        tls.tls_server_name = Some("vpn.example.com".into());
        DataplaneNode::new(id, format!("n{id}.example.com"), vec![ss, tls])
    }

    fn place(state: &mut State, user: &str, nodes: &[u64]) {
        apply(state, &Command::Place(vec![Move { user: user.into(), add: nodes.to_vec(), remove: vec![] }]));
    }

    #[test]
    fn links_cover_every_healthy_node_holding_the_user_and_each_inbound() {
        let mut state = State::default();
        apply(&mut state, &Command::CreateUser(model::User::new("alice".into(), 0)));
        assert!(user_links(&state, "alice").is_ok_and(|l| l.is_empty()), "no data-plane node yet");
        for id in [3, 2, 1] {
            apply(&mut state, &Command::RegisterDataplaneNode(node(id)));
        }
        place(&mut state, "alice", &[2, 1, 3]);
        apply(&mut state, &Command::SetNodeHealth { node: 3, health: NodeHealth::Down, engine_error: None });
        let links = user_links(&state, "alice").expect("links");
        let shown: Vec<(u64, &str)> = links.iter().map(|l| (l.node_id, l.protocol.as_str())).collect();
        assert_eq!(shown, [(1, "shadowsocks-2022"), (1, "vless-tls"), (2, "shadowsocks-2022"), (2, "vless-tls")]);
        assert!(links[0].url.starts_with("ss://") && links[1].url.starts_with("vless://"));
    }

    #[test]
    fn a_disabled_or_missing_user_has_no_links() {
        let mut state = State::default();
        apply(&mut state, &Command::RegisterDataplaneNode(node(1)));
        apply(&mut state, &Command::CreateUser(model::User::new("bob".into(), 0)));
        place(&mut state, "bob", &[1]);
        let disable = Command::UpdateUser {
            name: "bob".into(),
            status: Some(UserStatus::Disabled),
            limits: LimitsChange::default(),
            at_ms: 0,
        };
        apply(&mut state, &disable);
        assert!(matches!(user_links(&state, "bob"), Err(Error::FailedPrecondition(m)) if m.contains("enable")));
        assert!(matches!(user_links(&state, "nobody"), Err(Error::NotFound(_))));
    }
}
