//! Commands replicated through the log, their responses, and the pure,
//! deterministic function that applies one to the state.
//!
//! Anything time-dependent carries the proposer's clock (`at_ms`): `apply`
//! never reads a clock, so every replica reaches the same state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{DataplaneNode, Limits, MemberRecord, NodeHealth, Placement, Schedule, User, UserStatus};
use crate::state::State;
use crate::types::NodeId;

/// A write, fully formed by the proposer (ids, keys and timestamps included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateUser(User),
    /// Changes the fields that are set, then re-evaluates the status at
    /// `at_ms`. Enabling a user whose limits still hold it back is refused.
    UpdateUser {
        name: String,
        status: Option<UserStatus>,
        #[serde(default)]
        limits: LimitsChange,
        #[serde(default)]
        at_ms: i64,
    },
    DeleteUser {
        name: String,
    },
    /// Starts a new accounting period at `at_ms` (used bytes back to zero).
    ResetTraffic {
        name: String,
        at_ms: i64,
    },
    /// Replaces the user's subscription token (the old one stops working).
    RotateToken {
        name: String,
        token: String,
    },
    /// Re-evaluates these users at `at_ms`: a period that ended is reset,
    /// then expiry and the data limit decide the status. The leader's
    /// lifecycle loop proposes it for the users whose status is due to change.
    Reevaluate {
        names: Vec<String>,
        at_ms: i64,
    },
    /// The scheduler's moves. Moves naming a user or node that is gone are skipped.
    Place(Vec<Move>),
    /// Records the data-dir identity of a member; the first record for an id wins.
    RegisterMember(MemberRecord),
    /// Forgets a removed member's identity (so its id may be used again on
    /// purpose), its data-plane record, and every placement on it.
    ForgetMember {
        id: NodeId,
    },
    /// Records what a data-plane node offers (upsert). Health, maintenance,
    /// applied generation and traffic sequence of a known node are kept.
    RegisterDataplaneNode(DataplaneNode),
    /// A data-plane node's engines applied the state up to `generation`.
    ReportApplied {
        node: NodeId,
        generation: u64,
    },
    /// The leader's judgement of a node's liveness, written only on change.
    SetNodeHealth {
        node: NodeId,
        health: NodeHealth,
        #[serde(default)]
        engine_error: Option<String>,
    },
    /// Cordon, drain or uncordon a node.
    SetNodeSchedule {
        node: NodeId,
        schedule: Schedule,
    },
    /// Per-user traffic a node measured. Reports with a sequence number at or
    /// below the node's last applied one are duplicates and skipped, so a
    /// retry after a crash or a leader change never counts twice.
    RecordTraffic {
        node: NodeId,
        reports: Vec<TrafficReport>,
        #[serde(default)]
        at_ms: i64,
    },
    /// Several independent proposals in one log entry (see `proposer`): each
    /// is applied in order, as if it had its own entry.
    Batch(Vec<Command>),
    /// Join tokens and issued node ids (see `trust`).
    Trust(crate::trust::TrustCommand),
    /// Roles, bindings and API tokens (see `access`).
    Access(crate::access::AccessCommand),
    /// A change an API call asked for, with its audit record: both are
    /// written by the same entry, so neither exists without the other.
    Audited {
        audit: crate::access::AuditContext,
        command: Box<Command>,
    },
}

/// Limit fields to change; `None` keeps the current value (0 means "none").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsChange {
    pub expires_at_ms: Option<i64>,
    pub data_limit_bytes: Option<u64>,
    pub reset: Option<crate::model::ResetPeriod>,
}

impl LimitsChange {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn apply_to(&self, limits: &mut Limits) {
        if let Some(v) = self.expires_at_ms {
            limits.expires_at_ms = v;
        }
        if let Some(v) = self.data_limit_bytes {
            limits.data_limit_bytes = v;
        }
        if let Some(v) = self.reset {
            limits.reset = v;
        }
    }
}

/// One scheduler move for one user: placements to add, then to remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub user: String,
    pub add: Vec<NodeId>,
    pub remove: Vec<NodeId>,
}

/// The traffic a node measured between two reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficReport {
    pub seq: u64,
    pub usage: Vec<UserUsage>,
}

