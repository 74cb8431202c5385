//! The node's one error type. Startup errors name the flag or path to fix;
//! request errors become gRPC statuses in one place (`api::status`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- startup
    #[error("{0} is required (or run `vpnd --dev` for a local single node)")]
    MissingFlag(&'static str),
    #[error("{flag}: {detail}")]
    InvalidFlag { flag: &'static str, detail: String },
    #[error("config file {path}: {detail}")]
    ConfigFile { path: PathBuf, detail: String },
    #[error(transparent)]
    Storage(#[from] vpn_storage::OpenError),
    #[error("data dir {path}: {detail}")]
    DataDir { path: PathBuf, detail: String },
    #[error("cannot listen on {addr} ({what}): {detail}: pick a free port or stop the process using it")]
    Bind { what: &'static str, addr: String, detail: String },
    #[error("could not join the cluster through {seeds}: {detail}")]
    Join { seeds: String, detail: String },
    #[error("the cluster refused this node's identity: {0}")]
    Identity(String),
    #[error("data plane: {0}")]
    Runtime(#[from] vpn_runtime::RuntimeError),
    #[error("data plane: {0}")]
    TrafficJournal(#[from] crate::agent::JournalError),

    // --- requests
    #[error("{field}: {detail}")]
    InvalidArgument { field: &'static str, detail: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A credential (a join token) is missing, invalid or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (e.g. grant more than it holds).
    #[error("{0}")]
    PermissionDenied(String),
    /// A bounded resource is full (the proposal queue); back off and retry.
    #[error("{0}")]
    ResourceExhausted(String),
    /// No leader reachable right now; the caller should retry (maybe at `leader_addr`).
    #[error("{detail}")]
    Unavailable { detail: String, leader_addr: Option<String> },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(flag: &'static str, detail: &str) -> Self {
        Self::InvalidFlag { flag, detail: detail.to_owned() }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable { detail: detail.into(), leader_addr: None }
    }
}
