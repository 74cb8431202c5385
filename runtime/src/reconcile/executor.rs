//! The doing half: applies one planned [`Op`] through Docker, nftables and
//! the engine. A live-API engine's new config is validated in full (render,
//! our checks, `sing-box check`, image, ports) before anything running is
//! touched; a new generation is started and must answer before new
//! connections are routed to it. Either way a failure leaves the working
//! engine as it was.
//!
//! An op that ends counting sources (removes an engine or a Shadowsocks
//! user, refuses a VLESS user) first takes a final reading of them for
//! traffic accounting (see [`crate::usage`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::env::{Env, LiveState};
use super::plan::{ContainerRef, Op, RemoveReason, Replaced};
use super::{Observed, ObservedContainer};
use crate::docker::{
    ContainerSpec, LABEL_API_PORTS, LABEL_API_SECRET, LABEL_ENGINE, LABEL_ENGINE_PORT, LABEL_GENERATION, LABEL_HASH,
    LABEL_OWNER, LABEL_PORT, LABEL_PROTOCOL,
};
use crate::engine::{ApiAccess, ConfigFile, Engine};
use crate::fsutil::{remove_dir, write_atomic};
use crate::{keys, ports, usage, DesiredState, InboundSpec, Protocol, RuntimeError};

/// How long a new engine may take to answer on its APIs.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

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
            let generation = observed.containers.iter().find(|c| c.id == container.id).and_then(|c| c.generation);
            if let (Some(p), Some(g)) = (protocol, generation) {
                remove_dir(&env.generation_dir(*p, g))?;
                remove_file(&env.generation_state_path(*p, g))?;
                env.metrics.generation_ended(*p, reason.dropped_sessions());
            } else if let (Some(p), RemoveReason::NotDesired) = (protocol, reason) {
                remove_dir(&env.engine_dir(*p))?;
                remove_dir(&env.staging_dir(*p))?;
            }
            Ok(())
        }
        Op::Create { protocol, replaces, .. } => create(env, desired, observed, *protocol, replaces.as_ref()).await,
        Op::StartGeneration { protocol, generation } => {
            let inbound = inbound(desired, *protocol)?;
            if !observed.routes.contains_key(&inbound.listen_port) {
                // The first generation's route will take the port over: nothing else may listen there.
                ports::ensure_free(*protocol, inbound.listen_port)?;
            }
            start_generation(env, desired, *protocol, *generation).await
        }
        Op::Route { protocol, public_port, container, engine_port } => {
            let (_, api) = find(observed, container)?;
            // Only a generation that answers gets the new connections.
            env.engine.ping(*protocol, api).await?;
            let mut routes = observed.routes.clone();
            if !routes.contains_key(public_port) {
                // The first route takes the port over: nothing else may listen there.
                ports::ensure_free(*protocol, *public_port)?;
            }
            routes.insert(*public_port, *engine_port);
            env.routes.write(&routes).await
        }
        Op::Unroute { public_port } => {
            let mut routes = observed.routes.clone();
            routes.remove(public_port);
            env.routes.write(&routes).await
        }
        Op::AddUsers { container, users, .. } => env.engine.add_users(find(observed, container)?.1, users).await,
        Op::RemoveUsers { container, names, .. } => {
            let api = find(observed, container)?.1;
            final_reading(env, observed, &container.id, Some(names)).await;
            env.engine.remove_users(api, names).await
        }
        Op::Refuse { protocol, container, names } => {
            let (container, api) = find(observed, container)?;
            final_reading(env, observed, &container.id, Some(names)).await;
            // Refuse first (at once), then record it so the plan does not ask again.
            let closed = env.engine.set_refused(api, names, true).await?;
            env.metrics.closed_sessions(*protocol, closed);
            update_state(env, *protocol, container, |s| s.refused.extend(names.iter().cloned()))
        }
        Op::Readmit { protocol, container, names } => {
            let (container, api) = find(observed, container)?;
            env.engine.set_refused(api, names, false).await?;
            update_state(env, *protocol, container, |s| s.refused.retain(|n| !names.contains(n)))
        }
    }
}

