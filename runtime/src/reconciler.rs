//! The reconcile loop: one task per node that runs a reconcile when the
//! desired state changes and on a periodic resync (the safety net for drift
//! behind its back), backs off on errors, never runs two reconciles at once,
//! and stops on shutdown within a grace period. It never stops engines: they
//! outlive the control plane, and the next start adopts them by their labels.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::docker::Docker;
use crate::engine::singbox::SingBox;
use crate::engine::Engine;
use crate::reconcile::env::Env;
use crate::reconcile::observe::observe;
use crate::reconcile::plan::{plan, DesiredInbound, Op, PlanInput};
use crate::reconcile::{executor, Observed};
use crate::usage::{FinalReadings, UsageReader};
use crate::{validate, DesiredState, Metrics, Protocol, RuntimeError};

/// How this node's runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub node_id: u64,
    /// The engine image, e.g. `ghcr.io/sagernet/sing-box:v1.14.4`; pulled if missing and a registry has it.
    pub engine_image: String,
    /// Engine config files live here (a folder of the node's data dir); mounted read-only into engines.
    pub config_dir: PathBuf,
    /// Periodic reconcile even without changes.
    pub resync: Duration,
    /// `unix:///path` or `tcp://host:port`; `None`: `DOCKER_HOST`, else `/var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// A reload (it cuts every session of a VLESS engine) waits until the user set has been
    /// quiet this long, at most five times this since the first change.
    pub reload_debounce: Duration,
    /// On shutdown, a reconcile in flight may finish within this.
    pub shutdown_grace: Duration,
}

impl RuntimeConfig {
    pub fn new(node_id: u64, engine_image: impl Into<String>, config_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            node_id,
            engine_image: engine_image.into(),
            config_dir: config_dir.into(),
            resync: Duration::from_secs(10),
            docker_host: None,
            reload_debounce: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What the node reports upward (heartbeat, `node list`, `/readyz?verbose`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStatus {
    /// Generation of the last desired state that was fully applied.
    pub applied_generation: u64,
    /// Why the last reconcile failed; `None` after a success.
    pub last_error: Option<String>,
}

pub struct Reconciler;

/// A running reconcile loop. Dropping it does not stop the loop; the shutdown signal does.
pub struct ReconcilerHandle {
    pub status: watch::Receiver<ApplyStatus>,
    pub metrics: Metrics,
    /// Reads the engines' traffic counters; clone it for a task of its own.
    pub usage: UsageReader,
    task: JoinHandle<()>,
}

impl ReconcilerHandle {
    /// The cumulative byte counters of every user on every engine of this node (see [`crate::usage`]).
    pub async fn counters(&self) -> Result<Vec<crate::Counter>, RuntimeError> {
        self.usage.counters().await
    }

    /// Waits until the loop has stopped (after the shutdown signal).
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "reconcile loop panicked");
        }
    }
}

impl Reconciler {
    /// Connects to Docker and checks the engine image (failing fast with an
    /// error naming the fix), then starts the loop. Reconciles begin once
    /// `desired` holds a state; `None` means "not known yet" and touches nothing.
    pub async fn start(
        config: RuntimeConfig,
        desired: watch::Receiver<Option<DesiredState>>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<ReconcilerHandle, RuntimeError> {
        let docker = Docker::connect(config.docker_host.as_deref()).await?;
        docker.ensure_image(&config.engine_image).await?;
        let dir = &config.config_dir;
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io("create", dir, e))?;
        // Docker needs absolute bind-mount sources.
        let config_dir = dir.canonicalize().map_err(|e| RuntimeError::io("resolve", dir, e))?;
        let metrics = Metrics::default();
        let finals = FinalReadings::default();
        let usage = UsageReader::new(SingBox, docker.clone(), config.node_id, finals.clone());
        let env = Env {
            engine: SingBox,
            docker,
            node_id: config.node_id,
            image: config.engine_image.clone(),
            config_dir,
            metrics: metrics.clone(),
            finals,
        };
        let (status_tx, status) = watch::channel(ApplyStatus::default());
        let task = tokio::spawn(run(env, config, desired, shutdown, status_tx));
        Ok(ReconcilerHandle { status, metrics, usage, task })
    }
}

/// How one reconcile ended.
enum Outcome {
    Converged,
    /// Only a debounced reload is left.
    ReloadDeferred,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// A reconcile that still has work after this many observe-plan-apply passes is an error.
const MAX_PASSES: usize = 4;

async fn run<E: Engine>(
    env: Env<E>,
    config: RuntimeConfig,
    mut desired_rx: watch::Receiver<Option<DesiredState>>,
    mut shutdown: watch::Receiver<bool>,
    status: watch::Sender<ApplyStatus>,
) {
    let mut current = desired_rx.borrow_and_update().clone();
    let mut debounce = Debounce::new(config.reload_debounce);
    let mut backoff = MIN_BACKOFF;
    let mut desired_open = true;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            changed = desired_rx.changed(), if desired_open => match changed {
                // The node dropped its sender: keep serving the last state, resync only.
                Err(_) => desired_open = false,
                Ok(()) => {
                    let new = desired_rx.borrow_and_update().clone();
                    debounce.note(current.as_ref(), new.as_ref(), Instant::now());
                    current = new;
                    next = Instant::now();
                }
            },
            () = tokio::time::sleep_until(next) => {
                let Some(state) = current.clone() else {
                    next = Instant::now() + config.resync;
                    continue;
                };
                env.metrics.set_generations(state.generation, None);
                let started = Instant::now();
                env.metrics.run_started();
                let mut work = pin!(reconcile(&env, &state, debounce.reload_allowed(started)));
                let result = tokio::select! {
                    result = &mut work => result,
                    // A dropped sender counts as shutdown too.
                    _ = async { shutdown.wait_for(|stop| *stop).await.map(drop) } => {
                        if tokio::time::timeout(config.shutdown_grace, work).await.is_err() {
                            tracing::warn!(node = env.node_id, "shutdown: abandoned a reconcile in flight");
                        }
                        break;
                    }
                };
                env.metrics.run_finished(started.elapsed().as_secs_f64(), result.is_ok());
                next = match result {
                    Ok(Outcome::Converged) => {
                        debounce.settled();
                        backoff = MIN_BACKOFF;
                        env.metrics.set_generations(state.generation, Some(state.generation));
                        status.send_modify(|s| {
                            s.applied_generation = s.applied_generation.max(state.generation);
                            s.last_error = None;
                        });
                        Instant::now() + config.resync
                    }
                    Ok(Outcome::ReloadDeferred) => debounce.allowed_at().unwrap_or_else(Instant::now),
                    Err(e) => {
                        tracing::warn!(node = env.node_id, generation = state.generation, error = %e, "reconcile failed");
                        status.send_modify(|s| s.last_error = Some(e.to_string()));
                        let wait = backoff;
                        backoff = (backoff * 2).min(config.resync.max(MIN_BACKOFF));
                        Instant::now() + wait
                    }
                };
            }
        }
    }
    tracing::info!(node = env.node_id, "reconcile loop stopped; engine containers keep running");
}

