//! The leader's placement planner: which data-plane nodes serve each user.
//!
//! [`plan`] is pure and deterministic: it reads the applied [`State`] and
//! returns the [`Move`]s that bring it closer to the [`Policy`]; the leader's
//! executor proposes them as one `Command::Place` about once per second. It
//! never moves a user that is served well (stickiness): it replaces
//! placements on nodes that are down or gone (failover), tops up users with
//! too few replicas, moves users off draining nodes only once their new
//! placements serve (make-before-break), and drops placements of users that
//! are not active. The most urgent moves go first, at most
//! [`Policy::max_moves`] per plan.
//!
//! Layout:
//! - [`policy`]: [`Policy`], the replica count and the per-plan move cap.
//! - `plan`: [`plan`], triage of every user by urgency, then the moves.
//! - `nodes`: the node table with per-node user counts the plan updates as it goes.
//! - `groups`: the nodes open to each distinct user constraint.

mod groups;
mod nodes;
mod plan;
pub mod policy;

pub use plan::plan;
pub use policy::Policy;

#[cfg(doc)]
use vpn_storage::{command::Move, state::State};
