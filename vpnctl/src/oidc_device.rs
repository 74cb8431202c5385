//! `vpnctl login --oidc` without an ID token: the OAuth 2.0 device authorization grant
//! (RFC 8628) at the provider the cluster names (`LoginOptions`). The person approves a code in
//! a browser anywhere, so the host vpnctl runs on (often an ssh session) needs neither a browser
//! nor a port for a redirect; vpnctl polls until the provider hands out the ID token, which the
//! cluster then exchanges for a session.
//!
//! The discovery document (`ISSUER/.well-known/openid-configuration`) names the device and
//! token endpoints; a POST to the first gives the codes; the token endpoint is polled every
//! `interval` seconds (5 more after each `slow_down`) until it answers, refuses, or the code
//! expires. What the answers mean is decided by pure functions ([`endpoints`], [`grant`],
//! [`judge`]); [`id_token`] only moves the data.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::error::CliError;
use crate::fetch::{clean, Answer, Fetch};

/// RFC 8628's grant type for polling the token endpoint.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The scope asked for without --oidc-scope: what an ID token needs.
pub const DEFAULT_SCOPE: &str = "openid";
/// The wait between polls when the provider names none (RFC 8628, 3.2), and what each
/// `slow_down` adds (3.5).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Polls never come faster than this, whatever the provider says.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a code is waited for when the provider names no lifetime, and at most anyway.
const DEFAULT_EXPIRES: Duration = Duration::from_secs(600);
const MAX_WAIT: Duration = Duration::from_secs(30 * 60);

const EXPIRED: &str = "the code expired before the login was approved at the OIDC provider; run \
                       `vpnctl login --oidc` again";

/// Where the provider takes device logins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub device: String,
    pub token: String,
}

/// The provider's answer to a device authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
}

/// What one poll of the token endpoint means.
#[derive(Debug)]
pub enum Poll {
    /// The login was approved: the ID token.
    Done(String),
    /// Not approved yet: poll again after the interval.
    Pending,
    /// Poll again, 5 seconds slower from now on.
    SlowDown,
    /// The provider could not answer this time; the next poll may do better.
    Unavailable(CliError),
    /// The end of this login.
    Failed(CliError),
}

/// The ID token of a person who approves the login in a browser, for `client_id` (the
/// cluster's audience) at `issuer`. Tells the person what to do on `tell` (stderr).
pub async fn id_token(
    fetch: &Fetch,
    issuer: &str,
    client_id: &str,
    scope: &str,
    tell: &mut dyn Write,
) -> Result<String, CliError> {
    let discovery = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let answer = fetch.get(&discovery).await?;
    let endpoints = endpoints(&ok_json(&answer, &discovery)?, issuer, client_id)?;
    let form = [("client_id", client_id), ("scope", scope)];
    let answer = fetch.post_form(&endpoints.device, &form).await?;
    let grant = grant(&ok_json(&answer, &endpoints.device).map_err(|e| refused_client(e, client_id))?)?;
    let _ = writeln!(tell, "{}", instructions(&grant));
    poll(fetch, &endpoints.token, client_id, &grant).await
}

/// Polls until the token endpoint gives the ID token, refuses, or the code expires. A provider
/// that cannot answer one poll is asked again at the next: the person may be mid-login.
async fn poll(fetch: &Fetch, token_endpoint: &str, client_id: &str, grant: &Grant) -> Result<String, CliError> {
    let deadline = Instant::now() + grant.expires_in;
    let mut interval = grant.interval;
    let mut trouble = None;
    let form = [("grant_type", DEVICE_GRANT), ("device_code", grant.device_code.as_str()), ("client_id", client_id)];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(trouble.unwrap_or_else(|| CliError::LoginRefused(EXPIRED.into())));
        }
        tokio::time::sleep(interval.min(left)).await;
        let verdict = match fetch.post_form(token_endpoint, &form).await {
            Ok(answer) => judge(&answer),
            Err(err @ CliError::ProviderUnavailable(_)) => Poll::Unavailable(err),
            Err(err) => Poll::Failed(err),
        };
        match verdict {
            Poll::Done(id_token) => return Ok(id_token),
            Poll::Pending => {}
            Poll::SlowDown => interval += SLOW_DOWN_STEP,
            Poll::Unavailable(err) => trouble = Some(err),
            Poll::Failed(err) => return Err(err),
        }
    }
}