/// Observe, plan, apply until the plan is empty.
async fn reconcile<E: Engine>(
    env: &Env<E>,
    desired: &DesiredState,
    reload_allowed: bool,
) -> Result<Outcome, RuntimeError> {
    validate(desired, env.node_id)?;
    let inbounds = desired
        .inbounds
        .iter()
        .map(|i| {
            Ok(DesiredInbound {
                protocol: i.protocol,
                listen_port: i.listen_port,
                config_hash: env.engine.config_hash(&env.image, i)?,
                strategy: env.engine.user_strategy(i.protocol),
            })
        })
        .collect::<Result<Vec<_>, RuntimeError>>()?;
    let current: BTreeMap<_, _> = inbounds.iter().map(|i| (i.protocol, i.config_hash.clone())).collect();
    let input = PlanInput { inbounds: &inbounds, users: &desired.users, reload_allowed };
    // One broken inbound (say a port in use) must not hold back the others: its
    // ops are skipped for the rest of this reconcile, the others go on.
    let mut failed: Vec<(Option<Protocol>, RuntimeError)> = Vec::new();
    let mut last_plan = Vec::new();
    for _ in 0..MAX_PASSES {
        let observed = observe(env, &current).await?;
        let plan = plan(input, &observed);
        let ops: Vec<&Op> = plan.ops.iter().filter(|op| !failed.iter().any(|(p, _)| *p == op.protocol())).collect();
        if ops.is_empty() {
            record_users(env, &observed);
            return match failed.len() {
                0 if plan.reload_deferred => Ok(Outcome::ReloadDeferred),
                0 => Ok(Outcome::Converged),
                1 => Err(failed.remove(0).1),
                _ => Err(RuntimeError::Several(failed.into_iter().map(|(_, e)| e).collect())),
            };
        }
        for op in ops {
            if let Err(e) = executor::apply(env, desired, &observed, op).await {
                failed.push((op.protocol(), e));
            }
        }
        last_plan = plan.ops;
    }
    Err(RuntimeError::NotConverging { passes: MAX_PASSES, last_plan: format!("{last_plan:?}") })
}

fn record_users<E: Engine>(env: &Env<E>, observed: &Observed) {
    for c in &observed.containers {
        if let (Some(p), Some(users)) = (c.protocol, &c.users) {
            env.metrics.set_users(p, users.live.keys().filter(|n| !users.refused.contains(*n)).count());
        }
    }
}

/// Holds reloads back while the user set keeps changing.
struct Debounce {
    quiet: Duration,
    changed_at: Option<Instant>,
    pending_since: Option<Instant>,
}

impl Debounce {
    fn new(quiet: Duration) -> Self {
        Debounce { quiet, changed_at: None, pending_since: None }
    }

    fn note(&mut self, old: Option<&DesiredState>, new: Option<&DesiredState>, now: Instant) {
        if old.map(|d| &d.users) != new.map(|d| &d.users) {
            self.changed_at = Some(now);
            self.pending_since.get_or_insert(now);
        }
    }

    /// When a reload may run: after `quiet` without changes, or `5 * quiet` after the first.
    fn allowed_at(&self) -> Option<Instant> {
        Some((self.changed_at? + self.quiet).min(self.pending_since? + self.quiet * 5))
    }

    fn reload_allowed(&self, now: Instant) -> bool {
        self.allowed_at().is_none_or(|at| now >= at)
    }

    fn settled(&mut self) {
        self.changed_at = None;
        self.pending_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{desired, user};

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debounce::new(ms(200));
        assert!(d.reload_allowed(t0), "nothing pending");
        let a = desired(vec![], vec![user("a", 1)]);
        let b = desired(vec![], vec![user("a", 1), user("b", 2)]);
        d.note(Some(&a), Some(&a), t0);
        assert!(d.allowed_at().is_none(), "same users: no change");
        d.note(Some(&a), Some(&b), t0);
        assert!(!d.reload_allowed(t0 + ms(100)));
        assert!(d.reload_allowed(t0 + ms(200)));
        // Changes every 150 ms keep pushing it back, up to 5 x 200 ms after the first.
        for i in 1..10 {
            d.note(Some(&a), Some(&b), t0 + ms(150 * i));
        }
        assert_eq!(d.allowed_at(), Some(t0 + ms(1000)));
        d.settled();
        assert!(d.reload_allowed(t0));
    }
}
