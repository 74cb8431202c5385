//! A data-plane-only node (`vpnd --dataplane --join <control plane>`): the
//! agent and its engines, HTTP health and metrics, and nothing of the control
//! plane. It holds no replicated state (so no other node's users, no CA key,
//! no join tokens), runs no Raft and serves no gRPC; its agent calls the
//! control-plane nodes of `--join` with the node's certificate.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use vpn_runtime::ApplyStatus;

use crate::config::Config;
use crate::error::Error;
use crate::identity::{ClusterCell, Identity};
use crate::metrics::Exposition;
use crate::peers::Peers;
use crate::tls::{Material, Security};
use crate::{agent, join_token, renewal};

/// Runs the node until `shutdown` resolves or a fatal error occurs.
pub async fn run(
    config: Config,
    control_plane: Vec<String>,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let Some(dataplane) = &config.dataplane else {
        return Err(Error::Internal("a data-plane-only node without --dataplane settings".into()));
    };
    let identity = Identity::load_or_create(&config.data_dir, config.id)?;
    let hosts = crate::own_hosts(&config);
    let material = match &config.security {
        Security::Insecure => {
            tracing::warn!("--insecure: this node talks to the control plane in plaintext, unauthenticated");
            None
        }
        Security::Mtls(material, _) => Some(material.clone()),
        Security::JoinToken(token) => {
            Some(join_token::material(&config.data_dir, config.id, &control_plane, token, &hosts).await?)
        }
        Security::Dev => return Err(Error::invalid("--dev", "runs a control-plane node: drop --join")),
    };
    let peers = Arc::new(Peers::new(ClusterCell::new(identity.cluster_id), material.as_ref().map(Material::client)));
    let metrics = Exposition::shared();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<Error>(4);
    // The certificate's expiry: renewal moves it, the agent registers it.
    let (renewed, cert_not_after) = watch::channel(material.as_ref().map(|m| m.info.not_after));
    let host = agent::Host {
        identity,
        data_dir: config.data_dir.clone(),
        peers: peers.clone(),
        control_plane: control_plane.clone(),
        heartbeat: config.scheduling.node_heartbeat,
        metrics: metrics.clone(),
        cert_not_after,
        fatal: fatal_tx,
    };
    let agent = agent::start(host, dataplane, stop_rx.clone()).await?;
    let health = Health { metrics, engines: agent.status(), tls: material.is_some() };
    let router = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Arc::new(health));
    let http_task =
        tokio::spawn(crate::http::serve(http, router, config.http_tls.clone(), crate::stopped(stop_rx.clone())));
    // A certificate got with a join token renews itself through the control
    // plane; the operator's files are taken in when replaced.
    let renewal_task = match &config.security {
        Security::JoinToken(_) => {
            let renewal = renewal::Renewal {
                id: config.id,
                peers,
                server: None,
                signer: None,
                voters: Box::new(Vec::new),
                renewed,
                data_dir: config.data_dir.clone(),
                hosts,
                seeds: control_plane,
            };
            Some(tokio::spawn(renewal.run(stop_rx.clone())))
        }
        Security::Mtls(material, files) => {
            let (files, ca_digest) = (files.clone(), material.ca_digest());
            let reload = renewal::Reload { id: config.id, files, ca_digest, peers, server: None, renewed };
            Some(tokio::spawn(reload.run(stop_rx.clone())))
        }
        Security::Insecure | Security::Dev => None,
    };
    tracing::info!(id = config.id, http = %config.http, "vpnd started (data plane only)");

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        Some(e) = fatal_rx.recv() => Err(e),
    };
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    agent.stopped().await;
    http_task.abort();
    if let Some(task) = renewal_task {
        task.abort();
    }
    outcome
}

struct Health {
    metrics: Arc<Exposition>,
    engines: watch::Receiver<ApplyStatus>,
    tls: bool,
}

/// Ready once the engines serve an assignment (from the control plane, or
/// the last one kept on disk) with no error.
async fn readyz(State(health): State<Arc<Health>>, Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let status = health.engines.borrow().clone();
    let ready = status.applied_generation > 0 && status.last_error.is_none();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !q.contains_key("verbose") {
        return (code, if ready { "ok\n".to_owned() } else { "not ready\n".to_owned() });
    }
    let engines = match (&status.last_error, status.applied_generation) {
        (Some(e), _) => format!("[-] engines: {e}\n"),
        (None, 0) => "[-] engines: no assignment applied yet\n".to_owned(),
        (None, g) => format!("[+] engines serve assignment generation {g}\n"),
    };
    let tls = match health.tls {
        true => "[+] control plane: mutual TLS\n",
        false => "[!] control plane: plaintext, no authentication (--insecure)\n",
    };
    (code, format!("{engines}{tls}"))
}

async fn render_metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], health.metrics.render())
}
