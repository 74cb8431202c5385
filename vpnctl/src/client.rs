//! Calls a gRPC method on whichever endpoint answers, retrying until a deadline.
//!
//! Every node serves the whole API and forwards writes to the leader itself, so the client
//! needs no leader logic: it tries the endpoints in order, moves on after a connect failure or
//! UNAVAILABLE, and sweeps them again with exponential backoff until `--timeout`. A node that
//! names the leader in its UNAVAILABLE reply gets that address tried next.

use std::collections::VecDeque;
use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Response, Status};
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::users_client::UsersClient;

use crate::endpoint::Endpoint;
use crate::error::CliError;

/// Metadata key in which a node names the leader's gRPC address (`host:port`).
pub const LEADER_ADDR_KEY: &str = "x-vpn-leader-addr";

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
}

impl Client {
    /// `timeout` bounds each call including its retries; `tls` is used for TLS endpoints.
    pub fn new(endpoints: Vec<Endpoint>, timeout: Duration, tls: TlsFiles) -> Self {
        Self { endpoints, timeout, tls, active: None, leader_hint: None }
    }

    /// Calls a `vpn.v1.Users` method with failover.
    pub async fn users<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(UsersClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(req, |channel, req| rpc(UsersClient::new(channel), req)).await
    }

    /// Calls a `vpn.v1.Cluster` method with failover.
    pub async fn cluster<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(ClusterClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(req, |channel, req| rpc(ClusterClient::new(channel), req)).await
    }

    /// Calls a `vpn.v1.Nodes` method with failover.
    pub async fn nodes<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(NodesClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(req, |channel, req| rpc(NodesClient::new(channel), req)).await
    }

    async fn call<Req, T, F, Fut>(&mut self, req: Req, rpc: F) -> Result<T, CliError>
    where
        Req: Clone,
        F: Fn(Channel, Req) -> Fut,
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
                let reply = tokio::time::timeout_at(deadline, rpc(channel.clone(), req.clone()));
                match reply.await {
                    Ok(Ok(response)) => {
                        self.active = Some((endpoint, channel));
                        return Ok(response.into_inner());
                    }
                    Ok(Err(status)) if is_retryable(&status) => {
                        self.active = None;
                        last = match status.message() {
                            "" => "UNAVAILABLE".to_string(),
                            message => message.to_string(),
                        };
                        if let Some(hint) = leader_hint(&status) {
                            let hint = hint.with_tls_of(&endpoint);
                            if !seen.contains(&hint) {
                                queue.push_front(hint.clone());
                            }
                            self.leader_hint = Some(hint);
                        }
                    }
                    Ok(Err(status)) => return Err(CliError::from_status(&status)),
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
