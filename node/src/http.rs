//! The HTTP listener (HTTPS with `--http-tls-cert`): `/livez`, `/readyz` (`?verbose` explains), `/metrics`,
//! and `/sub/{token}`: a user's subscription, answered from this node's own
//! copy of the state (it works while the leader is away).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use vpn_client_config::{Format, Subscription};
use vpn_storage::model::{DataplaneNode, UserStatus};

use crate::limits;
use crate::metrics::{NodeLabel, StatusLabel};
use crate::node::{Node, Readiness};
use crate::observer::as_i64;

/// How long a client may take over its TLS handshake on `--http`.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` on `listener` until `stop`: plain HTTP, or HTTPS with
/// `tls` (`--http-tls-cert`), one task per connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<crate::tls::HttpTls>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        return axum::serve(listener, service).with_graceful_shutdown(stop).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.0);
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("--http: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (tcp, peer) = tcp;
        let (acceptor, router) = (acceptor.clone(), router.clone().layer(Extension(ConnectInfo(peer))));
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else { return };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/sub/{token}", get(subscription))
        .with_state(node)
        .layer(Extension(Arc::new(MissLimiter::default())))
}

/// Counts `/sub` misses per source and minute (see `limits::SUB_MISSES_PER_MINUTE`).
#[derive(Default)]
pub struct MissLimiter(Mutex<HashMap<IpAddr, (u64, u32)>>);

impl MissLimiter {
    /// IPv6 sources count by /64: one host holds a whole /64.
    fn source(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            },
            v4 => v4,
        }
    }

    /// Whether `ip` has used up its misses of minute `minute`. Loopback is
    /// never limited: behind a reverse proxy on the host every client would
    /// share one budget (such a proxy limits its own clients).
    fn limited(&self, ip: IpAddr, minute: u64) -> bool {
        if Self::source(ip).is_loopback() {
            return false;
        }
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&Self::source(ip)).is_some_and(|(m, n)| *m == minute && *n >= limits::SUB_MISSES_PER_MINUTE)
    }

    /// Counts a miss. A full table first forgets earlier minutes; if it is
    /// still full, the source goes uncounted (guessing cannot work anyway).
    fn missed(&self, ip: IpAddr, minute: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let source = Self::source(ip);
        if map.len() >= limits::SUB_MISS_SOURCES && !map.contains_key(&source) {
            map.retain(|_, (m, _)| *m == minute);
            if map.len() >= limits::SUB_MISS_SOURCES {
                return;
            }
        }
        let entry = map.entry(source).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 += 1;
    }
}

async fn readyz(State(node): State<Arc<Node>>, Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let r = node.readiness().await;
    let code = if r.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = if q.contains_key("verbose") {
        explain(&r, node.tls.is_some())
    } else if r.is_ready() {
        "ok\n".to_owned()
    } else {
        "not ready\n".to_owned()
    };
    (code, body)
}

/// `/readyz?verbose`: one line per check, `[+]` passed, `[-]` failed.
fn explain(r: &Readiness, tls: bool) -> String {
    let leader = match r.leader {
        Some(id) => format!("[+] leader known: node {id}\n"),
        None => "[-] no leader known\n".to_owned(),
    };
    let sign = if r.applied >= r.committed { '+' } else { '-' };
    let persisted = match &r.unpersisted {
        None => "[+] applied state persisted\n".to_owned(),
        Some(cause) => format!(
            "[-] applied state not persisted: {cause}: this node serves no reads; restart it once its disk is fixed \
             (the log re-applies what did not persist)\n"
        ),
    };
    let tls =
        if tls { "[+] gRPC port: mutual TLS\n" } else { "[!] gRPC port: plaintext, no authentication (--insecure)\n" };
    format!("{leader}[{sign}] applied {} of committed {}\n{persisted}{tls}", r.applied, r.committed)
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // Counted at scrape time: a pass over the users is cheap next to a scrape,
    // and too costly to repeat on every applied entry.
    let m = &node.metrics;
    node.state.read(|s| {
        for status in UserStatus::ALL {
            let n = s.users.values().filter(|u| u.status == status).count();
            m.users.get_or_create(&StatusLabel { status: status.as_str() }).set(as_i64(n as u64));
        }
        for status in ["ready", "down", "cordoned", "draining"] {
            let n = s.dataplane_nodes.values().filter(|d| d.status() == status).count();
            m.dataplane_nodes.get_or_create(&StatusLabel { status }).set(as_i64(n as u64));
        }
        m.placements.clear();
        for (id, n) in s.placement_counts() {
            m.placements.get_or_create(&NodeLabel { node: id }).set(as_i64(n));
        }
    });
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], node.metrics.render())
}

