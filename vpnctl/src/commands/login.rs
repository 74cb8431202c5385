//! `vpnctl login --ldap USER | --oidc [--id-token FILE]` and `vpnctl logout`: a person's
//! credential exchanged for a session token (`vpnst1.`), a bearer credential every node takes
//! until it expires, kept in a context as an API token would be.
//!
//! The session goes to `--context NAME`, else the current context, else a new `default` made
//! from the flags; that context becomes the current one, so the next command uses it. A
//! context that exists keeps its endpoints: `--endpoints` naming others is refused rather than
//! repointing it. A login sends a password or an ID token and gets a bearer token back, so it
//! goes only over TLS, and it sends no other credential: it is how one gets a credential.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use vpn_pki::contexts::{default_path, ApiToken, Context, Contexts};
use vpn_proto::v1::{LdapLogin, LoginOptionsRequest, LoginRequest, LoginResponse};

use crate::cli::{LoginArgs, LogoutArgs};
use crate::client::Client;
use crate::commands::context::{load, no_home, save};
use crate::connect::{Given, Reach};
use crate::endpoint::parse_endpoints;
use crate::error::CliError;
use crate::fetch::Fetch;
use crate::human;
use crate::oidc_device;
use crate::output::Document;
use crate::prompt;

/// The context a login makes when there is none to receive it.
const NEW_CONTEXT: &str = "default";

/// Runs `login`.
pub async fn login(args: LoginArgs, given: Given<'_>, timeout: Duration) -> Result<Document, CliError> {
    let path = default_path();
    let contexts = match &path {
        Some(path) => load(path)?,
        None => Contexts::default(),
    };
    let name = receiver(args.context.as_deref(), &contexts)?;
    let existing = contexts.contexts.get(&name);
    if let (Some(context), Some(endpoints)) = (existing, given.endpoints) {
        same_cluster(&name, context, endpoints)?;
    }
    let reach = given.over(existing.unwrap_or(&Context::default()));
    let mut client = reach.client(timeout, true)?;
    if let Some(plain) = client.plaintext_endpoint() {
        return Err(CliError::InvalidInput(format!(
            "a login sends a password or an ID token and gets a session token back: only over TLS, and \
             endpoint http://{plain} is plaintext; use https:// or a bare host:port (with --ca-cert \
             unless the cluster's certificate is publicly trusted)"
        )));
    }
    let request = request(&args, &mut client, timeout).await?;
    let reply =
        client.access(request, |mut c, req| async move { c.login(req).await }).await.map_err(|err| match err {
            CliError::Unauthenticated(why) => CliError::LoginRefused(why),
            other => other,
        })?;
    if reply.token.is_empty() {
        return Err(CliError::Server {
            code: tonic::Code::Internal,
            message: "the cluster answered the login without a session token".into(),
        });
    }
    if args.print_token {
        return Ok(printed(&reply));
    }
    let path = path.ok_or_else(no_home)?;
    // Read again: a device login may have waited minutes, and the file may have changed since.
    let mut contexts = load(&path)?;
    keep(&mut contexts, &name, given, &reach, ApiToken::from(reply.token.clone()))?;
    save(&contexts, &path)?;
    Ok(logged_in(&reply, &name, OffsetDateTime::now_utc()))
}

/// Runs `logout`: the token leaves the context (the cluster cannot revoke a session, so a copy
/// stays valid until it expires).
pub fn logout(args: LogoutArgs) -> Result<Document, CliError> {
    let path = default_path().ok_or_else(no_home)?;
    let mut contexts = load(&path)?;
    let name = match args.context {
        Some(name) => name,
        None => contexts.current().map(|(name, _)| name.to_owned()).ok_or_else(|| {
            CliError::NotFound(format!(
                "no current context in {}: nothing to log out of (name one with --context)",
                path.display()
            ))
        })?,
    };
    let known: Vec<String> = contexts.contexts.keys().cloned().collect();
    let context = contexts.contexts.get_mut(&name).ok_or_else(|| {
        CliError::NotFound(format!(
            "no context {name:?} in {}: known are {known:?} (see `vpnctl context list`)",
            path.display()
        ))
    })?;
    let removed = context.token.take().is_some();
    if removed {
        save(&contexts, &path)?;
    }
    let table = if removed {
        format!(
            "logged out: context {name:?} holds no token any more (a copy of a session works until it \
             expires, of an API token until `vpnctl token revoke`)"
        )
    } else {
        format!("context {name:?} holds no token: nothing to log out of")
    };
    Ok(Document { json: json!({ "context": name, "removed": removed }), table })
}

