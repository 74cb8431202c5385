//! The doing half: applies one planned [`Op`] through Docker and the engine.
//! A new config is validated in full (render, our checks, `sing-box check`,
//! image, ports) before anything running is touched, so a failure leaves the
//! working engine as it was.
//!
//! An op that ends counting sources (removes an engine or a Shadowsocks
//! user, refuses a VLESS user, reloads) first takes a final reading of them
//! for traffic accounting (see [`crate::usage`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::env::{Env, LiveState};
use super::plan::{ContainerRef, Op, RemoveReason, Replaced};
use super::{Observed, ObservedContainer};
use crate::docker::{
    ContainerSpec, LABEL_API_PORTS, LABEL_API_SECRET, LABEL_ENGINE, LABEL_HASH, LABEL_OWNER, LABEL_PORT, LABEL_PROTOCOL,
};
use crate::engine::{ApiAccess, Engine, UserStrategy};
use crate::fsutil::{remove_dir, write_atomic};
use crate::{keys, ports, usage, DesiredState, InboundSpec, Protocol, RuntimeError};

/// How long a new or reloaded engine may take to answer on its APIs.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Where a candidate config is written next to the live one for `check`.
const CANDIDATE: &str = "config.next.json";

pub async fn apply<E: Engine>(
    env: &Env<E>,
    desired: &DesiredState,
    observed: &Observed,
    op: &Op,
) -> Result<(), RuntimeError> {
    tracing::info!(node = env.node_id, ?op, "applying");
    match op {
        Op::Remove { container, protocol, reason } => {
            final_reading(env, observed, &container.id, None).await;
            env.docker.remove(&container.id).await?;
            if let (Some(p), RemoveReason::NotDesired) = (protocol, reason) {
                remove_dir(&env.engine_dir(*p))?;
                remove_dir(&env.staging_dir(*p))?;
                remove_file(&env.state_path(*p))?;
            }
            Ok(())
        }
        Op::Create { protocol, replaces, .. } => create(env, desired, observed, *protocol, replaces.as_ref()).await,
        Op::AddUsers { container, users, .. } => env.engine.add_users(find(observed, container)?.1, users).await,
        Op::RemoveUsers { container, names, .. } => {
            let api = find(observed, container)?.1;
            final_reading(env, observed, &container.id, Some(names)).await;
            env.engine.remove_users(api, names).await
        }
        Op::Refuse { protocol, container, names } => {
            let (container, api) = find(observed, container)?;
            final_reading(env, observed, &container.id, Some(names)).await;
            // Refuse first (at once), then persist: a restart must not bring the user back.
            let closed = env.engine.set_refused(api, names, true).await?;
            env.metrics.closed_sessions(*protocol, closed);
            persist(env, desired, *protocol, api).await?;
            update_state(env, *protocol, container, |s| s.refused.extend(names.iter().cloned()))
        }
        Op::Readmit { protocol, container, names } => {
            let (container, api) = find(observed, container)?;
            persist(env, desired, *protocol, api).await?;
            env.engine.set_refused(api, names, false).await?;
            update_state(env, *protocol, container, |s| s.refused.retain(|n| !names.contains(n)))
        }
        Op::Reload { protocol, container } => {
            let (container, api) = find(observed, container)?;
            persist(env, desired, *protocol, api).await?;
            final_reading(env, observed, &container.id, None).await;
            env.docker.signal(&container.id, "SIGHUP").await?;
            env.metrics.reloaded(*protocol);
            // Recorded as soon as the signal is delivered: sing-box checks the file before it
            // swaps, and the file passed `check`, so the process now serves exactly these users.
            let live = desired.users.iter().map(|u| (u.name.clone(), u.credential(*protocol))).collect();
            update_state(env, *protocol, container, |s| {
                s.live = live;
                s.refused.clear();
            })?;
            wait_ready(env, *protocol, &container.id, api).await
        }
    }
}

