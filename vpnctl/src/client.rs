//! Calls a gRPC method on whichever endpoint answers, retrying until a deadline.
//!
//! Every node serves the whole API and forwards writes to the leader itself, so the client
//! needs no leader logic: it tries the endpoints in order, moves on after a connect failure or
//! UNAVAILABLE, and sweeps them again with exponential backoff until `--timeout`. A node that
//! names the leader in its UNAVAILABLE reply gets that address tried next.
//!
//! Every attempt's request is built in one place, [`Client::request`], which adds the API
//! token (`authorization: Bearer`) when there is one.

use std::collections::VecDeque;
use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Response, Status};
use vpn_pki::contexts::ApiToken;
use vpn_proto::v1::access_client::AccessClient;
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::users_client::UsersClient;

use crate::endpoint::Endpoint;
use crate::error::CliError;

/// Metadata key in which a node names the leader's gRPC address (`host:port`).
pub const LEADER_ADDR_KEY: &str = "x-vpn-leader-addr";
/// Metadata key of the API token, `Bearer <token>` (HTTP's header, as gRPC gateways expect).
pub const AUTHORIZATION_KEY: &str = "authorization";

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Caps one connect attempt so a black-holed node cannot eat the whole deadline.
const MAX_CONNECT: Duration = Duration::from_secs(2);
/// A node whose process hangs (stopped, or its host frozen) still accepts
/// TCP in the kernel and never answers: HTTP/2 pings tell it from a node
/// that is only slow, and a call on a connection whose pings go unanswered
/// fails as a transport error, so the next endpoint is tried.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What a TLS connection trusts and presents, as PEM.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The cluster's CA, trusted besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// This client's certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A failover client over a fixed list of endpoints.
pub struct Client {
    endpoints: Vec<Endpoint>,
    timeout: Duration,
    tls: TlsFiles,
    /// The endpoint that last answered, reused so paging stays on one connection.
    active: Option<(Endpoint, Channel)>,
    /// The leader address a node last told us about.
    leader_hint: Option<Endpoint>,
    /// `Bearer <token>`, marked sensitive so it is neither debug-printed nor HPACK-indexed.
    bearer: Option<MetadataValue<Ascii>>,
}

impl Client {
    /// `timeout` bounds each call including its retries; `tls` is used for TLS endpoints.
    pub fn new(endpoints: Vec<Endpoint>, timeout: Duration, tls: TlsFiles) -> Self {
        Self { endpoints, timeout, tls, active: None, leader_hint: None, bearer: None }
    }

