//! `vpnctl role list | show | create | delete | bind | unbind`: roles (sets of permissions) and
//! the principals and groups bound to them. Permissions were checked against the fixed list
//! by clap (`PERMISSIONS` in `cli/access.rs`) before anything here runs.

use serde_json::{json, Value};
use vpn_proto::v1::{BindRoleRequest, CreateRoleRequest, DeleteRoleRequest, GetRoleRequest, ListRolesRequest, Role};

use crate::cli::{BindArgs, RoleCommand};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{fields, table, Document};

/// Runs one `role` subcommand; the changes print the role as it is afterwards.
pub async fn run(command: RoleCommand, client: &mut Client) -> Result<Document, CliError> {
    match command {
        RoleCommand::List => {
            let reply = client.access(ListRolesRequest {}, |mut c, req| async move { c.list_roles(req).await }).await?;
            let listed: Vec<Value> = reply.roles.iter().map(role_json).collect();
            Ok(Document { json: json!({ "roles": listed }), table: roles_table(&reply.roles) })
        }
        RoleCommand::Show { name } => {
            let req = GetRoleRequest { name: name.clone() };
            let role = client.access(req, |mut c, req| async move { c.get_role(req).await }).await;
            let role = role.map_err(|err| no_such_role(err, &name))?;
            Ok(Document { json: role_json(&role), table: role_table(&role) })
        }
        RoleCommand::Create { name, permissions } => {
            let req = CreateRoleRequest { name: name.clone(), permissions: deduplicated(permissions) };
            let role = client.access(req, |mut c, req| async move { c.create_role(req).await }).await.map_err(
                |err| match err {
                    CliError::AlreadyExists(_) => CliError::AlreadyExists(format!(
                        "role '{name}' exists already; `vpnctl role show {name}` shows it"
                    )),
                    other => other,
                },
            )?;
            Ok(changed(format!("created role '{name}'"), &role))
        }
        RoleCommand::Delete { name } => {
            let req = DeleteRoleRequest { name: name.clone() };
            let role = client.access(req, |mut c, req| async move { c.delete_role(req).await }).await;
            let role = role.map_err(|err| no_such_role(err, &name))?;
            Ok(changed(format!("deleted role '{name}' and its bindings"), &role))
        }
        RoleCommand::Bind(args) => {
            let (req, who) = bind_request(&args);
            let role = client.access(req, |mut c, req| async move { c.bind_role(req).await }).await?;
            Ok(changed(format!("bound {who} to role '{}'", args.role), &role))
        }
        RoleCommand::Unbind(args) => {
            let (req, who) = bind_request(&args);
            let role = client.access(req, |mut c, req| async move { c.unbind_role(req).await }).await?;
            Ok(changed(format!("unbound {who} from role '{}'", args.role), &role))
        }
    }
}

/// The request, and who it is for in words ("user 'alice'", "group 'ldap:ops'"). Clap has
/// made sure exactly one of --user and --group is set.
fn bind_request(args: &BindArgs) -> (BindRoleRequest, String) {
    let user = args.subject.user.clone().unwrap_or_default();
    let group = args.subject.group.clone().unwrap_or_default();
    let who = if user.is_empty() { format!("group '{group}'") } else { format!("user '{user}'") };
    (BindRoleRequest { role: args.role.clone(), user, group }, who)
}

/// `users.read,users.read` is one permission; the order given is kept.
fn deduplicated(permissions: Vec<String>) -> Vec<String> {
    let mut unique: Vec<String> = Vec::with_capacity(permissions.len());
    for permission in permissions {
        if !unique.contains(&permission) {
            unique.push(permission);
        }
    }
    unique
}

/// Replaces the server's NOT_FOUND text with one that says what to do.
fn no_such_role(err: CliError, name: &str) -> CliError {
    match err {
        CliError::NotFound(_) => {
            CliError::NotFound(format!("role '{name}' does not exist; `vpnctl role list` lists them"))
        }
        other => other,
    }
}

/// What a change prints: one line saying what happened, then the role afterwards.
fn changed(headline: String, role: &Role) -> Document {
    Document { json: role_json(role), table: format!("{headline}\n\n{}", role_table(role)) }
}