/// Validates everything about the new engine, then replaces the old one.
async fn create<E: Engine>(
    env: &Env<E>,
    desired: &DesiredState,
    observed: &Observed,
    protocol: Protocol,
    replaces: Option<&Replaced>,
) -> Result<(), RuntimeError> {
    let inbound = inbound(desired, protocol)?;
    env.docker.ensure_image(&env.image).await?;
    let hash = env.engine.config_hash(&env.image, inbound)?;
    let recorded = env.docker.recorded_api_ports().await?;
    let reserved = ports::reserve_loopback(env.engine.api_port_count(protocol), &recorded)?;
    let api = ApiAccess { ports: reserved.ports(), secret: keys::random_secret() };
    let staging = env.staging_dir(protocol);
    remove_dir(&staging)?;
    for file in env.engine.render(inbound, &desired.users, &api)? {
        let path = staging.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io("create", parent, e))?;
        }
        write_atomic(&path, &file.contents, file.private)?;
    }
    env.check(protocol, &staging, env.engine.config_file()).await?;
    if !replaces.is_some_and(|r| r.holds_port) {
        ports::ensure_free(protocol, inbound.listen_port)?;
    }

    // Everything checked: the old engine may go.
    if let Some(old) = replaces {
        final_reading(env, observed, &old.container.id, None).await;
        env.docker.remove(&old.container.id).await?;
        ports::ensure_free(protocol, inbound.listen_port)?;
    }
    let dir = env.engine_dir(protocol);
    remove_dir(&dir)?;
    std::fs::rename(&staging, &dir).map_err(|e| RuntimeError::io("rename into place", &dir, e))?;
    remove_file(&env.state_path(protocol))?;
    reserved.release();
    let id = env.docker.run(&engine_spec(env, inbound, &hash, &api)).await?;
    if let Err(e) = wait_ready(env, protocol, &id, &api).await {
        env.docker.remove(&id).await?;
        return Err(e);
    }
    env.metrics.container_created(protocol);
    if env.engine.user_strategy(protocol) == UserStrategy::Reload {
        let started_at = env.docker.inspect(&id).await?.started_at;
        let live = desired.users.iter().map(|u| (u.name.clone(), u.credential(protocol))).collect();
        env.write_state(protocol, &LiveState { container_id: id, started_at, live, refused: Default::default() })?;
    }
    Ok(())
}

fn engine_spec<E: Engine>(env: &Env<E>, inbound: &InboundSpec, hash: &str, api: &ApiAccess) -> ContainerSpec {
    let ports: Vec<String> = api.ports.iter().map(u16::to_string).collect();
    let labels = [
        (LABEL_OWNER, env.node_id.to_string()),
        (LABEL_ENGINE, env.engine.name().to_string()),
        (LABEL_PROTOCOL, inbound.protocol.as_str().to_string()),
        (LABEL_HASH, hash.to_string()),
        (LABEL_PORT, inbound.listen_port.to_string()),
        (LABEL_API_PORTS, ports.join(",")),
        (LABEL_API_SECRET, api.secret.clone()),
    ];
    ContainerSpec {
        name: Some(env.container_name(inbound.protocol)),
        image: env.image.clone(),
        cmd: env.engine.run_args(),
        labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<HashMap<_, _>>(),
        binds: vec![format!("{}:{}:ro", env.engine_dir(inbound.protocol).display(), env.engine.container_dir())],
        network_mode: "host".into(),
        restart: true,
    }
}