/// Bytes (up + down) one user moved. The id guards against a user that was
/// deleted and created again under the same name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    pub name: String,
    pub id: Uuid,
    pub bytes: u64,
}

/// The result of applying a [`Command`]. Refusals are results, not errors: the
/// entry is committed either way and every replica refuses it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    User(User),
    Deleted,
    MemberRegistered,
    MemberForgotten,
    DataplaneNode(DataplaneNode),
    AppliedRecorded,
    /// Moves applied (those naming a gone user or node are not counted).
    Placed(usize),
    /// Reports up to this sequence number are recorded for the node.
    TrafficRecorded {
        through_seq: u64,
    },
    /// Users whose status changed.
    Reevaluated(usize),
    Refused(Refusal),
    /// The response of a blank or membership entry.
    None,
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResponse>),
    /// A join token as created or revoked.
    JoinToken(crate::trust::JoinToken),
    /// A token use was spent: sign the node's certificate for this role.
    JoinTokenRedeemed(crate::trust::JoinRole),
    /// A role as created, changed or deleted.
    Role(crate::access::RoleView),
    /// An API token as created or revoked.
    ApiToken(crate::access::ApiToken),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} not found")]
    UserNotFound(String),
    /// Tokens are drawn at random (256 bits), so only a replayed or forged
    /// command meets this; refusing it keeps every replica's token index
    /// (one user per token) the same.
    #[error("the subscription token drawn for user {0:?} is another user's: try again (each try draws a new one)")]
    TokenInUse(String),
    #[error("node id {id} already belongs to another data dir (incarnation {existing}): run `vpnctl member remove {id}`, then start the node under a new --id")]
    IncarnationConflict { id: NodeId, existing: uuid::Uuid },
    #[error("node {0} is not registered as a data-plane node: start it with --dataplane")]
    NotADataplaneNode(NodeId),
    #[error("user {name:?} expired at its expiry date: give a later one (vpnctl user enable {name} --expires 30d)")]
    StillExpired { name: String },
    #[error("user {name:?} has used its data limit: reset its traffic (vpnctl user reset-traffic {name}) or raise --data-limit")]
    StillLimited { name: String },
    #[error("join token {0:?} not found: see `vpnctl join-token list`")]
    JoinTokenNotFound(String),
    #[error("the join token is unknown, revoked, expired or used up: create another (vpnctl join-token create)")]
    JoinTokenRefused,
    #[error("node id {0} is or was in use: ids are never issued twice; start the node under a new --id")]
    NodeIdTaken(NodeId),
    #[error("role {0:?} already exists: see `vpnctl role list`")]
    RoleExists(String),
    #[error("role {0:?} not found: see `vpnctl role list`")]
    RoleNotFound(String),
    #[error("role {0:?} is built in: built-in roles cannot be deleted or changed; make a custom role instead")]
    BuiltinRole(String),
    #[error("role {role:?} is the role of API tokens {tokens:?}: revoke them first (vpnctl token revoke NAME)")]
    RoleInUse { role: String, tokens: Vec<String> },
    #[error("{subject} is not bound to role {role:?}: see `vpnctl role show {role}`")]
    NotBound { role: String, subject: String },
    #[error("API token {0:?} already exists: pick another name, or revoke it first")]
    ApiTokenExists(String),
    #[error("API token {0:?} not found: see `vpnctl token list`")]
    ApiTokenNotFound(String),
    #[error("the certificate principal \"admin\" is always an admin: it is how whoever holds the CA key recovers (see SECURITY.md); protect the CA key and the admin certificate instead")]
    BreakGlass,
}

