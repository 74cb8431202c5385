//! The leader's duties, run only on the node that currently leads:
//! - `liveness`: heartbeats kept in memory; a node's health is written
//!   through Raft only when it changes (down after `down_after` of silence).
//! - `heartbeat`: the handler of a data-plane node's heartbeat: liveness,
//!   applied generation and traffic reports (recorded idempotently).
//! - `lifecycle`: expiry and periodic traffic resets.
//! - `scheduler`: the executor of `vpn_scheduler::plan`: soon after every
//!   change and once a second, moves proposed as `Place` commands, at
//!   most `max_moves_per_sec` per second.
//! - the cluster's session key (for logins), made once if there is none.
//!
//! A new leadership first waits until this node applied everything committed
//! before it (a read-index barrier), so a new leader never judges or plans
//! from a stale state; after that it is the only writer.

pub mod heartbeat;
mod lifecycle;
pub mod liveness;
mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;
use vpn_storage::access::AccessCommand;
use vpn_storage::command::{Command, CommandResponse};

use crate::config::SchedulingConfig;
use crate::node::Node;

/// How often the leader looks at liveness.
const LIVENESS_TICK: Duration = Duration::from_millis(200);
/// How often the leader checks lifecycles (expiry, resets).
const LIFECYCLE_TICK: Duration = Duration::from_secs(1);

/// Runs the leader's duties whenever this node leads, until shutdown.
pub async fn run(node: Arc<Node>, config: SchedulingConfig, mut shutdown: watch::Receiver<bool>) {
    let mut raft = node.raft.metrics();
    let mut leading_term: Option<u64> = None;
    let mut caught_up = false;
    let mut liveness_tick = tokio::time::interval(LIVENESS_TICK);
    liveness_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_lifecycle = Instant::now();
    let mut scheduler = scheduler::Executor::new();
    loop {
        tokio::select! {
            _ = liveness_tick.tick() => {}
            changed = raft.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let (state, term) = {
            let m = raft.borrow_and_update();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            leading_term = None;
            continue;
        }
        if leading_term != Some(term) {
            // A new leadership: every node gets a full grace period, so an
            // election alone never marks a node down or moves a user.
            leading_term = Some(term);
            caught_up = false;
            node.liveness.restart_grace();
            tracing::info!(term, "leading: liveness, scheduler and lifecycle duties start");
        }
        if !caught_up {
            caught_up = node.linearizable_barrier().await.is_ok();
            if !caught_up {
                continue;
            }
        }
        if node.state.read(|s| s.access.session_key.is_none()) {
            let hex = crate::login::session::new_key();
            propose(&node, Command::Access(AccessCommand::SetSessionKey { hex })).await;
        }
        let changes = node.state.read(|s| node.liveness.judge(s, config.down_after));
        for change in changes {
            if let Command::SetNodeHealth { node: id, health, .. } = &change {
                tracing::warn!(node = id, ?health, "data-plane node health changed");
                if *health == vpn_storage::model::NodeHealth::Down {
                    node.metrics.failovers.inc();
                }
            }
            propose(&node, change).await;
        }
        if Instant::now() >= next_lifecycle {
            next_lifecycle = Instant::now() + LIFECYCLE_TICK;
            let due = node.state.read(|s| lifecycle::due(s, crate::api::convert::now_ms()));
            if let Some(cmd) = due {
                propose(&node, cmd).await;
            }
        }
        scheduler.step(&node, &config).await;
    }
}

async fn propose(node: &Node, cmd: Command) -> Option<CommandResponse> {
    match node.propose(cmd).await {
        Ok(CommandResponse::Refused(r)) => {
            tracing::warn!("leader duty refused: {r}");
            None
        }
        Ok(r) => Some(r),
        Err(e) => {
            tracing::debug!("leader duty not proposed: {e}");
            None
        }
    }
}
