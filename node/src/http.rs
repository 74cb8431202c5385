//! The HTTP listener: `/livez`, `/readyz` (`?verbose` explains), `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use vpn_storage::model::UserStatus;

use crate::metrics::StatusLabel;
use crate::node::Node;
use crate::observer::as_i64;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn readyz(State(node): State<Arc<Node>>, Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let r = node.readiness().await;
    let code = if r.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = if q.contains_key("verbose") {
        let leader = match r.leader {
            Some(id) => format!("[+] leader known: node {id}\n"),
            None => "[-] no leader known\n".to_owned(),
        };
        let sign = if r.applied >= r.committed { '+' } else { '-' };
        format!("{leader}[{sign}] applied {} of committed {}\n", r.applied, r.committed)
    } else if r.is_ready() {
        "ok\n".to_owned()
    } else {
        "not ready\n".to_owned()
    };
    (code, body)
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // Counted at scrape time: a pass over the users is cheap next to a scrape,
    // and too costly to repeat on every applied entry.
    let (active, total) =
        node.state.read(|s| (s.users.values().filter(|u| u.status == UserStatus::Active).count(), s.users.len()));
    let users = &node.metrics.users;
    users.get_or_create(&StatusLabel { status: "active" }).set(as_i64(active as u64));
    users.get_or_create(&StatusLabel { status: "disabled" }).set(as_i64((total - active) as u64));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], node.metrics.render())
}