/// Applies one command. Pure: the outcome depends only on `state` and `cmd`.
/// Every change to what a data-plane node should serve (users that are
/// active, credentials, placements, node offers) bumps the generation.
pub fn apply(state: &mut State, cmd: &Command) -> CommandResponse {
    match cmd {
        Command::CreateUser(user) => {
            if state.users.contains_key(&user.name) {
                return CommandResponse::Refused(Refusal::UserExists(user.name.clone()));
            }
            if !state.index_token(user) {
                return CommandResponse::Refused(Refusal::TokenInUse(user.name.clone()));
            }
            state.users.insert(user.name.clone(), user.clone());
            next_generation(state, user.placed_nodes());
            CommandResponse::User(user.clone())
        }
        Command::UpdateUser { name, status, limits, at_ms } => {
            let Some(user) = state.users.get_mut(name) else {
                return CommandResponse::Refused(Refusal::UserNotFound(name.clone()));
            };
            let mut next = user.clone();
            limits.apply_to(&mut next.limits);
            match status {
                Some(UserStatus::Disabled) => next.status = UserStatus::Disabled,
                // Enabling asks for Active; the limits may still say otherwise.
                Some(_) => {
                    next.status = UserStatus::Active;
                    match next.status_at(*at_ms) {
                        UserStatus::Expired => {
                            return CommandResponse::Refused(Refusal::StillExpired { name: name.clone() })
                        }
                        UserStatus::Limited => {
                            return CommandResponse::Refused(Refusal::StillLimited { name: name.clone() })
                        }
                        _ => {}
                    }
                }
                None => next.status = next.status_at(*at_ms),
            }
            let served_before = user.status == UserStatus::Active;
            let changed_service = served_before != (next.status == UserStatus::Active);
            *user = next;
            let reply = CommandResponse::User(user.clone());
            if changed_service {
                let nodes: Vec<NodeId> = user.placed_nodes().collect();
                next_generation(state, nodes);
            }
            reply
        }
        Command::DeleteUser { name } => match state.users.remove(name) {
            None => CommandResponse::Refused(Refusal::UserNotFound(name.clone())),
            Some(removed) => {
                state.unindex_token(&removed.sub_token);
                next_generation(state, removed.placed_nodes());
                CommandResponse::Deleted
            }
        },
        Command::ResetTraffic { name, at_ms } => {
            let Some(user) = state.users.get_mut(name) else {
                return CommandResponse::Refused(Refusal::UserNotFound(name.clone()));
            };
            user.used_bytes = 0;
            user.period_start_ms = *at_ms;
            let changed = settle_status(user, *at_ms);
            let reply = CommandResponse::User(user.clone());
            if changed {
                let nodes: Vec<NodeId> = user.placed_nodes().collect();
                next_generation(state, nodes);
            }
            reply
        }
        Command::RotateToken { name, token } => {
            let Some(mut user) = state.users.get(name).cloned() else {
                return CommandResponse::Refused(Refusal::UserNotFound(name.clone()));
            };
            let old = std::mem::replace(&mut user.sub_token, token.clone());
            if !state.index_token(&user) {
                return CommandResponse::Refused(Refusal::TokenInUse(name.clone()));
            }
            if old != *token {
                state.unindex_token(&old);
            }
            state.users.insert(name.clone(), user.clone());
            CommandResponse::User(user)
        }
        Command::Reevaluate { names, at_ms } => {
            let (mut changed, mut nodes) = (0, Vec::new());
            for name in names {
                let Some(user) = state.users.get_mut(name) else { continue };
                if roll_period(user, *at_ms) {
                    user.used_bytes = 0;
                }
                if settle_status(user, *at_ms) {
                    changed += 1;
                    nodes.extend(user.placed_nodes());
                }
            }
            if changed > 0 {
                next_generation(state, nodes);
            }
            CommandResponse::Reevaluated(changed)
        }
        Command::Place(moves) => {
            let (mut placed, mut nodes) = (0, Vec::new());
            let since_generation = state.generation + 1;
            for m in moves {
                let Some(user) = state.users.get_mut(&m.user) else { continue };
                let before = user.placements.clone();
                for node in &m.add {
                    if state.dataplane_nodes.contains_key(node) && !user.placed_on(*node) {
                        user.placements.push(Placement { node: *node, since_generation });
                    }
                }
                user.placements.retain(|p| !m.remove.contains(&p.node));
                if user.placements != before {
                    placed += 1;
                    // Only an active user is served: another one moves nobody's engines.
                    if user.status == UserStatus::Active {
                        let (now, was) = (&user.placements, &before);
                        nodes.extend(was.iter().filter(|p| !user.placed_on(p.node)).map(|p| p.node));
                        nodes.extend(now.iter().filter(|p| !was.iter().any(|b| b.node == p.node)).map(|p| p.node));
                    }
                }
            }
            if placed > 0 {
                next_generation(state, nodes);
            }
            CommandResponse::Placed(placed)
        }
        Command::RegisterMember(record) => match state.members.get(&record.id) {
            Some(existing) if existing.incarnation != record.incarnation => {
                CommandResponse::Refused(Refusal::IncarnationConflict { id: record.id, existing: existing.incarnation })
            }
            known => {
                // A data-plane agent registers no address: keep the one a
                // control-plane node registered for itself.
                let mut record = record.clone();
                if record.addr.is_empty() {
                    record.addr = known.map(|k| k.addr.clone()).unwrap_or_default();
                }
                state.members.insert(record.id, record);
                CommandResponse::MemberRegistered
            }
        },
        Command::ForgetMember { id } => {
            state.members.remove(id);
            if state.dataplane_nodes.remove(id).is_some() {
                for user in state.users.values_mut() {
                    user.placements.retain(|p| p.node != *id);
                }
                // The node is gone: no one else's assignment moves.
                next_generation(state, []);
            }
            CommandResponse::MemberForgotten
        }
        Command::RegisterDataplaneNode(offer) => {
            let mut node = offer.clone();
            match state.dataplane_nodes.get(&offer.id) {
                Some(known) if known.same_offer(offer) => return CommandResponse::DataplaneNode(known.clone()),
                Some(known) => {
                    node.applied_generation = known.applied_generation;
                    node.health = known.health;
                    node.schedule = known.schedule;
                    node.traffic_seq = known.traffic_seq;
                    node.engine_error = known.engine_error.clone();
                }
                None => {
                    node.applied_generation = 0;
                    node.traffic_seq = 0;
                }
            }
            let id = node.id;
            state.dataplane_nodes.insert(id, node);
            next_generation(state, [id]);
            CommandResponse::DataplaneNode(state.dataplane_nodes[&id].clone())
        }
        Command::ReportApplied { node, generation } => match state.dataplane_nodes.get_mut(node) {
            None => CommandResponse::Refused(Refusal::NotADataplaneNode(*node)),
            Some(record) => {
                // Reports may arrive out of order (retries); never go back.
                record.applied_generation = record.applied_generation.max(*generation);
                CommandResponse::AppliedRecorded
            }
        },
        Command::SetNodeHealth { node, health, engine_error } => match state.dataplane_nodes.get_mut(node) {
            None => CommandResponse::Refused(Refusal::NotADataplaneNode(*node)),
            Some(record) => {
                record.health = *health;
                record.engine_error = engine_error.clone();
                CommandResponse::DataplaneNode(record.clone())
            }
        },
        Command::SetNodeSchedule { node, schedule } => match state.dataplane_nodes.get_mut(node) {
            None => CommandResponse::Refused(Refusal::NotADataplaneNode(*node)),
            Some(record) => {
                record.schedule = *schedule;
                CommandResponse::DataplaneNode(record.clone())
            }
        },
        Command::RecordTraffic { node, reports, at_ms } => record_traffic(state, *node, reports, *at_ms),
        Command::Batch(cmds) => CommandResponse::Batch(cmds.iter().map(|c| apply(state, c)).collect()),
        Command::Trust(cmd) => crate::trust::apply(state, cmd),
        Command::Access(cmd) => crate::access::apply(state, cmd),
        Command::Audited { audit, command } => {
            let response = apply(state, command);
            state.audit.record(audit, &response);
            response
        }
    }
}

