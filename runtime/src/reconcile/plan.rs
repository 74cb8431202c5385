//! The pure half of reconciliation: from the desired inbounds and users and
//! what was observed, the operations that close the gap. No I/O, so every
//! case is a unit test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{EngineUsers, Observed, ObservedContainer};
use crate::{EngineUser, Protocol};

/// One desired inbound, with what the plan compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredInbound {
    pub protocol: Protocol,
    pub listen_port: u16,
    pub config_hash: String,
}

/// How long after the next generation took over a previous one with no
/// listed session may go: sing-box lists a connection once its handshake is
/// through, and one accepted just before the route moved may still be in it.
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(5);

/// How long a generation that no longer takes new connections may serve the
/// ones it has, and how many generations may run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPolicy {
    /// Sessions still open this long after the next generation started are cut.
    pub deadline: Duration,
    /// Most generations of one inbound alive at once, the current one included;
    /// the oldest beyond it are cut.
    pub max_generations: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub inbounds: &'a [DesiredInbound],
    pub users: &'a [EngineUser],
    /// nftables hands the public port from one generation to the next. False
    /// without it: each generation listens on the public port itself, and
    /// the next one replaces the previous (cutting its sessions) once it runs.
    pub handoff: bool,
    /// False while new generations are throttled; cutting removed users still happens at once.
    pub generation_allowed: bool,
    pub drain: DrainPolicy,
    /// Unix ms, for drain deadlines.
    pub now_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Labelled as ours but names no protocol (e.g. a check container left by an older vpnd).
    Unknown,
    /// Its protocol is no longer desired on this node.
    NotDesired,
    /// A generation that is not current and not running (crashed, or failed to start).
    NotRunning,
    /// A previous generation whose last session ended.
    Drained,
    /// A previous generation still serving `sessions` at the drain deadline: they are cut.
    DrainDeadline { sessions: usize },
    /// A previous generation beyond the cap on live generations: its `sessions` are cut.
    GenerationCap { sessions: usize },
    /// Without nftables, a previous generation once the next one runs: its `sessions` are cut.
    Replaced { sessions: usize },
}