/// The device and token endpoints of a discovery document, which must name `issuer` itself
/// (OpenID Connect Discovery 1.0, 4.3: else the document is someone else's).
pub fn endpoints(doc: &Value, issuer: &str, client_id: &str) -> Result<Endpoints, CliError> {
    let named = doc["issuer"].as_str().unwrap_or_default();
    if named != issuer {
        return Err(CliError::Provider(format!(
            "the discovery document of {} names another issuer, {}",
            clean(issuer),
            clean(named)
        )));
    }
    let token = doc["token_endpoint"].as_str().filter(|t| !t.is_empty());
    let token = token.ok_or_else(|| CliError::Provider(format!("{} names no token_endpoint", clean(issuer))))?;
    let Some(device) = doc["device_authorization_endpoint"].as_str().filter(|d| !d.is_empty()) else {
        return Err(CliError::Provider(format!(
            "{} offers no device login (its discovery document has no device_authorization_endpoint); \
             get an ID token for client {} another way and give it with `vpnctl login --oidc --id-token FILE`",
            clean(issuer),
            clean(client_id)
        )));
    };
    Ok(Endpoints { device: device.to_owned(), token: token.to_owned() })
}

/// The device authorization answer (RFC 8628, 3.2); `verification_url` is an older name some
/// providers still send.
pub fn grant(json: &Value) -> Result<Grant, CliError> {
    let text = |name: &str| json[name].as_str().filter(|v| !v.is_empty()).map(str::to_owned);
    let missing = |name: &str| CliError::Provider(format!("the device authorization answer has no {name}"));
    let seconds = |name: &str| json[name].as_u64().map(Duration::from_secs);
    Ok(Grant {
        device_code: text("device_code").ok_or_else(|| missing("device_code"))?,
        user_code: text("user_code").ok_or_else(|| missing("user_code"))?,
        verification_uri: text("verification_uri")
            .or_else(|| text("verification_url"))
            .ok_or_else(|| missing("verification_uri"))?,
        verification_uri_complete: text("verification_uri_complete"),
        expires_in: seconds("expires_in").filter(|s| !s.is_zero()).unwrap_or(DEFAULT_EXPIRES).min(MAX_WAIT),
        interval: seconds("interval").unwrap_or(DEFAULT_INTERVAL).max(MIN_INTERVAL),
    })
}

/// What one answer of the token endpoint means (RFC 8628, 3.5).
pub fn judge(answer: &Answer) -> Poll {
    if (200..300).contains(&answer.status) {
        return match answer.json["id_token"].as_str().filter(|t| !t.is_empty()) {
            Some(id_token) => Poll::Done(id_token.to_owned()),
            None => Poll::Failed(CliError::Provider(
                "the login was approved but the answer has no id_token: ask for the openid scope \
                 (--oidc-scope)"
                    .into(),
            )),
        };
    }
    if answer.status >= 500 {
        return Poll::Unavailable(CliError::ProviderUnavailable(format!(
            "the token endpoint answered {}",
            described(answer)
        )));
    }
    match answer.json["error"].as_str().unwrap_or_default() {
        "authorization_pending" => Poll::Pending,
        "slow_down" => Poll::SlowDown,
        "access_denied" => Poll::Failed(CliError::LoginRefused("the login was denied at the OIDC provider".into())),
        "expired_token" => Poll::Failed(CliError::LoginRefused(EXPIRED.into())),
        _ => Poll::Failed(CliError::Provider(format!("the token endpoint refused: {}", described(answer)))),
    }
}

/// What the person is told to do; the provider's words cleaned for the terminal.
pub fn instructions(grant: &Grant) -> String {
    let code = clean(&grant.user_code);
    let uri = clean(&grant.verification_uri);
    let open = match &grant.verification_uri_complete {
        Some(complete) => format!(
            "To log in, open this link in a browser and approve the login:\n  {}\n\
             (or open {uri} and enter the code {code})",
            clean(complete)
        ),
        None => format!("To log in, open {uri} in a browser and enter the code {code}"),
    };
    let minutes = grant.expires_in.as_secs().div_ceil(60);
    format!("{open}\nWaiting for the approval (the code expires in {minutes} minutes)...")
}

/// A successful answer's JSON; a failure as an error naming `url`.
fn ok_json(answer: &Answer, url: &str) -> Result<Value, CliError> {
    match answer.status {
        200..=299 => Ok(answer.json.clone()),
        500.. => Err(CliError::ProviderUnavailable(format!("{} answered {}", clean(url), described(answer)))),
        _ => Err(CliError::Provider(format!("{} answered {}", clean(url), described(answer)))),
    }
}