/// A change to what some data-plane node serves: the next generation, with
/// which `nodes`' assignments are stamped (what each of them should serve
/// changed in this command).
fn next_generation(state: &mut State, nodes: impl IntoIterator<Item = NodeId>) {
    state.generation += 1;
    let generation = state.generation;
    for node in nodes {
        if let Some(record) = state.dataplane_nodes.get_mut(&node) {
            record.assigned_generation = generation;
        }
    }
}

/// Moves the user's period start past every reset period that ended by
/// `at_ms` (calendar periods, so a reset is due on the same day each month);
/// returns whether any ended.
fn roll_period(user: &mut User, at_ms: i64) -> bool {
    /// Beyond this many missed periods, start a fresh one at `at_ms`.
    const MAX_CATCH_UP: usize = 1000;
    let mut rolled = false;
    for _ in 0..MAX_CATCH_UP {
        match user.limits.reset.period_end_ms(user.period_start_ms) {
            Some(end) if end <= at_ms && end > user.period_start_ms => {
                user.period_start_ms = end;
                rolled = true;
            }
            _ => return rolled,
        }
    }
    user.period_start_ms = at_ms;
    true
}

/// Moves an automatic status (active, limited, expired) to what the limits
/// say at `at_ms`; an operator's `Disabled` stays. Returns whether the user
/// started or stopped being served.
fn settle_status(user: &mut User, at_ms: i64) -> bool {
    let next = user.status_at(at_ms);
    let changed = (user.status == UserStatus::Active) != (next == UserStatus::Active);
    user.status = next;
    changed
}

