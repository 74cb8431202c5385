//! The doing half: applies one planned [`Op`] through Docker, nftables and
//! the engine. A new generation is started and must answer before new
//! connections are routed to it, so a failure leaves the working generation
//! as it was.
//!
//! An op that ends counting sources (forgets users) first takes a final
//! reading of them for traffic accounting (see [`crate::usage`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use super::env::{Env, LiveState};
use super::plan::{ContainerRef, Op};
use super::{Observed, ObservedContainer};
use crate::docker::{
    ContainerSpec, LABEL_API_PORTS, LABEL_API_SECRET, LABEL_ENGINE, LABEL_ENGINE_PORT, LABEL_GENERATION, LABEL_HASH,
    LABEL_OWNER, LABEL_PORT, LABEL_PROTOCOL,
};
use crate::engine::{ApiAccess, ConfigFile, Engine};
use crate::fsutil::{remove_dir, write_atomic};
use crate::nftables::Rules;
use crate::{keys, ports, usage, DesiredState, InboundSpec, Protocol, RuntimeError};

/// How long a new engine may take to answer on its API.
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
            env.docker.remove(&container.id).await?;
            let removed = observed.containers.iter().find(|c| c.id == container.id);
            if let (Some(p), Some(g)) = (protocol, removed.and_then(|c| c.generation)) {
                remove_dir(&env.generation_dir(*p, g))?;
                remove_file(&env.generation_state_path(*p, g))?;
                env.metrics.generation_ended(*p, reason.dropped_sessions());
            }
            if observed.table {
                // Its port is free now: another program may take it, unguarded.
                let mut ports = engine_ports(observed);
                if let Some(port) = removed.and_then(|c| c.engine_port) {
                    ports.remove(&port);
                }
                write_table(env, &env.table.routes().await?.unwrap_or_default(), &ports).await?;
            }
            Ok(())
        }
        Op::StartGeneration { protocol, generation } => {
            let inbound = inbound(desired, *protocol)?;
            if !observed.routes.contains_key(&inbound.listen_port) && !listens_itself(observed, inbound.listen_port) {
                // The first generation's route will take the port over: nothing else may listen there.
                ports::ensure_free(*protocol, inbound.listen_port)?;
            }
            start_generation(env, desired, observed, inbound, *generation).await
        }
        Op::Route { protocol, public_port, container, engine_port } => {
            let (_, api) = find(observed, container)?;
            // Only a generation that answers and accepts gets the new connections.
            env.engine.ping(api).await?;
            accepts(*engine_port).await?;
            // Held before it is routed: nothing else may listen there, now or
            // later. An engine from before generations listens there itself
            // until it drains; the port is held once it is gone.
            if let Err(e) = env.public_ports.take(*protocol, *public_port) {
                if !listens_itself(observed, *public_port) {
                    return Err(e);
                }
            }
            // Read afresh: an earlier op of this pass may have routed another port.
            let mut routes = env.table.routes().await?.unwrap_or_default();
            routes.insert(*public_port, *engine_port);
            write_table(env, &routes, &engine_ports(observed)).await
        }
        Op::Unroute { public_port } => {
            let mut routes = env.table.routes().await?.unwrap_or_default();
            routes.remove(public_port);
            write_table(env, &routes, &engine_ports(observed)).await
        }
        Op::Refuse { protocol, container, names } => {
            let (container, api) = find(observed, container)?;
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
        Op::Forget { names } => forget(env, names).await,
        Op::DeleteTable => {
            env.table.write(None).await?;
            env.public_ports.retain(|_| false);
            Ok(())
        }
    }
}

/// Rewrites the node's nftables table with `routes`, a guard on
/// `engine_ports`, and the accounting rules for its marks.
async fn write_table<E: Engine>(
    env: &Env<E>,
    routes: &BTreeMap<u16, u16>,
    engine_ports: &BTreeSet<u16>,
) -> Result<(), RuntimeError> {
    let prefix = env.marks().prefix;
    env.table.write(Some(Rules { routes, engine_ports, prefix })).await?;
    env.public_ports.retain(|port| routes.contains_key(&port));
    Ok(())
}