/// A device authorization refused for the client: say which client, and the usual cause.
fn refused_client(err: CliError, client_id: &str) -> CliError {
    match err {
        CliError::Provider(why) => CliError::Provider(format!(
            "{why}; is the device grant enabled for client {} at the provider (a public client, \
             without a secret)?",
            clean(client_id)
        )),
        other => other,
    }
}

/// `HTTP 400: invalid_client: the description`, from an OAuth error answer.
fn described(answer: &Answer) -> String {
    let mut text = format!("HTTP {}", answer.status);
    for field in ["error", "error_description"] {
        if let Some(value) = answer.json[field].as_str().filter(|v| !v.is_empty()) {
            text.push_str(": ");
            text.push_str(&clean(value));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(status: u16, json: Value) -> Answer {
        Answer { status, json }
    }

    #[test]
    fn polls_wait_slow_down_and_end_as_rfc_8628_says() {
        let verdict = |status, json| match judge(&answer(status, json)) {
            Poll::Done(token) => format!("done {token}"),
            Poll::Pending => "pending".into(),
            Poll::SlowDown => "slow down".into(),
            Poll::Unavailable(err) => format!("unavailable {}: {err}", err.exit_code()),
            Poll::Failed(err) => format!("failed {}: {err}", err.exit_code()),
        };
        assert_eq!(verdict(200, json!({"id_token": "a.b.c", "access_token": "x"})), "done a.b.c");
        assert_eq!(verdict(400, json!({"error": "authorization_pending"})), "pending");
        assert_eq!(verdict(400, json!({"error": "slow_down"})), "slow down");
        assert_eq!(
            verdict(400, json!({"error": "access_denied"})),
            "failed 5: UNAUTHENTICATED: the login was denied at the OIDC provider"
        );
        assert!(
            verdict(400, json!({"error": "expired_token"})).starts_with("failed 5: UNAUTHENTICATED: the code expired")
        );
        assert_eq!(
            verdict(401, json!({"error": "invalid_client", "error_description": "no such\u{1b}[2J client"})),
            "failed 1: the OIDC provider: the token endpoint refused: HTTP 401: invalid_client: no such[2J client"
        );
        assert!(verdict(200, json!({"access_token": "x"})).contains("no id_token"));
        assert_eq!(
            verdict(503, Value::Null),
            "unavailable 4: the OIDC provider is unavailable: the token endpoint answered HTTP 503"
        );
    }

    #[test]
    fn the_grant_has_defaults_and_bounds() {
        let given = json!({
            "device_code": "dc", "user_code": "WDJB-MJHT", "verification_url": "https://idp/device",
            "expires_in": 86_400, "interval": 0,
        });
        let grant = grant(&given).expect("a grant");
        assert_eq!((grant.user_code.as_str(), grant.verification_uri.as_str()), ("WDJB-MJHT", "https://idp/device"));
        assert_eq!((grant.expires_in, grant.interval), (MAX_WAIT, MIN_INTERVAL));
        let minimal = json!({"device_code": "dc", "user_code": "c", "verification_uri": "https://idp/d"});
        let grant = super::grant(&minimal).expect("a grant");
        assert_eq!((grant.expires_in, grant.interval), (DEFAULT_EXPIRES, DEFAULT_INTERVAL));
        assert_eq!(
            instructions(&grant),
            "To log in, open https://idp/d in a browser and enter the code c\n\
             Waiting for the approval (the code expires in 10 minutes)..."
        );
        let err = super::grant(&json!({"user_code": "c"})).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("the OIDC provider: the device authorization answer has no device_code"));
    }

    #[test]
    fn discovery_must_name_the_issuer_and_a_device_endpoint() {
        let issuer = "https://idp.example";
        let doc = json!({"issuer": issuer, "token_endpoint": "https://idp.example/token",
                         "device_authorization_endpoint": "https://idp.example/device"});
        let found = endpoints(&doc, issuer, "vpn").map_err(|e| e.to_string());
        assert_eq!(found.map(|e| e.device), Ok("https://idp.example/device".to_owned()));
        let other =
            json!({"issuer": "https://evil.example", "token_endpoint": "t", "device_authorization_endpoint": "d"});
        let err = endpoints(&other, issuer, "vpn").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("names another issuer, https://evil.example"), "{err}");
        let no_device = json!({"issuer": issuer, "token_endpoint": "https://idp.example/token"});
        let err = endpoints(&no_device, issuer, "vpn").err();
        assert_eq!(err.as_ref().map(CliError::exit_code), Some(1));
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("offers no device login") && text.contains("--id-token FILE"), "{text}");
    }
}