/// Starts generation `generation` of `protocol` with the desired users, on a
/// port of its own, and waits until it answers. Nothing running is touched:
/// if it fails, the previous generation goes on serving and the error says why.
async fn start_generation<E: Engine>(
    env: &Env<E>,
    desired: &DesiredState,
    protocol: Protocol,
    generation: u64,
) -> Result<(), RuntimeError> {
    let inbound = inbound(desired, protocol)?;
    env.docker.ensure_image(&env.image).await?;
    let hash = env.engine.config_hash(&env.image, inbound)?;
    let recorded = env.docker.recorded_ports().await?;
    let reserved_api = ports::reserve_loopback(env.engine.api_port_count(protocol), &recorded)?;
    let reserved_port = ports::reserve_generation_port(&recorded)?;
    let engine_port = reserved_port.ports()[0];
    let api = ApiAccess { ports: reserved_api.ports(), secret: keys::random_secret() };
    let dir = env.generation_dir(protocol, generation);
    remove_dir(&dir)?;
    write_files(&dir, env.engine.render(inbound, engine_port, &desired.users, &api)?)?;
    reserved_api.release();
    reserved_port.release();
    let name = env.generation_name(protocol, generation);
    let extra = [(LABEL_GENERATION, generation.to_string()), (LABEL_ENGINE_PORT, engine_port.to_string())];
    let id = env.docker.run(&engine_spec(env, inbound, &hash, &api, name.clone(), &dir, &extra)).await?;
    if let Err(e) = wait_ready(env, protocol, &name, &id, &api).await {
        env.docker.remove(&id).await?;
        remove_dir(&dir)?;
        return Err(e);
    }
    env.metrics.generation_started(protocol);
    let started_at = env.docker.inspect(&id).await?.started_at;
    let live = desired.users.iter().map(|u| (u.name.clone(), u.credential(protocol))).collect();
    let state = LiveState { container_id: id, started_at, live, refused: Default::default() };
    env.write_state(protocol, generation, &state)
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
    let recorded = env.docker.recorded_ports().await?;
    let reserved = ports::reserve_loopback(env.engine.api_port_count(protocol), &recorded)?;
    let api = ApiAccess { ports: reserved.ports(), secret: keys::random_secret() };
    let staging = env.staging_dir(protocol);
    remove_dir(&staging)?;
    write_files(&staging, env.engine.render(inbound, inbound.listen_port, &desired.users, &api)?)?;
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
    reserved.release();
    let name = env.container_name(protocol);
    let id = env.docker.run(&engine_spec(env, inbound, &hash, &api, name.clone(), &dir, &[])).await?;
    if let Err(e) = wait_ready(env, protocol, &name, &id, &api).await {
        env.docker.remove(&id).await?;
        return Err(e);
    }
    env.metrics.container_created(protocol);
    Ok(())
}

/// Writes an engine's rendered files into `dir`.
fn write_files(dir: &Path, files: Vec<ConfigFile>) -> Result<(), RuntimeError> {
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RuntimeError::io("create", parent, e))?;
        }
        write_atomic(&path, &file.contents, file.private)?;
    }
    Ok(())
}

fn engine_spec<E: Engine>(
    env: &Env<E>,
    inbound: &InboundSpec,
    hash: &str,
    api: &ApiAccess,
    name: String,
    dir: &Path,
    extra: &[(&str, String)],
) -> ContainerSpec {
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
        name: Some(name),
        image: env.image.clone(),
        cmd: env.engine.run_args(),
        labels: labels
            .into_iter()
            .chain(extra.iter().cloned())
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>(),
        binds: vec![format!("{}:{}:ro", dir.display(), env.engine.container_dir())],
        network_mode: "host".into(),
        restart: true,
    }
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
    name: &str,
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
                name: name.to_string(),
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
    let generation = container.generation.unwrap_or(0);
    // An earlier op of this plan may have written it already; else start from what was observed.
    let mut state = match env.read_state(protocol, generation) {
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
    env.write_state(protocol, generation, &state)
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