/// `GET /sub/{token}[?format=base64|sing-box|clash]`: the links of the
/// user's healthy nodes. A user who is not served (disabled, limited,
/// expired) gets a document with no server, whose headers still carry usage
/// and expiry, so the app can say why. An unknown token gets a bare 404 that
/// tells a guesser nothing.
async fn subscription(
    State(node): State<Arc<Node>>,
    Extension(misses): Extension<Arc<MissLimiter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let minute = u64::try_from(crate::api::convert::now_ms() / 60_000).unwrap_or_default();
    if misses.limited(peer.ip(), minute) {
        let mut response = (StatusCode::TOO_MANY_REQUESTS, "too many unknown tokens: wait a minute\n").into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return response;
    }
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let format = match Format::choose(q.get("format").map(String::as_str), agent) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let rendered = node.state.read(|s| {
        let user = s.user_by_token(&token)?;
        // `nodes_serving` is empty for a user who is not active.
        let nodes: Vec<&DataplaneNode> = s.nodes_serving(user).filter(|n| n.is_ready()).collect();
        Some(vpn_client_config::render(user, &nodes, format))
    });
    match rendered {
        Some(sub) => respond(sub),
        None => {
            misses.missed(peer.ip(), minute);
            (StatusCode::NOT_FOUND, "not found\n").into_response()
        }
    }
}

fn respond(sub: Subscription) -> Response {
    let mut response = (StatusCode::OK, sub.body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(sub.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in sub.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_misses_per_minute_then_429_until_the_next_minute() {
        let limiter = MissLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        for _ in 0..limits::SUB_MISSES_PER_MINUTE {
            assert!(!limiter.limited(a, 7));
            limiter.missed(a, 7);
        }
        assert!(limiter.limited(a, 7), "one over the limit");
        assert!(!limiter.limited(b, 7), "another source");
        assert!(!limiter.limited(a, 8), "the next minute");
        let (x, y): (IpAddr, IpAddr) = ("2001:db8::1".parse().expect("ip"), "2001:db8::ffff:2".parse().expect("ip"));
        for _ in 0..limits::SUB_MISSES_PER_MINUTE {
            limiter.missed(x, 7);
        }
        assert!(limiter.limited(y, 7), "the same /64");
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        for _ in 0..=limits::SUB_MISSES_PER_MINUTE {
            limiter.missed(local, 7);
        }
        assert!(!limiter.limited(local, 7), "loopback (a reverse proxy on the host)");
    }

    #[test]
    fn a_state_that_did_not_persist_makes_the_node_unready_and_says_why() {
        let mut r = Readiness { leader: Some(2), applied: 9, committed: 9, unpersisted: None };
        assert!(r.is_ready());
        assert!(explain(&r, true).contains("[+] applied state persisted"));
        r.unpersisted = Some("writing applied changes to sled failed: No space left on device".into());
        assert!(!r.is_ready());
        let text = explain(&r, true);
        assert!(text.contains("[-] applied state not persisted: writing applied changes to sled failed"), "{text}");
        assert!(text.contains("serves no reads") && text.contains("restart it"), "{text}");
    }
}
