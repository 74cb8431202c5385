//! The pure half of reconciliation: from the desired inbounds and users and
//! what was observed, the operations that close the gap. No I/O, so every
//! case is a unit test.

use std::collections::BTreeMap;

use super::{EngineUsers, Observed, ObservedContainer};
use crate::engine::UserStrategy;
use crate::{EngineUser, Protocol};

/// One desired inbound, with what the plan compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredInbound {
    pub protocol: Protocol,
    pub listen_port: u16,
    pub config_hash: String,
    pub strategy: UserStrategy,
}

#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub inbounds: &'a [DesiredInbound],
    pub users: &'a [EngineUser],
    /// False while reloads are debounced; refusing removed users still happens at once.
    pub reload_allowed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Labelled as ours but names no protocol (e.g. a check container left by a crash).
    Unknown,
    /// Its protocol is no longer desired on this node.
    NotDesired,
    /// A second container for a protocol that already has one.
    Duplicate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateReason {
    Missing,
    /// The static config hash differs (image, port, keys, TLS material).
    ConfigChanged,
    /// Stopped or crash-looping.
    NotRunning,
}

/// A container being replaced by a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub container: ContainerRef,
    /// Running and listening on the port the new one needs, so the port is ours.
    pub holds_port: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Remove {
        container: ContainerRef,
        protocol: Option<Protocol>,
        reason: RemoveReason,
    },
    /// Create (after validating everything, then removing `replaces`) and start an engine serving the desired users.
    Create {
        protocol: Protocol,
        replaces: Option<Replaced>,
        reason: CreateReason,
    },
    /// Live API: serve these (name, credential) pairs.
    AddUsers {
        protocol: Protocol,
        container: ContainerRef,
        users: Vec<(String, String)>,
    },
    /// Live API: stop serving these users.
    RemoveUsers {
        protocol: Protocol,
        container: ContainerRef,
        names: Vec<String>,
    },
    /// Reload-based: refuse these users now and close their sessions (no reload).
    Refuse {
        protocol: Protocol,
        container: ContainerRef,
        names: Vec<String>,
    },
    /// Reload-based: serve these refused users again (no reload).
    Readmit {
        protocol: Protocol,
        container: ContainerRef,
        names: Vec<String>,
    },
    /// Reload-based: re-render with the desired users, check, reload.
    Reload {
        protocol: Protocol,
        container: ContainerRef,
    },
}

impl Op {
    /// The inbound an op belongs to; `None` for containers of no known protocol.
    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            Op::Remove { protocol, .. } => *protocol,
            Op::Create { protocol, .. }
            | Op::AddUsers { protocol, .. }
            | Op::RemoveUsers { protocol, .. }
            | Op::Refuse { protocol, .. }
            | Op::Readmit { protocol, .. }
            | Op::Reload { protocol, .. } => Some(*protocol),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// A reload is needed but held back by the debounce.
    pub reload_deferred: bool,
}

