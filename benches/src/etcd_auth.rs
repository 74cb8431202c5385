//! etcd's users and roles for `loadgen throughput --auth` (etcd 3.4): the
//! writer is a user whose one role may read and write the run's keys, and
//! it sends the token `Auth/Authenticate` gave it with every request, as
//! etcd's own clients do. The calls go over the gRPC API the load uses, so
//! no etcdctl is needed.
//!
//! etcd refuses `AuthEnable` until a `root` user holds the `root` role.
//! Tokens are etcd's default kind, `simple`: an opaque string every member
//! looks up in memory (Authenticate goes through Raft, so any member takes
//! it). One expires after `--auth-token-ttl` seconds without use, 300 by
//! default, and a long level of another system could leave the writer idle
//! that long: [`server_flags`] raises the TTL to a day. That changes nothing
//! per request (each use resets the timer either way). `jwt` tokens would
//! need a key pair and a signature check on every request.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tonic::transport::ClientTlsConfig;
use tonic::Request;

use crate::etcdserverpb::auth_client::AuthClient;
use crate::etcdserverpb::permission::Type as PermType;
use crate::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, Permission,
};
use crate::vpnd::channel_with;
use crate::writers::Credential;

/// The writer's user and its role.
pub const USER: &str = "loader";
pub const ROLE: &str = "loader";

/// etcd's own name for the administrator, user and role alike.
const ROOT: &str = "root";

/// Deadline of each setup call (Authenticate runs bcrypt once).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags for every member of an etcd that [`enable`] will run on.
pub fn server_flags() -> Vec<String> {
    vec!["--auth-token-ttl=86400".to_owned()]
}

/// Creates `root` and the writer's user and role (read and write on the
/// keys that start with `prefix`), enables authentication, and logs the
/// writer in: the credential its requests carry.
pub async fn enable(endpoint: &str, tls: Option<&ClientTlsConfig>, prefix: &str) -> Result<Credential> {
    let mut auth = AuthClient::new(channel_with(endpoint, tls).await?);
    // Throwaway passwords: 122 random bits each, never printed.
    let (root_password, password) =
        (uuid::Uuid::new_v4().simple().to_string(), uuid::Uuid::new_v4().simple().to_string());
    call("RoleAdd root", auth.role_add(req(AuthRoleAddRequest { name: ROOT.into() }))).await?;
    call("UserAdd root", auth.user_add(req(AuthUserAddRequest { name: ROOT.into(), password: root_password }))).await?;
    let grant_root = AuthUserGrantRoleRequest { user: ROOT.into(), role: ROOT.into() };
    call("UserGrantRole root", auth.user_grant_role(req(grant_root))).await?;
    call("RoleAdd", auth.role_add(req(AuthRoleAddRequest { name: ROLE.into() }))).await?;
    let perm = Permission {
        perm_type: PermType::Readwrite.into(),
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
    };
    let grant = AuthRoleGrantPermissionRequest { name: ROLE.into(), perm: Some(perm) };
    call("RoleGrantPermission", auth.role_grant_permission(req(grant))).await?;
    let user = AuthUserAddRequest { name: USER.into(), password: password.clone() };
    call("UserAdd", auth.user_add(req(user))).await?;
    let grant_user = AuthUserGrantRoleRequest { user: USER.into(), role: ROLE.into() };
    call("UserGrantRole", auth.user_grant_role(req(grant_user))).await?;
    call("AuthEnable", auth.auth_enable(req(AuthEnableRequest {}))).await?;
    let login =
        call("Authenticate", auth.authenticate(req(AuthenticateRequest { name: USER.into(), password }))).await?;
    Credential::etcd_token(&login.token).context("etcd's auth token")
}

fn req<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

async fn call<T>(
    what: &str,
    reply: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    reply
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| anyhow!("etcd Auth/{what}: {:?}: {}", s.code(), s.message()))
}

/// The end of the range of keys that start with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff raised by one.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key from the prefix on.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_prefix_range_ends_past_every_key_that_starts_with_it() {
        assert_eq!(prefix_end(b"lg1f-ea"), b"lg1f-eb");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
