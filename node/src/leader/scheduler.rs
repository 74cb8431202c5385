//! The scheduler's executor on the leader: runs `vpn_scheduler::plan` soon
//! after the state changed (a new user is placed within tens of
//! milliseconds, not at the next tick) and at least once per tick, and
//! proposes the moves as `Place` commands of at most 500 moves each. Moves are budgeted per
//! one-second window (`--max-moves-per-sec`), so a mass failover spreads out.
//! Planning after a change waits at least ten times the last plan's cost, so
//! the planner takes at most a tenth of a core from the leader during a
//! burst of writes, however many users there are.

use std::time::{Duration, Instant};

use vpn_storage::command::{Command, CommandResponse};

use crate::config::SchedulingConfig;
use crate::node::Node;

/// At most one plan per this after a change (plans come in bursts of writes).
const MIN_GAP: Duration = Duration::from_millis(50);
/// The gap after a change is also at least this many times the last plan's cost.
const COST_FACTOR: u32 = 10;
/// Moves per `Place` entry: a Raft entry stays a few tens of KB, however
/// many moves a plan makes (a replication RPC must finish within a heartbeat).
const MOVES_PER_ENTRY: usize = 500;
/// A plan at least this often, changed state or not.
const TICK: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(1);

pub struct Executor {
    /// The applied log index the last plan saw.
    planned_at: Option<u64>,
    last_plan: Option<Instant>,
    last_cost: Duration,
    window_start: Instant,
    moves_in_window: usize,
}

impl Executor {
    pub fn new() -> Self {
        Self {
            planned_at: None,
            last_plan: None,
            last_cost: Duration::ZERO,
            window_start: Instant::now(),
            moves_in_window: 0,
        }
    }

    /// Plans if due; proposes the moves within the window's budget.
    pub async fn step(&mut self, node: &Node, config: &SchedulingConfig) {
        let now = Instant::now();
        // Any applied entry may matter (a node marked down changes no
        // generation), so the applied index is the change signal.
        let (applied, no_nodes) =
            node.state.read(|s| (s.last_applied.map_or(0, |l| l.index), s.dataplane_nodes.is_empty()));
        // Without data-plane nodes there is nothing to place (and no placement
        // survives a node's removal): skip the pass over every user.
        if no_nodes {
            return;
        }
        let since = self.last_plan.map(|t| now.saturating_duration_since(t));
        let gap = MIN_GAP.max(self.last_cost * COST_FACTOR);
        let due = match since {
            None => true,
            Some(since) => since >= TICK || (self.planned_at != Some(applied) && since >= gap),
        };
        if !due {
            return;
        }
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.moves_in_window = 0;
        }
        let budget = config.max_moves_per_sec.saturating_sub(self.moves_in_window);
        if budget == 0 {
            return;
        }
        self.last_plan = Some(now);
        self.planned_at = Some(applied);
        let policy = vpn_scheduler::Policy { replicas: config.replicas, max_moves: budget };
        let moves = node.state.read(|s| vpn_scheduler::plan(s, &policy));
        self.last_cost = now.elapsed();
        node.metrics.plan_duration.observe(self.last_cost.as_secs_f64());
        if moves.is_empty() {
            return;
        }
        self.moves_in_window += moves.len();
        let changes: usize = moves.iter().map(|m| m.add.len() + m.remove.len()).sum();
        tracing::info!(users = moves.len(), changes, plan_ms = self.last_cost.as_millis(), "scheduler: placing users");
        for chunk in moves.chunks(MOVES_PER_ENTRY) {
            let changes: usize = chunk.iter().map(|m| m.add.len() + m.remove.len()).sum();
            match super::propose(node, Command::Place(chunk.to_vec())).await {
                Some(CommandResponse::Placed(_)) => {
                    node.metrics.placement_changes.inc_by(changes as u64);
                }
                // Leadership lost or a write failed: the next plan starts from the state as it is.
                _ => return,
            }
        }
    }
}