/// The operations that make `observed` match the desired state, removals first
/// (they free ports), then creations, then user changes.
pub fn plan(input: PlanInput<'_>, observed: &Observed) -> Plan {
    let mut out = Plan::default();
    let mut creates = Vec::new();
    let mut user_ops = Vec::new();
    let mut kept = Vec::new();
    for inbound in input.inbounds {
        let mut candidates: Vec<&ObservedContainer> =
            observed.containers.iter().filter(|c| c.protocol == Some(inbound.protocol)).collect();
        // Keep the best one: current config first, then running, then a stable order.
        candidates.sort_by_key(|c| (c.config_hash != inbound.config_hash, !c.running, c.id.clone()));
        let Some(best) = candidates.first().copied() else {
            creates.push(Op::Create { protocol: inbound.protocol, replaces: None, reason: CreateReason::Missing });
            continue;
        };
        kept.push(best.id.as_str());
        let reason = if best.config_hash != inbound.config_hash {
            Some(CreateReason::ConfigChanged)
        } else if !best.running {
            Some(CreateReason::NotRunning)
        } else {
            None
        };
        match (reason, &best.users) {
            (Some(reason), _) => {
                let holds_port = best.running && best.listen_port == Some(inbound.listen_port);
                let replaces = Some(Replaced { container: container_ref(best), holds_port });
                creates.push(Op::Create { protocol: inbound.protocol, replaces, reason });
            }
            (None, Some(users)) => {
                let desired = input.users.iter().map(|u| (u.name.clone(), u.credential(inbound.protocol))).collect();
                let deferred = user_ops_for(inbound, best, users, &desired, input.reload_allowed, &mut user_ops);
                out.reload_deferred |= deferred;
            }
            // Running with the right config, users unknown: nothing safe to do.
            (None, None) => {}
        }
    }
    for c in &observed.containers {
        if kept.contains(&c.id.as_str()) {
            continue;
        }
        let reason = match c.protocol {
            None => RemoveReason::Unknown,
            Some(p) if input.inbounds.iter().any(|i| i.protocol == p) => RemoveReason::Duplicate,
            Some(_) => RemoveReason::NotDesired,
        };
        out.ops.push(Op::Remove { container: container_ref(c), protocol: c.protocol, reason });
    }
    out.ops.extend(creates);
    // Cutting access first, the cheapest cut first: a live-API removal takes
    // milliseconds, a refusal also rewrites and checks the engine's config.
    user_ops.sort_by_key(|op| match op {
        Op::RemoveUsers { .. } => 0,
        Op::Refuse { .. } => 1,
        _ => 2,
    });
    out.ops.extend(user_ops);
    out
}

/// User operations for one running, current engine; true when a reload was deferred.
fn user_ops_for(
    inbound: &DesiredInbound,
    container: &ObservedContainer,
    engine: &EngineUsers,
    desired: &BTreeMap<String, String>,
    reload_allowed: bool,
    ops: &mut Vec<Op>,
) -> bool {
    let protocol = inbound.protocol;
    let c = || container_ref(container);
    // Users whose credential the engine holds differently (or not at all), and those it should not hold.
    let stale: Vec<String> = engine
        .live
        .iter()
        .filter(|(name, cred)| desired.get(*name) != Some(*cred))
        .map(|(name, _)| name.clone())
        .collect();
    let missing: Vec<(String, String)> = desired
        .iter()
        .filter(|(name, cred)| engine.live.get(*name) != Some(*cred))
        .map(|(n, c)| (n.clone(), c.clone()))
        .collect();
    match inbound.strategy {
        UserStrategy::Live => {
            if !stale.is_empty() {
                ops.push(Op::RemoveUsers { protocol, container: c(), names: stale });
            }
            if !missing.is_empty() {
                ops.push(Op::AddUsers { protocol, container: c(), users: missing });
            }
            false
        }
        UserStrategy::Reload => {
            let refuse: Vec<String> = stale.into_iter().filter(|n| !engine.refused.contains(n)).collect();
            let readmit: Vec<String> = engine
                .refused
                .iter()
                .filter(|n| desired.get(*n).is_some_and(|cred| engine.live.get(*n) == Some(cred)))
                .cloned()
                .collect();
            if !refuse.is_empty() {
                ops.push(Op::Refuse { protocol, container: c(), names: refuse });
            }
            if !readmit.is_empty() {
                ops.push(Op::Readmit { protocol, container: c(), names: readmit });
            }
            match (missing.is_empty(), reload_allowed) {
                (true, _) => false,
                (false, true) => {
                    ops.push(Op::Reload { protocol, container: c() });
                    false
                }
                (false, false) => true,
            }
        }
    }
}

fn container_ref(c: &ObservedContainer) -> ContainerRef {
    ContainerRef { id: c.id.clone(), name: c.name.clone() }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
