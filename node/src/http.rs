//! The HTTP listener (HTTPS with `--http-tls-cert`): `/livez`, `/readyz` (`?verbose` explains), `/metrics`,
//! and `/sub/{token}`: a user's subscription, answered from this node's own
//! copy of the state (it works while the leader is away).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use vpn_client_config::{Format, Subscription};
use vpn_storage::model::{DataplaneNode, UserStatus};

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
    let Some(tls) = tls else { return axum::serve(listener, router).with_graceful_shutdown(stop).await };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.0);
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!("--http: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
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
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
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
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
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