fn record_traffic(state: &mut State, node: NodeId, reports: &[TrafficReport], at_ms: i64) -> CommandResponse {
    let Some(record) = state.dataplane_nodes.get_mut(&node) else {
        return CommandResponse::Refused(Refusal::NotADataplaneNode(node));
    };
    let mut through = record.traffic_seq;
    let (mut served_changed, mut reassigned) = (false, Vec::new());
    for report in reports {
        if report.seq <= through {
            continue;
        }
        through = report.seq;
        for usage in &report.usage {
            match state.users.get_mut(&usage.name) {
                Some(user) if user.id == usage.id => {
                    user.used_bytes = user.used_bytes.saturating_add(usage.bytes);
                    if user.status == UserStatus::Active && settle_status(user, at_ms) {
                        served_changed = true;
                        reassigned.extend(user.placed_nodes());
                    }
                }
                // Traffic of a deleted user counts for no one.
                _ => {}
            }
        }
    }
    if let Some(record) = state.dataplane_nodes.get_mut(&node) {
        record.traffic_seq = through;
    }
    if served_changed {
        next_generation(state, reassigned);
    }
    CommandResponse::TrafficRecorded { through_seq: through }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InboundRecord, Protocol};
    use uuid::Uuid;

    fn node(id: NodeId, port: u16) -> DataplaneNode {
        DataplaneNode::new(id, format!("node{id}.example.com"), vec![InboundRecord::new(Protocol::VlessTls, port)])
    }

    fn set_status(name: &str, status: UserStatus) -> Command {
        Command::UpdateUser { name: name.into(), status: Some(status), limits: LimitsChange::default(), at_ms: 0 }
    }

    fn apply_all(state: &mut State, cmds: &[Command]) -> Vec<CommandResponse> {
        cmds.iter().map(|c| apply(state, c)).collect()
    }

    #[test]
    fn user_changes_bump_the_generation_and_refusals_do_not() {
        let mut state = State::default();
        let alice = User::new("alice".into(), 0);
        apply_all(&mut state, &[Command::CreateUser(alice.clone())]);
        assert_eq!(state.generation, 1);
        apply_all(
            &mut state,
            &[
                Command::CreateUser(alice),
                set_status("alice", UserStatus::Active),
                Command::UpdateUser { name: "alice".into(), status: None, limits: LimitsChange::default(), at_ms: 0 },
                Command::DeleteUser { name: "bob".into() },
            ],
        );
        assert_eq!(state.generation, 1, "refusals and no-op updates change nothing");
        apply_all(&mut state, &[set_status("alice", UserStatus::Disabled)]);
        assert_eq!(state.generation, 2);
        apply_all(&mut state, &[Command::DeleteUser { name: "alice".into() }]);
        assert_eq!(state.generation, 3);
    }

    #[test]
    fn registering_upserts_and_keeps_the_applied_generation() {
        let mut state = State::default();
        let recorded = CommandResponse::DataplaneNode(DataplaneNode { assigned_generation: 1, ..node(4, 443) });
        assert_eq!(apply(&mut state, &Command::RegisterDataplaneNode(node(4, 443))), recorded);
        assert_eq!(state.generation, 1);
        assert_eq!(
            apply(&mut state, &Command::ReportApplied { node: 4, generation: 1 }),
            CommandResponse::AppliedRecorded
        );
        assert_eq!(state.generation, 1, "a report changes nothing a node serves");

        // The same offer again (a restarted agent) is a no-op.
        let mut again = node(4, 443);
        again.applied_generation = 0;
        apply(&mut state, &Command::RegisterDataplaneNode(again));
        assert_eq!(state.generation, 1);
        assert_eq!(state.dataplane_nodes[&4].applied_generation, 1);

        // A changed offer bumps the generation and keeps the applied one.
        apply(&mut state, &Command::RegisterDataplaneNode(node(4, 8443)));
        assert_eq!(state.generation, 2);
        assert_eq!(state.dataplane_nodes[&4].inbounds[0].port, 8443);
        assert_eq!(state.dataplane_nodes[&4].applied_generation, 1);
    }

    #[test]
    fn reports_never_go_back_and_need_a_registered_node() {
        let mut state = State::default();
        assert_eq!(
            apply(&mut state, &Command::ReportApplied { node: 9, generation: 3 }),
            CommandResponse::Refused(Refusal::NotADataplaneNode(9))
        );
        apply(&mut state, &Command::RegisterDataplaneNode(node(9, 443)));
        apply(&mut state, &Command::ReportApplied { node: 9, generation: 5 });
        apply(&mut state, &Command::ReportApplied { node: 9, generation: 2 });
        assert_eq!(state.dataplane_nodes[&9].applied_generation, 5);
    }

    #[test]
    fn a_batch_applies_like_its_commands_one_by_one() {
        let cmds = vec![
            Command::CreateUser(User::new("ann".into(), 1)),
            Command::CreateUser(User::new("ann".into(), 2)),
            set_status("ann", UserStatus::Disabled),
            Command::DeleteUser { name: "zed".into() },
        ];
        let (mut one_by_one, mut batched) = (State::default(), State::default());
        let expected = apply_all(&mut one_by_one, &cmds);
        assert_eq!(apply(&mut batched, &Command::Batch(cmds)), CommandResponse::Batch(expected));
        assert_eq!(batched, one_by_one);
    }

    #[test]
    fn forgetting_a_member_drops_its_dataplane_record() {
        let mut state = State::default();
        apply(&mut state, &Command::RegisterDataplaneNode(node(5, 443)));
        apply(&mut state, &Command::ForgetMember { id: 5 });
        assert!(state.dataplane_nodes.is_empty());
        assert_eq!(state.generation, 2);
        apply(&mut state, &Command::ForgetMember { id: 5 });
        assert_eq!(state.generation, 2);
    }

    #[test]
    fn a_node_is_reassigned_only_by_changes_to_what_it_serves() {
        let mut state = State::default();
        apply_all(
            &mut state,
            &[Command::RegisterDataplaneNode(node(4, 443)), Command::RegisterDataplaneNode(node(5, 443))],
        );
        let assigned = |state: &State| {
            (state.dataplane_nodes[&4].assigned_generation, state.dataplane_nodes[&5].assigned_generation)
        };
        let (four, five) = assigned(&state);
        apply(&mut state, &Command::CreateUser(User::new("alice".into(), 0)));
        assert_eq!(assigned(&state), (four, five), "an unplaced user moves no node");
        apply(&mut state, &Command::Place(vec![Move { user: "alice".into(), add: vec![4], remove: vec![] }]));
        assert_eq!(assigned(&state), (state.generation, five), "placed on 4 only");
        apply(&mut state, &set_status("alice", UserStatus::Disabled));
        assert_eq!(assigned(&state), (state.generation, five), "disabled: 4 stops serving her");
        let disabled_at = state.generation;
        apply(&mut state, &Command::Place(vec![Move { user: "alice".into(), add: vec![5], remove: vec![4] }]));
        assert_eq!(assigned(&state), (disabled_at, five), "moving a user nobody serves moves no engine");
        apply(&mut state, &set_status("alice", UserStatus::Active));
        assert_eq!(assigned(&state), (disabled_at, state.generation), "active again, on 5");
        apply(&mut state, &Command::DeleteUser { name: "alice".into() });
        assert_eq!(assigned(&state).1, state.generation, "deleted: 5 drops her");
        assert!(state.dataplane_nodes.values().all(|n| n.assigned_generation <= state.generation));
    }

    fn traffic(node: NodeId, seq: u64, user: &User, bytes: u64) -> Command {
        let usage = vec![UserUsage { name: user.name.clone(), id: user.id, bytes }];
        Command::RecordTraffic { node, reports: vec![TrafficReport { seq, usage }], at_ms: 0 }
    }

    #[test]
    fn traffic_counts_once_per_node_and_sequence_and_a_limit_takes_effect() {
        let mut state = State::default();
        let mut bob = User::new("bob".into(), 0);
        bob.limits.data_limit_bytes = 100;
        apply_all(&mut state, &[Command::RegisterDataplaneNode(node(4, 443)), Command::CreateUser(bob.clone())]);
        let generation = state.generation;
        assert_eq!(apply(&mut state, &traffic(4, 1, &bob, 60)), CommandResponse::TrafficRecorded { through_seq: 1 });
        assert_eq!(apply(&mut state, &traffic(4, 1, &bob, 60)), CommandResponse::TrafficRecorded { through_seq: 1 });
        assert_eq!(state.users["bob"].used_bytes, 60, "a retried report counts once");
        assert_eq!(state.generation, generation, "usage alone changes nothing a node serves");
        apply(&mut state, &traffic(4, 2, &bob, 40));
        assert_eq!((state.users["bob"].used_bytes, state.users["bob"].status), (100, UserStatus::Limited));
        assert_eq!(state.generation, generation + 1, "a limited user stops being served");
        // A report for an earlier user of the same name counts for no one.
        let old = User { id: Uuid::from_u128(7), ..bob.clone() };
        apply(&mut state, &traffic(4, 3, &old, 1000));
        assert_eq!(state.users["bob"].used_bytes, 100);
        assert_eq!(state.dataplane_nodes[&4].traffic_seq, 3);
    }

    #[test]
    fn enabling_needs_the_limits_to_allow_it_and_a_reset_restores_a_limited_user() {
        let mut state = State::default();
        let mut bob = User::new("bob".into(), 0);
        bob.limits = Limits { expires_at_ms: 1000, data_limit_bytes: 10, ..Limits::default() };
        bob.used_bytes = 50;
        apply(&mut state, &Command::CreateUser(bob));
        let at =
            |at_ms, limits| Command::UpdateUser { name: "bob".into(), status: Some(UserStatus::Active), limits, at_ms };
        assert!(matches!(
            apply(&mut state, &at(2000, LimitsChange::default())),
            CommandResponse::Refused(Refusal::StillExpired { .. })
        ));
        let later = LimitsChange { expires_at_ms: Some(5000), ..LimitsChange::default() };
        assert!(matches!(apply(&mut state, &at(2000, later)), CommandResponse::Refused(Refusal::StillLimited { .. })));
        assert_eq!(state.users["bob"].limits.expires_at_ms, 1000, "a refused update changes nothing");
        apply(&mut state, &Command::ResetTraffic { name: "bob".into(), at_ms: 500 });
        assert_eq!((state.users["bob"].used_bytes, state.users["bob"].status), (0, UserStatus::Active));
        apply(&mut state, &Command::Reevaluate { names: vec!["bob".into()], at_ms: 1000 });
        assert_eq!(state.users["bob"].status, UserStatus::Expired);
        assert!(
            matches!(apply(&mut state, &at(2000, later)), CommandResponse::User(u) if u.status == UserStatus::Active)
        );
    }

    #[test]
    fn placements_name_live_nodes_and_go_with_a_forgotten_node() {
        let mut state = State::default();
        apply_all(
            &mut state,
            &[Command::RegisterDataplaneNode(node(4, 443)), Command::CreateUser(User::new("ann".into(), 0))],
        );
        let place = Command::Place(vec![
            Move { user: "ann".into(), add: vec![4, 9], remove: vec![] },
            Move { user: "nobody".into(), add: vec![4], remove: vec![] },
        ]);
        assert_eq!(apply(&mut state, &place), CommandResponse::Placed(1));
        let placed: Vec<NodeId> = state.users["ann"].placements.iter().map(|p| p.node).collect();
        assert_eq!(placed, [4], "node 9 is not registered");
        assert_eq!(state.users["ann"].placements[0].since_generation, state.generation);
        apply(&mut state, &Command::ForgetMember { id: 4 });
        assert!(state.users["ann"].placements.is_empty());
    }
}
