//! The observing half: this node's containers from Docker, its port routes
//! from nftables, its users' marks, and for each running generation the
//! users it serves (state file or config) and, once new connections no
//! longer reach it, its sessions.

use super::env::Env;
use super::{EngineUsers, Observed, ObservedContainer};
use crate::docker::{
    ContainerInfo, LABEL_API_PORTS, LABEL_API_SECRET, LABEL_ENGINE, LABEL_ENGINE_PORT, LABEL_GENERATION, LABEL_HASH,
    LABEL_PORT, LABEL_PROTOCOL, LABEL_ROLE,
};
use crate::engine::{ApiAccess, Engine};
use crate::{Protocol, RuntimeError};

/// Observes this node's containers, routes and marks.
pub async fn observe<E: Engine>(env: &Env<E>) -> Result<Observed, RuntimeError> {
    // Without nftables there is no table: each generation listens on the public port itself.
    let routes = match env.stream {
        None => env.table.routes().await?,
        Some(_) => None,
    };
    let table = routes.is_some();
    let routes = routes.unwrap_or_default();
    let mut containers = Vec::new();
    for info in env.docker.list(&[env.owner_label()]).await? {
        let label = |key: &str| info.labels.get(key).map(String::as_str);
        let protocol = Protocol::parse(label(LABEL_PROTOCOL).unwrap_or_default())
            .filter(|_| label(LABEL_ENGINE) == Some(env.engine.name()) && label(LABEL_ROLE).is_none());
        let api = parse_api(label(LABEL_API_PORTS), label(LABEL_API_SECRET));
        // Damaged API labels make the engine unmanageable: an empty hash gets it replaced.
        let config_hash = if api.is_some() { label(LABEL_HASH).unwrap_or_default().to_string() } else { String::new() };
        let listen_port = label(LABEL_PORT).and_then(|p| p.parse().ok());
        // An engine from before generations listened on the public port itself: generation 0.
        let generation = protocol.map(|_| label(LABEL_GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0));
        let engine_port = match generation {
            Some(0) => listen_port,
            Some(_) => label(LABEL_ENGINE_PORT).and_then(|p| p.parse().ok()),
            None => None,
        };
        let (mut users, mut sessions) = (None, None);
        if let (Some(p), Some(g), Some(api), true) = (protocol, generation, &api, info.running) {
            users = Some(observe_users(env, p, g, &info));
            if engine_port.is_some_and(|port| !routes.values().any(|r| *r == port)) {
                sessions = Some(env.engine.sessions(api).await?);
            }
        }
        containers.push(ObservedContainer {
            id: info.id.clone(),
            name: info.name.clone(),
            protocol,
            config_hash,
            listen_port,
            generation,
            engine_port,
            created_ms: unix_ms(&info.created),
            running: info.running,
            started_at: info.started_at.clone(),
            api,
            users,
            sessions,
        });
    }
    let marked = env.marks().users().map(str::to_string).collect();
    Ok(Observed { containers, routes, marked, table })
}

/// The users a running generation serves: as recorded for this very process,
/// or (restarted, or never recorded) as its config file has them.
fn observe_users<E: Engine>(env: &Env<E>, protocol: Protocol, generation: u64, info: &ContainerInfo) -> EngineUsers {
    match env.read_state(protocol, generation) {
        Some(state) if state.container_id == info.id && state.started_at == info.started_at => {
            EngineUsers { live: state.live, refused: state.refused }
        }
        _ => {
            let path = env.generation_dir(protocol, generation).join(env.engine.config_file());
            let live = std::fs::read(&path).map(|b| env.engine.users_in_config(&b)).unwrap_or_default();
            EngineUsers { live, refused: Default::default() }
        }
    }
}

/// Docker's RFC 3339 time as Unix milliseconds.
fn unix_ms(rfc3339: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

pub(crate) fn parse_api(ports: Option<&str>, secret: Option<&str>) -> Option<ApiAccess> {
    let ports: Vec<u16> = ports?.split(',').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    Some(ApiAccess { ports, secret: secret?.to_string() })
}

#[cfg(test)]
mod tests {
    use super::{parse_api, unix_ms};

    #[test]
    fn api_labels_parse_or_mark_the_container_damaged() {
        let api = parse_api(Some("4001,4002"), Some("s")).expect("valid");
        assert_eq!(api.ports, vec![4001, 4002]);
        assert!(parse_api(Some("4001,x"), Some("s")).is_none());
        assert!(parse_api(Some("4001"), None).is_none());
        assert!(parse_api(None, Some("s")).is_none());
    }

    #[test]
    fn docker_times_are_read_to_the_millisecond() {
        assert_eq!(unix_ms("1970-01-01T00:00:01.234567891Z"), Some(1234));
        assert_eq!(unix_ms("0001-01-01T00:00:00Z"), None, "Docker's zero time is before the epoch");
        assert_eq!(unix_ms(""), None);
    }
}
