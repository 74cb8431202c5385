//! The one table: what each RPC requires of its caller. A test walks every
//! method the protos declare and fails on one that is missing here.

use vpn_storage::access::Permission;

/// What an RPC requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Health probes (load balancers carry no credential), and a node
    /// joining with a token (the handler checks the token).
    Anyone,
    /// The public API: an authenticated principal (a client certificate, an
    /// API token, or the principal a control-plane node relays with a write
    /// it forwarded) that holds this permission; `None`: any principal.
    Public(Option<Permission>),
    /// Raft traffic: control-plane members only, each as itself.
    ControlPlane,
    /// Leadership transfer: only the current leader may tell a node to run.
    Leader,
    /// Calls every node makes about itself (the agent protocol, certificate
    /// renewal); the handler checks that the request is about the caller.
    AnyNode,
    /// Adding a member: a principal with `members.write`, or a control-plane
    /// node adding itself (`vpnd --join`; the handler checks the id).
    Join,
}

impl Rule {
    /// The label of refusals under this rule in `vpn_auth_refusals_total`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Anyone => "anyone",
            Rule::Public(Some(p)) => p.as_str(),
            Rule::Public(None) => "authenticated",
            Rule::ControlPlane => "controlplane",
            Rule::Leader => "leader",
            Rule::AnyNode => "node",
            Rule::Join => "join",
        }
    }
}

/// The rule of the RPC at `path` (`/package.Service/Method`); `None` for a
/// path no service declares (tonic answers UNIMPLEMENTED to a principal).
pub fn rule(path: &str) -> Option<Rule> {
    use Permission::*;
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let public = |p: Permission| Some(Rule::Public(Some(p)));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Some(Rule::Anyone),

        ("vpn.v1.Users", "GetUser" | "ListUsers") => public(UsersRead),
        ("vpn.v1.Users", "CreateUser" | "UpdateUser" | "DeleteUser" | "ResetTraffic" | "RotateToken") => {
            public(UsersWrite)
        }
        // Links are credentials.
        ("vpn.v1.Users", "GetUserLinks") => public(UsersSecrets),

        ("vpn.v1.Cluster", "Status" | "ListJoinTokens") => public(NodesRead),
        ("vpn.v1.Cluster", "AddMember") => Some(Rule::Join),
        ("vpn.v1.Cluster", "RemoveMember" | "CreateJoinToken" | "RevokeJoinToken") => public(MembersWrite),
        // A node with no certificate yet: the join token in the request is its credential.
        ("vpn.v1.Cluster", "Join") => Some(Rule::Anyone),
        // A node about itself: the handler signs for the caller's own identity.
        ("vpn.v1.Cluster", "RenewCertificate") => Some(Rule::AnyNode),

        ("vpn.v1.Nodes", "ListNodes" | "GetNode") => public(NodesRead),
        ("vpn.v1.Nodes", "CordonNode" | "UncordonNode" | "DrainNode") => public(NodesWrite),

        ("vpn.v1.Access", "WhoAmI") => Some(Rule::Public(None)),
        // The password or ID token in the request is the credential.
        ("vpn.v1.Access", "Login" | "LoginOptions") => Some(Rule::Anyone),
        // Who holds what is for those who manage it.
        ("vpn.v1.Access", "ListRoles" | "GetRole" | "CreateRole" | "DeleteRole" | "BindRole" | "UnbindRole") => {
            public(RolesWrite)
        }
        ("vpn.v1.Access", "CreateApiToken" | "ListApiTokens" | "RevokeApiToken" | "RevokeSessions") => {
            public(TokensWrite)
        }
        ("vpn.v1.Access", "ListAudit") => public(AuditRead),

        // A data-plane node's agent, about itself: the handler checks the id.
        ("vpn.internal.v1.Agent", "Register" | "WatchAssignment" | "Heartbeat") => Some(Rule::AnyNode),
        ("vpn.internal.v1.Raft", "TimeoutNow") => Some(Rule::Leader),
        // Raft traffic, and what a member relays to the leader for an agent
        // it serves (registrations, heartbeats).
        (
            "vpn.internal.v1.Raft",
            "AppendEntries" | "Vote" | "InstallSnapshot" | "ReadIndex" | "Propose" | "Heartbeat",
        ) => Some(Rule::ControlPlane),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Every method of every service the protos declare, as `/pkg.Service/Method`.
    fn declared_rpcs() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(vpn_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut paths = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
        paths
    }

    #[test]
    fn every_declared_rpc_has_a_rule() {
        let paths = declared_rpcs();
        assert!(paths.len() > 40, "the descriptor set holds the services: {paths:?}");
        let missing: Vec<&String> = paths.iter().filter(|p| rule(p).is_none()).collect();
        assert!(missing.is_empty(), "RPCs without an entry in the table: {missing:?}");
        assert_eq!(rule("/grpc.health.v1.Health/Check"), Some(Rule::Anyone));
        assert_eq!(rule("/vpn.v1.Users/Nonexistent"), None);
        assert_eq!(rule("garbage"), None);
    }

    #[test]
    fn internal_rpcs_need_node_certificates_and_public_ones_permissions() {
        for raft in ["AppendEntries", "Vote", "InstallSnapshot", "ReadIndex", "Propose", "Heartbeat"] {
            assert_eq!(rule(&format!("/vpn.internal.v1.Raft/{raft}")), Some(Rule::ControlPlane), "{raft}");
        }
        assert_eq!(rule("/vpn.internal.v1.Raft/TimeoutNow"), Some(Rule::Leader));
        for agent in ["Register", "WatchAssignment", "Heartbeat"] {
            assert_eq!(rule(&format!("/vpn.internal.v1.Agent/{agent}")), Some(Rule::AnyNode), "{agent}");
        }
        let public: Vec<String> = declared_rpcs().into_iter().filter(|p| p.starts_with("/vpn.v1.")).collect();
        let unprotected: Vec<&String> = public
            .iter()
            .filter(|p| !matches!(rule(p), Some(Rule::Public(Some(_)))))
            .filter(|p| !p.ends_with("/Join") && !p.ends_with("/AddMember") && !p.ends_with("/RenewCertificate"))
            .filter(|p| !p.ends_with("/WhoAmI") && !p.ends_with("/Login") && !p.ends_with("/LoginOptions"))
            .collect();
        assert!(unprotected.is_empty(), "public RPCs that need no permission: {unprotected:?}");
        assert_eq!(rule("/vpn.v1.Users/GetUserLinks"), Some(Rule::Public(Some(Permission::UsersSecrets))));
        assert_eq!(rule("/vpn.v1.Users/CreateUser"), Some(Rule::Public(Some(Permission::UsersWrite))));
    }
}