/// The Login request: the password, the ID token file, or the ID token of a device login.
async fn request(args: &LoginArgs, client: &mut Client, timeout: Duration) -> Result<LoginRequest, CliError> {
    if let Some(user) = &args.ldap {
        if user.trim().is_empty() || user.chars().any(char::is_control) {
            return Err(CliError::InvalidInput("--ldap needs a user name".into()));
        }
        let password = prompt::password(user)?;
        return Ok(LoginRequest {
            ldap: Some(LdapLogin { user: user.clone(), password }),
            oidc_id_token: String::new(),
        });
    }
    let id_token = match &args.id_token {
        Some(file) => prompt::id_token(file)?,
        None => device_login(args, client, timeout).await?,
    };
    Ok(LoginRequest { ldap: None, oidc_id_token: id_token })
}

/// The ID token of a device login at the provider the cluster names.
async fn device_login(args: &LoginArgs, client: &mut Client, timeout: Duration) -> Result<String, CliError> {
    let options = client.access(LoginOptionsRequest {}, |mut c, req| async move { c.login_options(req).await }).await?;
    if options.oidc_issuer.is_empty() {
        let ldap = if options.ldap { "; it offers LDAP logins: `vpnctl login --ldap USER`" } else { "" };
        return Err(CliError::Server {
            code: tonic::Code::FailedPrecondition,
            message: format!("this cluster has no OIDC login (vpnd --oidc-issuer){ldap}"),
        });
    }
    let fetch = Fetch::new(timeout, args.oidc_insecure);
    let scope = args.oidc_scope.as_deref().unwrap_or(oidc_device::DEFAULT_SCOPE);
    oidc_device::id_token(&fetch, &options.oidc_issuer, &options.oidc_client_id, scope, &mut std::io::stderr()).await
}

/// The context that receives the session: the one named, else the current one, else a new one.
fn receiver(named: Option<&str>, contexts: &Contexts) -> Result<String, CliError> {
    match named {
        Some(name) if name.trim().is_empty() || name.chars().any(char::is_control) => {
            Err(CliError::InvalidInput("--context needs a name".into()))
        }
        Some(name) => Ok(name.to_owned()),
        None => Ok(contexts.current().map_or(NEW_CONTEXT, |(name, _)| name).to_owned()),
    }
}

/// Refuses `--endpoints` other than the context's: the session would be another cluster's.
fn same_cluster(name: &str, context: &Context, given: &[String]) -> Result<(), CliError> {
    if context.endpoints.is_empty() {
        return Ok(());
    }
    let (Ok(ours), Ok(theirs)) = (parse_endpoints(&context.endpoints, true), parse_endpoints(given, true)) else {
        return Ok(()); // Not comparable: connecting will say what is wrong with them.
    };
    if ours.iter().all(|e| theirs.contains(e)) && theirs.iter().all(|e| ours.contains(e)) {
        return Ok(());
    }
    Err(CliError::InvalidInput(format!(
        "context {name:?} is for endpoints {}, and --endpoints (or VPNCTL_ENDPOINTS) names {}: \
         give --context NAME to keep this login in a context of its own",
        context.endpoints.join(","),
        given.join(",")
    )))
}

/// Puts `token` into the context `name` (made from `reach` when missing), with the CA and
/// certificate files given as flags (made absolute, so the context works from any directory),
/// and makes it the current context.
fn keep(contexts: &mut Contexts, name: &str, given: Given<'_>, reach: &Reach, token: ApiToken) -> Result<(), CliError> {
    let absolute = |flag: &str, path: &Path| {
        std::path::absolute(path)
            .map_err(|e| CliError::InvalidInput(format!("cannot resolve {flag} {}: {e}", path.display())))
    };
    let context = contexts.contexts.entry(name.to_owned()).or_default();
    if context.endpoints.is_empty() {
        context.endpoints = reach.endpoints.clone();
    }
    if let Some(ca) = given.ca_cert {
        context.ca_cert = Some(absolute("--ca-cert", ca)?);
    }
    if let Some((cert, key)) = given.pair {
        context.cert = Some(absolute("--cert", cert)?);
        context.key = Some(absolute("--key", key)?);
    }
    context.token = Some(token);
    contexts.current_context = Some(name.to_owned());
    Ok(())
}

/// `--print-token`: the token alone, as `token create` prints an API token.
fn printed(reply: &LoginResponse) -> Document {
    let json = json!({
        "principal": reply.principal,
        "groups": reply.groups,
        "expires_at": reply.expires_at,
        "token": reply.token,
    });
    Document { json, table: reply.token.clone() }
}