    /// Sends `token` with every request. Refused (before any call) when an endpoint is
    /// plaintext: the token is a password, and a node under `--insecure` needs none.
    /// No message here repeats the token.
    pub fn with_token(mut self, token: &ApiToken) -> Result<Self, CliError> {
        let token = token.expose().trim();
        if token.is_empty() {
            return Err(CliError::InvalidInput(
                "the API token (--token, VPNCTL_TOKEN or the context's) is empty; give the one \
                 `vpnctl token create` printed"
                    .into(),
            ));
        }
        if let Some(plain) = self.plaintext_endpoint() {
            return Err(CliError::InvalidInput(format!(
                "an API token is sent only over TLS, and endpoint http://{plain} is plaintext; \
                 use https:// or a bare host:port (with --ca-cert unless the cluster's \
                 certificate is publicly trusted)"
            )));
        }
        // gRPC's ASCII values are visible ASCII; the metadata type alone also lets bytes above 0x7f through.
        let bad = || {
            CliError::InvalidInput(
                "the API token holds characters no token has (it is visible ASCII, no spaces); \
                 check that it was copied whole"
                    .into(),
            )
        };
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad());
        }
        let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| bad())?;
        value.set_sensitive(true);
        self.bearer = Some(value);
        Ok(self)
    }

    /// An endpoint that speaks plaintext, if any: nothing secret may go to it.
    pub fn plaintext_endpoint(&self) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| !e.is_tls())
    }

    /// Calls a `vpn.v1.Access` method (roles, API tokens, audit, whoami, login) with failover.
    pub async fn access<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(AccessClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(req, |channel, req| rpc(AccessClient::new(channel), req)).await
    }

    /// Calls a `vpn.v1.Users` method with failover.
    pub async fn users<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(UsersClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(req, |channel, req| rpc(UsersClient::new(channel), req)).await
    }

    /// Calls a `vpn.v1.Cluster` method with failover.
    pub async fn cluster<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(ClusterClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(req, |channel, req| rpc(ClusterClient::new(channel), req)).await
    }

    /// Calls a `vpn.v1.Nodes` method with failover.
    pub async fn nodes<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(NodesClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(req, |channel, req| rpc(NodesClient::new(channel), req)).await
    }

    async fn call<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut tried: Vec<String> = Vec::new();
        let mut last = String::from(NONE_ANSWERED);
        loop {
            let mut queue = self.sweep_order();
            let mut seen: Vec<Endpoint> = Vec::new();
            while let Some(endpoint) = queue.pop_front() {
                if seen.contains(&endpoint) {
                    continue;
                }
                if Instant::now() >= deadline {
                    return Err(CliError::Unavailable { tried, last });
                }
                seen.push(endpoint.clone());
                let shown = endpoint.to_string();
                if !tried.contains(&shown) {
                    tried.push(shown);
                }
                let channel = match self.channel(&endpoint, deadline).await {
                    Ok(channel) => channel,
                    Err(err) => {
                        last = err;
                        continue;
                    }
                };
                let reply = tokio::time::timeout_at(deadline, rpc(channel.clone(), self.request(req.clone())));
                match reply.await {
                    Ok(Ok(response)) => {
                        self.active = Some((endpoint, channel));
                        return Ok(response.into_inner());
                    }
                    Ok(Err(status)) if is_retryable(&status) => {
                        self.active = None;
                        last = match status.message() {
                            "" => "UNAVAILABLE".to_string(),
                            message => self.redact(message),
                        };
                        if let Some(hint) = leader_hint(&status) {
                            let hint = hint.with_tls_of(&endpoint);
                            if !seen.contains(&hint) {
                                queue.push_front(hint.clone());
                            }
                            self.leader_hint = Some(hint);
                        }
                    }
                    Ok(Err(status)) => {
                        return Err(CliError::from_status(&Status::new(status.code(), self.redact(status.message()))))
                    }
                    Err(_elapsed) => {
                        // Keep what an earlier attempt said: it tells more.
                        let silent = format!("no answer within {:?}", self.timeout);
                        last = if last == NONE_ANSWERED { silent } else { format!("{last}; then {silent}") };
                        return Err(CliError::Unavailable { tried, last });
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CliError::Unavailable { tried, last });
            }
            tokio::time::sleep(jittered(backoff).min(left)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt's request: every call and every retry goes through here.
    fn request<Req>(&self, req: Req) -> Request<Req> {
        let mut request = Request::new(req);
        if let Some(bearer) = &self.bearer {
            request.metadata_mut().insert(AUTHORIZATION_KEY, bearer.clone());
        }
        request
    }

    /// `text` from a node with the token cut out, should a node ever quote it back.
    fn redact(&self, text: &str) -> String {
        let token = self.bearer.as_ref().and_then(|b| b.to_str().ok()).and_then(|b| b.strip_prefix("Bearer "));
        match token {
            Some(token) => text.replace(token, "<token>"),
            None => text.to_owned(),
        }
    }

    /// The endpoint that answered last, then the leader hint, then the configured order.
    fn sweep_order(&self) -> VecDeque<Endpoint> {
        let active = self.active.as_ref().map(|(endpoint, _)| endpoint.clone());
        active.into_iter().chain(self.leader_hint.clone()).chain(self.endpoints.iter().cloned()).collect()
    }

    async fn channel(&self, endpoint: &Endpoint, deadline: Instant) -> Result<Channel, String> {
        if let Some((active, channel)) = &self.active {
            if active == endpoint {
                return Ok(channel.clone());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut builder = Channel::from_shared(endpoint.uri())
            .map_err(|err| err.to_string())?
            .connect_timeout(left.min(MAX_CONNECT))
            .http2_keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if endpoint.is_tls() {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = &self.tls.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &self.tls.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            builder = builder.tls_config(tls).map_err(|err| chain(&err))?;
        }
        builder.connect().await.map_err(|err| chain(&err))
    }
}

const NONE_ANSWERED: &str = "no endpoint answered";

/// UNAVAILABLE from a node, or a failure of the connection itself (reset,
/// closed by GOAWAY: tonic names those by their HTTP/2 reason, e.g.
/// RESOURCE_EXHAUSTED), which a status made on this side from a transport
/// error shows by keeping that error as its source. Either may or may not
/// have taken effect; another endpoint or a retry will tell.
fn is_retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable || status.source().is_some()
}

/// Full jitter over the upper half, so many vpnctl runs in a script do not retry in lockstep.
fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// Joins an error's causes; tonic's own message ("transport error") says nothing, so it is
/// kept only when there is no cause.
fn chain(err: &tonic::transport::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        return err.to_string();
    }
    parts.join(": ")
}

/// Where the leader is, from the `x-vpn-leader-addr` metadata or, failing that, an address
/// written after the word "leader" in the status message ("leader at 10.0.0.2:7000").
pub fn leader_hint(status: &Status) -> Option<Endpoint> {
    if let Some(value) = status.metadata().get(LEADER_ADDR_KEY) {
        return value.to_str().ok().and_then(|v| Endpoint::parse(v).ok());
    }
    let message = status.message().to_ascii_lowercase();
    message.match_indices("leader").find_map(|(at, word)| {
        message[at + word.len()..]
            .split(|c: char| c.is_whitespace() || c == '=')
            .filter(|token| !token.is_empty())
            .take(3)
            .map(|token| token.trim_matches(|c: char| ",;()\"'".contains(c)))
            .map(|token| token.strip_suffix('.').unwrap_or(token))
            .find_map(|token| Endpoint::parse(token).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_and_a_broken_connection_are_retried_and_answers_are_not() {
        let goaway = Status::from_error(Box::new(h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM)));
        assert_eq!(goaway.code(), Code::ResourceExhausted, "tonic's name for a GOAWAY that says calm down");
        assert!(is_retryable(&goaway));
        assert!(is_retryable(&Status::unavailable("no leader elected yet; retry shortly")));
        assert!(!is_retryable(&Status::resource_exhausted("too many requests")));
        assert!(!is_retryable(&Status::already_exists("user \"a\" already exists")));
    }

    fn hint(status: Status) -> Option<String> {
        leader_hint(&status).map(|endpoint| endpoint.to_string())
    }

    #[test]
    fn leader_hint_prefers_metadata() {
        let mut status = Status::unavailable("leader at 10.0.0.9:7000");
        if let Ok(value) = "10.0.0.2:7000".parse() {
            status.metadata_mut().insert(LEADER_ADDR_KEY, value);
        }
        assert_eq!(hint(status).as_deref(), Some("10.0.0.2:7000"));
    }

    #[test]
    fn leader_hint_is_read_from_the_message() {
        let cases = [
            ("not the leader; leader at 10.0.0.2:7000.", Some("10.0.0.2:7000")),
            ("forwarding failed (leader=node-2:7000)", Some("node-2:7000")),
            ("leader is http://[fd00::2]:7000, retry", Some("[fd00::2]:7000")),
            ("no leader elected yet", None),
            ("connection refused", None),
        ];
        for (message, expected) in cases {
            assert_eq!(hint(Status::unavailable(message)).as_deref(), expected, "{message}");
        }
    }

    fn tls_client(token: &str) -> Result<Client, CliError> {
        let endpoints = ["https://a:1", "b:2"].iter().filter_map(|e| Endpoint::parse_with(e, true).ok()).collect();
        Client::new(endpoints, Duration::from_secs(1), TlsFiles::default())
            .with_token(&ApiToken::from(token.to_owned()))
    }

    #[test]
    fn every_request_carries_the_token_as_a_sensitive_bearer() {
        let client = tls_client(" s3cr3t-token\n").map_err(|e| e.to_string());
        let request = client.as_ref().map(|c| c.request(vpn_proto::v1::WhoAmIRequest {}));
        let header = request.as_ref().ok().and_then(|r| r.metadata().get(AUTHORIZATION_KEY));
        assert_eq!(header.and_then(|v| v.to_str().ok()), Some("Bearer s3cr3t-token"), "trimmed");
        assert!(header.is_some_and(MetadataValue::is_sensitive));
        assert!(!format!("{:?}", request).contains("s3cr3t"), "{request:?}");
        let plain = Client::new(Vec::new(), Duration::from_secs(1), TlsFiles::default());
        assert!(plain.request(vpn_proto::v1::WhoAmIRequest {}).metadata().get(AUTHORIZATION_KEY).is_none());
    }

    #[test]
    fn a_token_is_refused_for_plaintext_and_bad_tokens_are_not_quoted() {
        let endpoints = vec![Endpoint::parse_with("https://a:1", false), Endpoint::parse_with("http://b:2", true)];
        let endpoints: Vec<Endpoint> = endpoints.into_iter().filter_map(Result::ok).collect();
        let client = Client::new(endpoints, Duration::from_secs(1), TlsFiles::default());
        let err = client.with_token(&ApiToken::from("s3cr3t".to_owned())).err();
        assert_eq!(err.as_ref().map(CliError::exit_code), Some(2));
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("http://b:2 is plaintext") && !text.contains("s3cr3t"), "{text}");
        for bad in ["s3cr3t\nmore", "s3cr3t\u{e9}", "  "] {
            let err = tls_client(bad).err();
            assert_eq!(err.as_ref().map(CliError::exit_code), Some(2), "{bad:?}");
            let text = err.map(|e| format!("{e} {e:?}")).unwrap_or_default();
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    }

    #[test]
    fn a_node_quoting_the_token_back_is_redacted() {
        let client = tls_client("s3cr3t").map_err(|e| e.to_string());
        let text = client.map(|c| c.redact("unknown token s3cr3t (Bearer s3cr3t)"));
        assert_eq!(text.as_deref(), Ok("unknown token <token> (Bearer <token>)"));
    }

    #[test]
    fn backoff_jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let delay = jittered(Duration::from_millis(800));
            assert!(delay >= Duration::from_millis(400) && delay <= Duration::from_millis(800));
        }
    }

    #[tokio::test]
    async fn gives_up_with_every_endpoint_named_when_nothing_listens() {
        // Bind then drop, so the ports are free and refuse connections.
        let mut endpoints = Vec::new();
        for _ in 0..2 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0");
            let port = listener.and_then(|l| l.local_addr()).map(|a| a.port());
            let endpoint =
                port.map_err(|e| e.to_string()).and_then(|port| Endpoint::parse(&format!("127.0.0.1:{port}")));
            endpoints.extend(endpoint);
        }
        assert_eq!(endpoints.len(), 2);
        let shown: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
        let mut client = Client::new(endpoints, Duration::from_millis(300), TlsFiles::default());
        let started = Instant::now();
        let result =
            client.cluster(vpn_proto::v1::StatusRequest {}, |mut c, req| async move { c.status(req).await }).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        match result {
            Err(CliError::Unavailable { tried, last }) => {
                assert_eq!(tried, shown);
                assert!(last.contains("onnection refused"), "{last}");
            }
            other => panic!("expected Unavailable, got {:?}", other.err()),
        }
    }
}