/// The ports of the running generations (one from before generations listens on the public port: not guarded).
fn engine_ports(observed: &Observed) -> BTreeSet<u16> {
    observed
        .containers
        .iter()
        .filter(|c| c.running && c.generation.unwrap_or(0) > 0)
        .filter_map(|c| c.engine_port)
        .collect()
}

/// Reads the counts of users no engine holds any more a last time, then
/// deletes them and frees the users' marks (without nftables, the engines'
/// event counts hold their bytes: only the marks go).
async fn forget<E: Engine>(env: &Env<E>, names: &[String]) -> Result<(), RuntimeError> {
    if env.stream.is_some() {
        return env.marks().release(names);
    }
    let prefix = env.marks().prefix;
    let counted = env.table.payload_bytes(prefix).await?;
    let marks: Vec<u32> = names.iter().filter_map(|n| env.marks().mark(n)).collect();
    let last: BTreeMap<u32, u64> = counted.into_iter().filter(|(m, _)| marks.contains(m)).collect();
    env.finals.keep(usage::named(&env.marks(), last), Instant::now());
    env.table.forget(&marks).await?;
    env.marks().release(names)
}

/// Starts generation `generation` of the inbound with the desired users, on
/// a port of its own, and waits until it answers. Nothing running is
/// touched: if it fails, the previous generation goes on serving and the
/// error says why.
async fn start_generation<E: Engine>(
    env: &Env<E>,
    desired: &DesiredState,
    observed: &Observed,
    inbound: &InboundSpec,
    generation: u64,
) -> Result<(), RuntimeError> {
    let protocol = inbound.protocol;
    env.docker.ensure_image(&env.image).await?;
    let hash = env.engine.config_hash(&env.image, inbound)?;
    let recorded = env.docker.recorded_ports().await?;
    let reserved_api = ports::reserve_loopback(env.engine.api_port_count(), &recorded)?;
    // Without nftables the generation listens on the public port itself, beside the previous one.
    let reserved_port = match env.stream {
        None => Some(ports::reserve_generation_port(protocol, &recorded)?),
        Some(_) => None,
    };
    let engine_port = reserved_port.as_ref().map_or(inbound.listen_port, |r| r.ports()[0]);
    env.marks().assign(desired.users.iter().map(|u| u.name.as_str()))?;
    let marks = env.marks().all();
    if env.stream.is_none() {
        // The table counts the marks before the engine sends a packet, and
        // guards its port before it listens.
        let mut guarded = engine_ports(observed);
        guarded.insert(engine_port);
        write_table(env, &env.table.routes().await?.unwrap_or_default(), &guarded).await?;
    }
    let api = ApiAccess { ports: reserved_api.ports(), secret: keys::random_secret() };
    let dir = env.generation_dir(protocol, generation);
    remove_dir(&dir)?;
    write_files(&dir, env.engine.render(inbound, engine_port, &desired.users, &marks, &api)?)?;
    reserved_api.release();
    if let Some(reserved) = reserved_port {
        reserved.release();
    }
    let name = env.generation_name(protocol, generation);
    let extra = [(LABEL_GENERATION, generation.to_string()), (LABEL_ENGINE_PORT, engine_port.to_string())];
    let id = env.docker.run(&engine_spec(env, inbound, &hash, &api, name.clone(), &dir, &extra)).await?;
    if let Err(e) = wait_ready(env, &name, &id, &api).await {
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
    }
}

/// Whether a generation's listener takes connections (its API may answer a moment before).
async fn accepts(port: u16) -> Result<(), RuntimeError> {
    let connect = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port));
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(RuntimeError::io("connect to the new generation at", format!("127.0.0.1:{port}"), e)),
        Err(_) => Err(RuntimeError::io(
            "connect to the new generation at",
            format!("127.0.0.1:{port}"),
            std::io::Error::other("no answer within 2 s"),
        )),
    }
}

/// Polls the engine's APIs until they answer; a container that stops meanwhile fails at once, with its log.
async fn wait_ready<E: Engine>(env: &Env<E>, name: &str, id: &str, api: &ApiAccess) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let Err(last) = env.engine.ping(api).await else { return Ok(()) };
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

/// Whether one of this node's engines listens on the public `port` itself
/// (one from before generations, or any without nftables).
fn listens_itself(observed: &Observed, port: u16) -> bool {
    observed.containers.iter().any(|c| c.running && c.engine_port == Some(port))
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