/// Who the session is for and until when; never the token.
fn logged_in(reply: &LoginResponse, context: &str, now: OffsetDateTime) -> Document {
    let json = json!({ "principal": reply.principal, "groups": reply.groups, "expires_at": reply.expires_at });
    let groups =
        if reply.groups.is_empty() { "no groups".to_owned() } else { format!("groups {}", reply.groups.join(", ")) };
    let table = format!(
        "logged in as {} ({groups}) until {}\nthe session is kept in context {context:?}, now the current one",
        reply.principal,
        human::time_with_relative(&reply.expires_at, now)
    );
    Document { json, table }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn reply() -> LoginResponse {
        LoginResponse {
            token: "vpnst1.s3cr3t".into(),
            principal: "ldap:alice".into(),
            groups: vec!["ldap:ops".into(), "ldap:dev".into()],
            expires_at: "2026-03-11T00:00:00Z".into(),
        }
    }

    #[test]
    fn the_login_prints_who_and_until_when_and_the_token_only_when_asked() {
        let doc = logged_in(&reply(), "default", datetime!(2026-03-10 12:00 UTC));
        assert_eq!(
            doc.json,
            json!({"principal": "ldap:alice", "groups": ["ldap:ops", "ldap:dev"], "expires_at": "2026-03-11T00:00:00Z"})
        );
        assert_eq!(
            doc.table,
            "logged in as ldap:alice (groups ldap:ops, ldap:dev) until 2026-03-11T00:00:00Z (in 12 hours)\n\
             the session is kept in context \"default\", now the current one"
        );
        let doc = printed(&reply());
        assert_eq!(doc.table, "vpnst1.s3cr3t");
        assert_eq!(doc.json["token"], "vpnst1.s3cr3t");
    }

    #[test]
    fn the_session_goes_to_the_named_or_current_context_else_a_new_default() {
        let mut contexts = Contexts::default();
        assert_eq!(receiver(None, &contexts).ok().as_deref(), Some("default"));
        contexts.contexts.insert("prod".into(), Context { endpoints: vec!["a:1".into()], ..Context::default() });
        contexts.current_context = Some("prod".into());
        assert_eq!(receiver(None, &contexts).ok().as_deref(), Some("prod"));
        assert_eq!(receiver(Some("lab"), &contexts).ok().as_deref(), Some("lab"));
        assert!(receiver(Some(" "), &contexts).is_err_and(|e| e.exit_code() == 2));
    }

    #[test]
    fn a_context_keeps_its_cluster() {
        let prod = Context { endpoints: vec!["a:1".into(), "https://b:2".into()], ..Context::default() };
        let same = ["b:2".to_owned(), "a:1".to_owned()];
        assert!(same_cluster("prod", &prod, &same).is_ok(), "the same nodes, bare meaning TLS");
        let err = same_cluster("prod", &prod, &["c:3".to_owned()]).err();
        assert_eq!(err.as_ref().map(CliError::exit_code), Some(2));
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("context \"prod\" is for endpoints a:1,https://b:2") && text.contains("--context NAME"));
        assert!(same_cluster("new", &Context::default(), &["c:3".to_owned()]).is_ok());
    }

    #[test]
    fn keeping_a_session_makes_or_updates_the_context_and_makes_it_current() {
        let mut contexts = Contexts::default();
        let old = Context {
            endpoints: vec!["a:1".into()],
            ca_cert: Some("/old/ca.crt".into()),
            token: Some(ApiToken::from("vpnst1.old".to_owned())),
            ..Context::default()
        };
        contexts.contexts.insert("prod".into(), old);
        let reach = Reach { endpoints: vec!["c:3".into()], ca_cert: Some("ca.crt".into()), pair: None };
        let given = Given { ca_cert: Some(Path::new("ca.crt")), ..Given::default() };
        keep(&mut contexts, "default", given, &reach, ApiToken::from("vpnst1.new".to_owned())).expect("kept");
        let made = &contexts.contexts["default"];
        assert_eq!(made.endpoints, ["c:3"]);
        let ca = made.ca_cert.clone().unwrap_or_default();
        assert!(ca.is_absolute() && ca.ends_with("ca.crt"), "{ca:?}");
        assert_eq!(made.token.as_ref().map(ApiToken::expose), Some("vpnst1.new"));
        assert_eq!(contexts.current_context.as_deref(), Some("default"));

        let reach = Reach { endpoints: vec!["a:1".into()], ca_cert: Some("/old/ca.crt".into()), pair: None };
        keep(&mut contexts, "prod", Given::default(), &reach, ApiToken::from("vpnst1.newer".to_owned())).expect("kept");
        let prod = &contexts.contexts["prod"];
        assert_eq!(
            (prod.endpoints.as_slice(), prod.ca_cert.as_deref()),
            (["a:1".to_owned()].as_slice(), Some(Path::new("/old/ca.crt")))
        );
        assert_eq!(prod.token.as_ref().map(ApiToken::expose), Some("vpnst1.newer"));
        assert_eq!(contexts.current_context.as_deref(), Some("prod"));
    }
}