/// A role as scripts see it: every command that prints a role prints this.
fn role_json(role: &Role) -> Value {
    json!({
        "name": role.name,
        "builtin": role.builtin,
        "permissions": role.permissions,
        "users": role.users,
        "groups": role.groups,
    })
}

/// `a,b,c`, or `-` for none, for list columns.
fn cell(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// `role list` for people, one row per role.
fn roles_table(roles: &[Role]) -> String {
    let header = ["NAME", "BUILTIN", "PERMISSIONS", "USERS", "GROUPS"].map(String::from).to_vec();
    let rows = roles.iter().map(|r| {
        let builtin = if r.builtin { "yes" } else { "no" };
        vec![r.name.clone(), builtin.into(), cell(&r.permissions), cell(&r.users), cell(&r.groups)]
    });
    table(&std::iter::once(header).chain(rows).collect::<Vec<_>>())
}

/// One role for people (`role show`, and after each change).
fn role_table(role: &Role) -> String {
    let list = |items: &[String]| if items.is_empty() { "none".to_owned() } else { items.join(", ") };
    let builtin = if role.builtin { "yes (cannot be changed or deleted)" } else { "no" };
    fields(&[
        ("Name", role.name.clone()),
        ("Built-in", builtin.into()),
        ("Permissions", list(&role.permissions)),
        ("Users", list(&role.users)),
        ("Groups", list(&role.groups)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Subject;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn operator() -> Role {
        Role {
            name: "operator".into(),
            builtin: true,
            permissions: strings(&["users.read", "users.write", "nodes.read"]),
            users: strings(&["alice", "token:ci"]),
            groups: strings(&["ldap:ops"]),
        }
    }

    fn support() -> Role {
        Role { name: "support".into(), permissions: strings(&["users.read"]), ..Default::default() }
    }

    #[test]
    fn role_json_has_the_contract_shape() {
        let expected = json!({
            "name": "operator",
            "builtin": true,
            "permissions": ["users.read", "users.write", "nodes.read"],
            "users": ["alice", "token:ci"],
            "groups": ["ldap:ops"],
        });
        assert_eq!(role_json(&operator()), expected);
        let empty = role_json(&support());
        assert_eq!(
            (empty["builtin"].clone(), empty["users"].clone(), empty["groups"].clone()),
            (json!(false), json!([]), json!([]))
        );
    }

    #[test]
    fn tables_list_roles_and_show_one() {
        assert_eq!(
            roles_table(&[operator(), support()]),
            "NAME      BUILTIN  PERMISSIONS                        USERS           GROUPS\n\
             operator  yes      users.read,users.write,nodes.read  alice,token:ci  ldap:ops\n\
             support   no       users.read                         -               -"
        );
        assert_eq!(
            role_table(&support()),
            "Name:         support\n\
             Built-in:     no\n\
             Permissions:  users.read\n\
             Users:        none\n\
             Groups:       none"
        );
        let doc = changed("bound user 'alice' to role 'operator'".into(), &operator());
        assert!(
            doc.table.starts_with("bound user 'alice' to role 'operator'\n\nName:         operator\n"),
            "{}",
            doc.table
        );
    }

    #[test]
    fn bind_sends_exactly_the_subject_given() {
        let args = |user: Option<&str>, group: Option<&str>| BindArgs {
            role: "viewer".into(),
            subject: Subject { user: user.map(String::from), group: group.map(String::from) },
        };
        let (req, who) = bind_request(&args(Some("token:ci"), None));
        assert_eq!(req, BindRoleRequest { role: "viewer".into(), user: "token:ci".into(), group: String::new() });
        assert_eq!(who, "user 'token:ci'");
        let (req, who) = bind_request(&args(None, Some("ldap:ops")));
        assert_eq!(req, BindRoleRequest { role: "viewer".into(), user: String::new(), group: "ldap:ops".into() });
        assert_eq!(who, "group 'ldap:ops'");
    }

    #[test]
    fn permissions_are_sent_once_each_in_the_order_given() {
        let given = strings(&["nodes.read", "users.read", "nodes.read"]);
        assert_eq!(deduplicated(given), strings(&["nodes.read", "users.read"]));
    }
}
