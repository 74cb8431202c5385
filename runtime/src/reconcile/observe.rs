//! The observing half: this node's containers from Docker, and for each
//! current, running engine the users it serves (live API or state file).

use std::collections::BTreeMap;

use super::env::Env;
use super::{EngineUsers, Observed, ObservedContainer};
use crate::docker::{
    ContainerInfo, LABEL_API_PORTS, LABEL_API_SECRET, LABEL_ENGINE, LABEL_HASH, LABEL_PORT, LABEL_PROTOCOL, LABEL_ROLE,
};
use crate::engine::{ApiAccess, Engine, UserStrategy};
use crate::{Protocol, RuntimeError};

/// Observes this node's containers. Users are read only from engines whose
/// hash is `current` (others are about to be replaced anyway).
pub async fn observe<E: Engine>(env: &Env<E>, current: &BTreeMap<Protocol, String>) -> Result<Observed, RuntimeError> {
    let mut containers = Vec::new();
    for info in env.docker.list(&[env.owner_label()]).await? {
        let label = |key: &str| info.labels.get(key).map(String::as_str);
        let protocol = Protocol::parse(label(LABEL_PROTOCOL).unwrap_or_default())
            .filter(|_| label(LABEL_ENGINE) == Some(env.engine.name()) && label(LABEL_ROLE).is_none());
        let api = parse_api(label(LABEL_API_PORTS), label(LABEL_API_SECRET));
        // Damaged API labels make the engine unmanageable: an empty hash gets it recreated.
        let config_hash = if api.is_some() { label(LABEL_HASH).unwrap_or_default().to_string() } else { String::new() };
        let users = match (protocol, &api) {
            (Some(p), Some(api)) if info.running && current.get(&p) == Some(&config_hash) => {
                Some(observe_users(env, p, api, &info).await?)
            }
            _ => None,
        };
        containers.push(ObservedContainer {
            id: info.id.clone(),
            name: info.name.clone(),
            protocol,
            config_hash,
            listen_port: label(LABEL_PORT).and_then(|p| p.parse().ok()),
            running: info.running,
            started_at: info.started_at.clone(),
            api,
            users,
        });
    }
    Ok(Observed { containers })
}

async fn observe_users<E: Engine>(
    env: &Env<E>,
    protocol: Protocol,
    api: &ApiAccess,
    info: &ContainerInfo,
) -> Result<EngineUsers, RuntimeError> {
    match env.engine.user_strategy(protocol) {
        UserStrategy::Live => Ok(EngineUsers { live: env.engine.live_users(api).await?, refused: Default::default() }),
        UserStrategy::Reload => match env.read_state(protocol) {
            Some(state) if state.container_id == info.id && state.started_at == info.started_at => {
                Ok(EngineUsers { live: state.live, refused: state.refused })
            }
            // Restarted (or never recorded): the process loaded the config file as it is.
            _ => {
                let path = env.engine_dir(protocol).join(env.engine.config_file());
                let live = std::fs::read(&path).map(|b| env.engine.users_in_config(&b)).unwrap_or_default();
                Ok(EngineUsers { live, refused: Default::default() })
            }
        },
    }
}

pub(crate) fn parse_api(ports: Option<&str>, secret: Option<&str>) -> Option<ApiAccess> {
    let ports: Vec<u16> = ports?.split(',').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    Some(ApiAccess { ports, secret: secret?.to_string() })
}

#[cfg(test)]
mod tests {
    use super::parse_api;

    #[test]
    fn api_labels_parse_or_mark_the_container_damaged() {
        let api = parse_api(Some("4001,4002"), Some("s")).expect("valid");
        assert_eq!(api.ports, vec![4001, 4002]);
        assert!(parse_api(Some("4001,x"), Some("s")).is_none());
        assert!(parse_api(Some("4001"), None).is_none());
        assert!(parse_api(None, Some("s")).is_none());
    }
}