impl RemoveReason {
    /// Sessions this removal cuts that nobody asked to end (the one documented drop).
    pub fn dropped_sessions(self) -> usize {
        match self {
            RemoveReason::DrainDeadline { sessions }
            | RemoveReason::GenerationCap { sessions }
            | RemoveReason::Replaced { sessions } => sessions,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Remove {
        container: ContainerRef,
        protocol: Option<Protocol>,
        reason: RemoveReason,
    },
    /// Start generation `generation` with the desired users on a port of its
    /// own; the previous one keeps serving meanwhile.
    StartGeneration {
        protocol: Protocol,
        generation: u64,
    },
    /// Hand new connections on `public_port` to this running, current
    /// generation (live sessions stay where they are).
    Route {
        protocol: Protocol,
        public_port: u16,
        container: ContainerRef,
        engine_port: u16,
    },
    /// A public port no desired inbound serves any more: stop redirecting it.
    Unroute {
        public_port: u16,
    },
    /// Refuse these users now and close their sessions, on one generation.
    Refuse {
        protocol: Protocol,
        container: ContainerRef,
        names: Vec<String>,
    },
    /// Serve these refused users again on the current generation.
    Readmit {
        protocol: Protocol,
        container: ContainerRef,
        names: Vec<String>,
    },
    /// Users neither desired nor held by any generation: read their counts a
    /// last time, then free their marks and the kernel's counts.
    Forget {
        names: Vec<String>,
    },
    /// Nothing to serve and nothing to count: delete this node's nftables table.
    DeleteTable,
}

impl Op {
    /// The inbound an op belongs to; `None` for node-wide ops and containers of no known protocol.
    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            Op::Remove { protocol, .. } => *protocol,
            Op::Unroute { .. } | Op::Forget { .. } | Op::DeleteTable => None,
            Op::StartGeneration { protocol, .. }
            | Op::Route { protocol, .. }
            | Op::Refuse { protocol, .. }
            | Op::Readmit { protocol, .. } => Some(*protocol),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// A new generation is needed but held back by the throttle.
    pub generation_deferred: bool,
    /// Previous generations still serve sessions: look again soon.
    pub draining: bool,
}

/// Ops in the order they run: removals free ports, removed users are cut
/// (at once, before anything slower), new engines start, new connections are
/// handed over, drained generations go, and the marks of users no engine
/// holds any more are freed.
#[derive(Default)]
struct Ops {
    removes: Vec<Op>,
    starts: Vec<Op>,
    routes: Vec<Op>,
    users: Vec<Op>,
    drained: Vec<Op>,
}

/// The operations that make `observed` match the desired state.
pub fn plan(input: PlanInput<'_>, observed: &Observed) -> Plan {
    let mut out = Plan::default();
    let mut ops = Ops::default();
    let mut kept = Vec::new();
    for inbound in input.inbounds {
        let desired = input.users.iter().map(|u| (u.name.clone(), u.credential(inbound.protocol))).collect();
        let gens: Vec<&ObservedContainer> =
            observed.containers.iter().filter(|c| c.protocol == Some(inbound.protocol)).collect();
        kept.extend(gens.iter().map(|c| c.id.as_str()));
        plan_inbound(inbound, gens, &desired, input, observed, &mut out, &mut ops);
    }
    for c in observed.containers.iter().filter(|c| !kept.contains(&c.id.as_str())) {
        let reason = if c.protocol.is_some() { RemoveReason::NotDesired } else { RemoveReason::Unknown };
        ops.removes.push(Op::Remove { container: container_ref(c), protocol: c.protocol, reason });
    }
    let public: Vec<u16> = input.inbounds.iter().map(|i| i.listen_port).collect();
    for &public_port in observed.routes.keys().filter(|p| !public.contains(p)) {
        ops.routes.push(Op::Unroute { public_port });
    }
    // A user keeps their mark while an engine holds them or one is to serve them.
    let served = if input.inbounds.is_empty() { &[][..] } else { input.users };
    let held: BTreeSet<&str> = observed
        .containers
        .iter()
        .filter_map(|c| c.users.as_ref())
        .flat_map(|u| u.live.keys().map(String::as_str))
        .chain(served.iter().map(|u| u.name.as_str()))
        .collect();
    let forget: Vec<String> = observed.marked.iter().filter(|n| !held.contains(n.as_str())).cloned().collect();
    let mut last = Vec::new();
    if !forget.is_empty() {
        last.push(Op::Forget { names: forget });
    } else if observed.table
        && input.inbounds.is_empty()
        && observed.containers.is_empty()
        && observed.marked.is_empty()
    {
        last.push(Op::DeleteTable);
    }
    out.ops = [ops.removes, ops.users, ops.starts, ops.routes, ops.drained, last].concat();
    out
}

/// One inbound, served by generations: the newest running generation with
/// the current config takes new connections; one that lacks a desired user
/// is followed by the next generation; previous ones serve their sessions
/// until they end (or the drain policy cuts them); a removed user is cut on all.
#[allow(clippy::too_many_arguments)]
fn plan_inbound(
    inbound: &DesiredInbound,
    mut gens: Vec<&ObservedContainer>,
    desired: &BTreeMap<String, String>,
    input: PlanInput<'_>,
    observed: &Observed,
    out: &mut Plan,
    ops: &mut Ops,
) {
    let protocol = inbound.protocol;
    let number = |c: &ObservedContainer| c.generation.unwrap_or(0);
    gens.sort_by_key(|c| (number(c), c.id.clone()));
    let next_generation = gens.last().map_or(1, |c| number(c) + 1);
    let routed_to = observed.routes.get(&inbound.listen_port).copied();
    let current =
        gens.iter().rev().copied().find(|c| {
            c.running && c.config_hash == inbound.config_hash && c.users.is_some() && c.engine_port.is_some()
        });
    match current {
        None => ops.starts.push(Op::StartGeneration { protocol, generation: next_generation }),
        Some(c) => {
            let engine_port = c.engine_port.unwrap_or_default();
            if input.handoff && routed_to != Some(engine_port) {
                let container = container_ref(c);
                ops.routes.push(Op::Route { protocol, public_port: inbound.listen_port, container, engine_port });
            }
            if let Some(engine) = &c.users {
                let (stale, missing) = differences(engine, desired);
                // A removed user is refused at once, and the next generation leaves them out
                // (their credentials leave the config, their mark can be freed).
                let changed = !missing.is_empty() || !stale.is_empty();
                refuse(protocol, c, engine, stale, &mut ops.users);
                let readmit: Vec<String> = engine
                    .refused
                    .iter()
                    .filter(|n| desired.get(*n).is_some_and(|cred| engine.live.get(*n) == Some(cred)))
                    .cloned()
                    .collect();
                if !readmit.is_empty() {
                    ops.users.push(Op::Readmit { protocol, container: container_ref(c), names: readmit });
                }
                if changed {
                    if input.generation_allowed {
                        ops.starts.push(Op::StartGeneration { protocol, generation: next_generation });
                    } else {
                        out.generation_deferred = true;
                    }
                }
            }
        }
    }
    let current_id = current.map(|c| c.id.as_str());
    let mut draining = Vec::new();
    for (i, g) in gens.iter().enumerate() {
        if Some(g.id.as_str()) == current_id {
            continue;
        }
        let remove = |reason| Op::Remove { container: container_ref(g), protocol: Some(protocol), reason };
        if !g.running {
            ops.removes.push(remove(RemoveReason::NotRunning));
            continue;
        }
        if let Some(engine) = &g.users {
            let (stale, _) = differences(engine, desired);
            refuse(protocol, g, engine, stale, &mut ops.users);
        }
        // Still the one new connections reach (until the route moves), or a
        // newer one starting up: not draining yet.
        if routed_to.is_some() && routed_to == g.engine_port || current.is_none_or(|c| number(g) > number(c)) {
            continue;
        }
        if !input.handoff {
            // It shares the public port with the current one: it goes, with its sessions.
            ops.drained.push(remove(RemoveReason::Replaced { sessions: g.sessions.unwrap_or(0) }));
            continue;
        }
        // Its drain began when the generation after it was created.
        let successor_created = gens[i + 1..].iter().find_map(|n| n.created_ms);
        let deadline = successor_created.map(|t| t.saturating_add(millis(input.drain.deadline)));
        // A connection accepted just before the route moved is listed only once its
        // handshake is through: "no session" counts only after this grace.
        let settled = successor_created.is_some_and(|t| input.now_ms >= t.saturating_add(millis(HANDSHAKE_GRACE)));
        match g.sessions {
            Some(0) if settled => ops.drained.push(remove(RemoveReason::Drained)),
            sessions if deadline.is_some_and(|d| input.now_ms >= d) => {
                ops.drained.push(remove(RemoveReason::DrainDeadline { sessions: sessions.unwrap_or(0) }));
            }
            _ => draining.push(*g),
        }
    }
    // The current generation counts against the cap; the oldest go first.
    let over = (draining.len() + 1).saturating_sub(input.drain.max_generations.max(1));
    for g in draining.drain(..over) {
        let reason = RemoveReason::GenerationCap { sessions: g.sessions.unwrap_or(0) };
        ops.drained.push(Op::Remove { container: container_ref(g), protocol: Some(protocol), reason });
    }
    out.draining |= !draining.is_empty();
}

/// Refuses, on generation `c`, the users in `stale` it does not refuse yet.
fn refuse(protocol: Protocol, c: &ObservedContainer, engine: &EngineUsers, stale: Vec<String>, ops: &mut Vec<Op>) {
    let names: Vec<String> = stale.into_iter().filter(|n| !engine.refused.contains(n)).collect();
    if !names.is_empty() {
        ops.push(Op::Refuse { protocol, container: container_ref(c), names });
    }
}

/// The users an engine holds that it should not (or with another
/// credential), and the desired (name, credential) pairs it does not hold.
fn differences(engine: &EngineUsers, desired: &BTreeMap<String, String>) -> (Vec<String>, Vec<(String, String)>) {
    let stale = engine
        .live
        .iter()
        .filter(|(name, cred)| desired.get(*name) != Some(*cred))
        .map(|(name, _)| name.clone())
        .collect();
    let missing = desired
        .iter()
        .filter(|(name, cred)| engine.live.get(*name) != Some(*cred))
        .map(|(n, c)| (n.clone(), c.clone()))
        .collect();
    (stale, missing)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn container_ref(c: &ObservedContainer) -> ContainerRef {
    ContainerRef { id: c.id.clone(), name: c.name.clone() }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