/// Writes the config for the desired users next to the live one, checks it, and moves it into place.
async fn persist<E: Engine>(
    env: &Env<E>,
    desired: &DesiredState,
    protocol: Protocol,
    api: &ApiAccess,
) -> Result<(), RuntimeError> {
    let inbound = inbound(desired, protocol)?;
    let dir = env.engine_dir(protocol);
    let config = env.engine.config_file();
    let files = env.engine.render(inbound, &desired.users, api)?;
    let file = files
        .iter()
        .find(|f| f.path.as_os_str() == config)
        .ok_or_else(|| RuntimeError::invalid(protocol.as_str(), format!("engine rendered no {config}")))?;
    write_atomic(&dir.join(CANDIDATE), &file.contents, file.private)?;
    env.check(protocol, &dir, CANDIDATE).await?;
    let target = dir.join(config);
    std::fs::rename(dir.join(CANDIDATE), &target).map_err(|e| RuntimeError::io("rename into place", target, e))
}

/// Reads the counters of `id`'s sources that are about to end (all, or only
/// those of `users`) and keeps them as final readings. Best effort: an engine
/// that does not answer has nothing to give.
async fn final_reading<E: Engine>(env: &Env<E>, observed: &Observed, id: &str, users: Option<&[String]>) {
    let Some(c) = observed.containers.iter().find(|c| c.id == id && c.running) else { return };
    let (Some(protocol), Some(api)) = (c.protocol, &c.api) else { return };
    match usage::read_engine(&env.engine, protocol, &c.id, &c.started_at, api).await {
        Ok(mut counters) => {
            if let Some(users) = users {
                counters.retain(|counter| users.contains(&counter.user));
            }
            env.finals.keep(counters, Instant::now());
        }
        Err(e) => tracing::debug!(node = env.node_id, container = %c.name, error = %e, "no final traffic reading"),
    }
}

/// Polls the engine's APIs until they answer; a container that stops meanwhile fails at once, with its log.
async fn wait_ready<E: Engine>(
    env: &Env<E>,
    protocol: Protocol,
    id: &str,
    api: &ApiAccess,
) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let Err(last) = env.engine.ping(protocol, api).await else { return Ok(()) };
        let running = env.docker.inspect(id).await?.running;
        if !running || Instant::now() > deadline {
            let log = env.docker.logs(id, 20).await.unwrap_or_else(|e| format!("(no log: {e})"));
            let state = if running { format!("APIs silent after {READY_TIMEOUT:?} ({last})") } else { "exited".into() };
            return Err(RuntimeError::EngineNotReady {
                name: env.container_name(protocol),
                detail: format!("{state}; log: {log}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn update_state<E: Engine>(
    env: &Env<E>,
    protocol: Protocol,
    container: &ObservedContainer,
    change: impl FnOnce(&mut LiveState),
) -> Result<(), RuntimeError> {
    // An earlier op of this plan may have written it already; else start from what was observed.
    let mut state = match env.read_state(protocol) {
        Some(s) if s.container_id == container.id && s.started_at == container.started_at => s,
        _ => {
            let users = container.users.clone().unwrap_or_default();
            LiveState {
                container_id: container.id.clone(),
                started_at: container.started_at.clone(),
                live: users.live,
                refused: users.refused,
            }
        }
    };
    change(&mut state);
    env.write_state(protocol, &state)
}

/// The observed container an op names, with its API access.
fn find<'a>(
    observed: &'a Observed,
    container: &ContainerRef,
) -> Result<(&'a ObservedContainer, &'a ApiAccess), RuntimeError> {
    observed.containers.iter().find(|c| c.id == container.id).and_then(|c| Some((c, c.api.as_ref()?))).ok_or_else(
        || RuntimeError::EngineApi { api: "engine API", addr: container.name.clone(), reason: "no API labels".into() },
    )
}

fn inbound(desired: &DesiredState, protocol: Protocol) -> Result<&InboundSpec, RuntimeError> {
    desired
        .inbounds
        .iter()
        .find(|i| i.protocol == protocol)
        .ok_or_else(|| RuntimeError::invalid(protocol.as_str(), "planned for an inbound not in the desired state"))
}

fn remove_file(path: &std::path::Path) -> Result<(), RuntimeError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::io("remove", path, e)),
        _ => Ok(()),
    }
}
