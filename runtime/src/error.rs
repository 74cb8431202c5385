//! The crate's one error type. Messages name what was wrong and, where an
//! operator can act, the fix: they end up in `vpnd` logs and in
//! [`ApplyStatus::last_error`](crate::ApplyStatus).

use std::path::PathBuf;

/// Everything that can go wrong between a desired state and running engines.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot reach Docker at {host}: {reason}; start the Docker daemon (e.g. `systemctl start docker`) \
         or point --docker-host / DOCKER_HOST at its socket"
    )]
    DockerUnreachable { host: String, reason: String },

    #[error(
        "engine image {image} is not on this host and could not be pulled ({reason}); build it with \
         `ops/images/build-sing-box.sh {image}` or give --engine-image an image this host has"
    )]
    ImageMissing { image: String, reason: String },

    #[error(
        "port {port}/{transport} for the {protocol} inbound is already in use on this host; stop what \
         listens there or give the inbound another port (--inbound {protocol}=<port>)"
    )]
    PortInUse { port: u16, transport: &'static str, protocol: String },

    #[error("invalid desired state: {field}: {reason}")]
    Invalid { field: String, reason: String },

    #[error("sing-box rejected the {protocol} configuration (`sing-box check`): {output}")]
    ConfigRejected { protocol: String, output: String },

    #[error("Docker {action} failed: {source}")]
    Docker {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },

    #[error(
        "cannot {action} the nftables rules that hand VLESS connections to the current engine generation: \
         {detail}"
    )]
    Handoff { action: &'static str, detail: String },

    #[error("engine container {name} did not become ready: {detail}")]
    EngineNotReady { name: String, detail: String },

    #[error("{api} at {addr}: {reason}")]
    EngineApi { api: &'static str, addr: String, reason: String },

    #[error(
        "traffic counters of engine {container} could not be read while it runs: {source}; they are read \
         again at the next heartbeat (counts are cumulative: nothing is lost while the engine runs)"
    )]
    CountersUnavailable {
        container: String,
        #[source]
        source: Box<RuntimeError>,
    },

    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),

    /// Several inbounds failed in one reconcile (the others were applied).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<RuntimeError>),

    #[error("reconcile did not converge after {passes} passes; last plan: {last_plan}")]
    NotConverging { passes: usize, last_plan: String },
}

impl RuntimeError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        RuntimeError::Invalid { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io { action, path: path.into(), source }
    }

    pub(crate) fn docker(action: impl Into<String>, source: bollard::errors::Error) -> Self {
        RuntimeError::Docker { action: action.into(), source }
    }
}
