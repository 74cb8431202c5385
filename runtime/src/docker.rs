//! Docker through bollard: only the calls the reconciler needs, with errors
//! that name the fix. Engine containers use host networking, restart
//! `unless-stopped`, and carry labels that say whose they are, so a restarted
//! vpnd adopts them and never touches other containers.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures::StreamExt;

use crate::RuntimeError;

/// Labels every engine container carries.
pub const LABEL_OWNER: &str = "vpn.owner-node";
pub const LABEL_ENGINE: &str = "vpn.engine";
pub const LABEL_PROTOCOL: &str = "vpn.protocol";
pub const LABEL_HASH: &str = "vpn.config-hash";
pub const LABEL_PORT: &str = "vpn.listen-port";
pub const LABEL_API_PORTS: &str = "vpn.api-ports";
pub const LABEL_API_SECRET: &str = "vpn.api-secret";
/// Generations (VLESS): the generation's number and the port it listens on.
pub const LABEL_GENERATION: &str = "vpn.generation";
pub const LABEL_ENGINE_PORT: &str = "vpn.engine-port";
/// `check` on the throwaway containers older versions validated configs in (removed when found).
pub const LABEL_ROLE: &str = "vpn.role";

/// Per Docker request; also bounds connecting to an unreachable daemon.
const REQUEST_TIMEOUT_SECS: u64 = 30;
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// A connected Docker client.
#[derive(Clone, Debug)]
pub struct Docker {
    api: bollard::Docker,
}

/// What a container should be.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: Option<String>,
    pub image: String,
    pub cmd: Vec<String>,
    pub labels: HashMap<String, String>,
    /// `host:container:ro` bind mounts.
    pub binds: Vec<String>,
}

/// A container as the reconciler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    /// Changes whenever the engine process (re)starts.
    pub started_at: String,
    /// When the container was created (RFC 3339); never changes.
    pub created: String,
}

impl Docker {
    /// Connects to `host` (`unix:///path`, `tcp://h:p`; default: `DOCKER_HOST`, else the
    /// local socket) and checks the daemon answers, negotiating the API version
    /// (bollard speaks a newer one than Docker 20.10).
    pub async fn connect(host: Option<&str>) -> Result<Self, RuntimeError> {
        let host = match host {
            Some(h) => h.to_string(),
            None => std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
        };
        let unreachable = |reason: String| RuntimeError::DockerUnreachable { host: host.clone(), reason };
        let version = bollard::API_DEFAULT_VERSION;
        let api = if let Some(path) = host.strip_prefix("unix://").or(host.starts_with('/').then_some(host.as_str())) {
            if !std::path::Path::new(path).exists() {
                return Err(unreachable(format!("socket {path} does not exist")));
            }
            bollard::Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, version)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            bollard::Docker::connect_with_http(&host, REQUEST_TIMEOUT_SECS, version)
        } else {
            return Err(unreachable("unsupported address; use unix:///path or tcp://host:port".into()));
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let api = tokio::time::timeout(CONNECT_DEADLINE, api.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_DEADLINE:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Docker { api })
    }

    /// Makes sure `image` is here: pulled if a registry has it, else a clear error naming the build script.
    pub async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.api.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if !is_not_found(&e) => return Err(RuntimeError::docker(format!("inspect image {image}"), e)),
            Err(_) => {}
        }
        tracing::info!(image, "engine image missing; trying to pull it");
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut pull = self.api.create_image(Some(options), None, None);
        while let Some(progress) = pull.next().await {
            if let Err(e) = progress {
                return Err(RuntimeError::ImageMissing { image: image.to_string(), reason: e.to_string() });
            }
        }
        match self.api.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) => Err(RuntimeError::ImageMissing { image: image.to_string(), reason: e.to_string() }),
        }
    }

    /// Containers (running or not) whose labels match all of `labels` (`key` or `key=value`).
    pub async fn list(&self, labels: &[String]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", labels.to_vec())]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let summaries =
            self.api.list_containers(Some(options)).await.map_err(|e| RuntimeError::docker("list containers", e))?;
        let mut out = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            // Inspect for the start time; a container removed meanwhile is simply gone.
            match self.inspect(&id).await {
                Ok(info) => out.push(info),
                Err(RuntimeError::Docker { source, .. }) if is_not_found(&source) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// API and generation ports recorded by every engine container on this host, whichever node owns it.
    pub async fn recorded_ports(&self) -> Result<BTreeSet<u16>, RuntimeError> {
        let mut ports = BTreeSet::new();
        for label in [LABEL_API_PORTS, LABEL_ENGINE_PORT] {
            let options = ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&HashMap::from([("label", vec![label.to_string()])]))
                .build();
            let summaries = self
                .api
                .list_containers(Some(options))
                .await
                .map_err(|e| RuntimeError::docker("list containers", e))?;
            ports.extend(
                summaries
                    .iter()
                    .filter_map(|s| s.labels.as_ref()?.get(label))
                    .flat_map(|ports| ports.split(',').filter_map(|p| p.parse::<u16>().ok())),
            );
        }
        Ok(ports)
    }

    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let c =
            self.api.inspect_container(id, None).await.map_err(|e| RuntimeError::docker(format!("inspect {id}"), e))?;
        let state = c.state.unwrap_or_default();
        Ok(ContainerInfo {
            id: c.id.unwrap_or_else(|| id.to_string()),
            name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
            labels: c.config.and_then(|cfg| cfg.labels).unwrap_or_default(),
            running: state.running == Some(true) && state.restarting != Some(true),
            started_at: state.started_at.unwrap_or_default(),
            created: c.created.unwrap_or_default(),
        })
    }

    /// Creates and starts a container; returns its id. A container that fails to start is removed.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut options = CreateContainerOptionsBuilder::new();
        if let Some(name) = &spec.name {
            options = options.name(name);
        }
        let restart = RestartPolicyNameEnum::UNLESS_STOPPED;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            labels: Some(spec.labels.clone()),
            host_config: Some(HostConfig {
                network_mode: Some("host".into()),
                binds: Some(spec.binds.clone()),
                restart_policy: Some(RestartPolicy { name: Some(restart), maximum_retry_count: None }),
                // Bounded logs: engines run for months.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([("max-size".into(), "10m".into()), ("max-file".into(), "3".into())])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let what = spec.name.clone().unwrap_or_else(|| format!("{} container", spec.image));
        let created = self
            .api
            .create_container(Some(options.build()), body)
            .await
            .map_err(|e| RuntimeError::docker(format!("create {what}"), e))?;
        if let Err(e) = self.api.start_container(&created.id, None).await {
            self.remove(&created.id).await?;
            return Err(RuntimeError::docker(format!("start {what}"), e));
        }
        Ok(created.id)
    }

    /// The last `lines` of a container's output, stdout and stderr.
    pub async fn logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&lines.to_string()).build();
        let mut stream = self.api.logs(id, Some(options));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RuntimeError::docker(format!("logs of {id}"), e))?;
            out.push_str(&chunk.to_string());
        }
        Ok(out.trim().to_string())
    }

    /// Removes a container, running or not; one already gone is fine.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.api.remove_container(id, Some(options)).await {
            Err(e) if !is_not_found(&e) => Err(RuntimeError::docker(format!("remove {id}"), e)),
            _ => Ok(()),
        }
    }
}

pub(crate) fn is_not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}
