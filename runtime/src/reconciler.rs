//! The reconcile loop: one task per node that runs a reconcile when the
//! desired state changes and on a periodic resync (the safety net for drift
//! behind its back), backs off on errors, never runs two reconciles at once,
//! and stops on shutdown within a grace period. It never stops engines: they
//! outlive the control plane, and the next start adopts them by their labels.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::docker::Docker;
use crate::engine::singbox::render::EVENTS;
use crate::engine::singbox::SingBox;
use crate::engine::Engine;
use crate::marks::Marks;
use crate::nftables::{self, NodeTable};
use crate::ports::PublicPorts;
use crate::reconcile::env::Env;
use crate::reconcile::observe::observe;
use crate::reconcile::plan::{plan, DesiredInbound, DrainPolicy, Op, PlanInput};
use crate::reconcile::{executor, Observed};
use crate::usage::stream::{EngineStream, StreamCounts};
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
    /// At most one new engine generation (VLESS) starts per this interval: the
    /// changes that arrive meanwhile go into the next one together.
    pub generation_interval: Duration,
    /// How long previous generations serve their sessions, and how many may live.
    pub drain: DrainPolicy,
    /// Whether to use nftables (handoff without cuts, kernel counts).
    pub nftables: NftablesUse,
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
            generation_interval: Duration::from_millis(500),
            drain: DrainPolicy { deadline: Duration::from_secs(3600), max_generations: 8 },
            nftables: NftablesUse::Auto,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// `vpnd --nftables`: whether the node uses nftables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NftablesUse {
    /// nftables where it works (the `nft` command runs and may change the
    /// ruleset), else without it, saying why.
    #[default]
    Auto,
    /// nftables, or an error at start naming the fix.
    On,
    /// Never.
    Off,
}

/// How a node hands users' changes to its engines and counts their traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accounting {
    /// nftables: generations take over without cutting anyone, and the
    /// kernel counts every user's bytes.
    Kernel,
    /// No nftables (`why`): a change of an inbound's users replaces its
    /// engine (cutting its live sessions), and the engines' connection events
    /// count the bytes (see [`crate::usage::stream`]).
    EngineStream { why: String },
}

impl Accounting {
    /// As `vpnctl node show` prints it.
    pub fn describe(&self) -> String {
        match self {
            Accounting::Kernel => "kernel (nftables)".to_owned(),
            Accounting::EngineStream { why } => {
                format!("engine events (no nftables: {why}); user changes restart the engines, cutting live sessions")
            }
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Accounting::Kernel => "kernel",
            Accounting::EngineStream { .. } => "engine-stream",
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
    /// Where the traffic counts come from ([`Accounting::describe`]).
    pub accounting: String,
}

pub struct Reconciler;

/// A running reconcile loop. Dropping it does not stop the loop; the shutdown signal does.
pub struct ReconcilerHandle {
    pub status: watch::Receiver<ApplyStatus>,
    pub metrics: Metrics,
    /// Reads the engines' traffic counters; clone it for a task of its own.
    pub usage: UsageReader,
    pub accounting: Accounting,
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
        let table = NodeTable::new(config.node_id);
        let accounting = match (config.nftables, nftables::probe().await) {
            (NftablesUse::Off, _) => Accounting::EngineStream { why: "--nftables off".to_owned() },
            (_, Ok(())) => Accounting::Kernel,
            (NftablesUse::On, Err(e)) => return Err(e),
            (NftablesUse::Auto, Err(e)) => {
                tracing::warn!(node = config.node_id, error = %e, "no nftables: user changes will restart the engines (cutting live sessions), and traffic is counted from the engines' events; see --nftables");
                // The node registers it (`node show`): a sentence, not a whole stderr.
                Accounting::EngineStream { why: e.to_string().chars().take(300).collect() }
            }
        };
        metrics.set_accounting_source(accounting.metric_label());
        let taken = match accounting {
            Accounting::Kernel => nftables::taken_prefixes().await?,
            Accounting::EngineStream { .. } => Default::default(),
        };
        let marks = Arc::new(Mutex::new(Marks::load_or_create(&config_dir, config.node_id, &taken)?));
        let (stream, usage) = match accounting {
            Accounting::Kernel => (None, UsageReader::kernel(table.clone(), marks.clone(), finals.clone())),
            Accounting::EngineStream { .. } => {
                let counts = StreamCounts::load(&config_dir, metrics.clone())?;
                (Some(counts.clone()), UsageReader::stream(counts))
            }
        };
        let env = Env {
            engine: SingBox,
            docker,
            node_id: config.node_id,
            image: config.engine_image.clone(),
            config_dir,
            metrics: metrics.clone(),
            finals,
            table,
            marks,
            drain: config.drain,
            public_ports: PublicPorts::default(),
            stream,
        };
        let initial = ApplyStatus { accounting: accounting.describe(), ..Default::default() };
        let (status_tx, status) = watch::channel(initial);
        let task = tokio::spawn(run(env, config, desired, shutdown, status_tx));
        Ok(ReconcilerHandle { status, metrics, usage, accounting, task })
    }
}

/// How one reconcile ended.
#[derive(Default)]
struct Outcome {
    /// Only a throttled new generation is left.
    generation_deferred: bool,
    /// Previous generations still serve sessions.
    draining: bool,
    started_generation: bool,
}

/// How often generations that drain are looked at, so one is removed soon after its last session ends.
const DRAIN_CHECK: Duration = Duration::from_secs(2);

const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// A reconcile that still has work after this many observe-plan-apply passes
/// is an error (a change takes up to four: start, route, drained removal, forget).
const MAX_PASSES: usize = 6;

async fn run<E: Engine>(
    env: Env<E>,
    config: RuntimeConfig,
    mut desired_rx: watch::Receiver<Option<DesiredState>>,
    mut shutdown: watch::Receiver<bool>,
    status: watch::Sender<ApplyStatus>,
) {
    let mut current = desired_rx.borrow_and_update().clone();
    let mut throttle = Throttle { interval: config.generation_interval, last: None };
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
                    current = desired_rx.borrow_and_update().clone();
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
                let mut work = pin!(reconcile(&env, &state, throttle.allowed(started)));
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
                    Ok(outcome) => {
                        backoff = MIN_BACKOFF;
                        if outcome.started_generation {
                            throttle.last = Some(started);
                        }
                        if outcome.generation_deferred {
                            throttle.allowed_at()
                        } else {
                            env.metrics.set_generations(state.generation, Some(state.generation));
                            status.send_modify(|s| {
                                s.applied_generation = s.applied_generation.max(state.generation);
                                s.last_error = None;
                            });
                            let resync = if outcome.draining { config.resync.min(DRAIN_CHECK) } else { config.resync };
                            Instant::now() + resync
                        }
                    }
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
    generation_allowed: bool,
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
            })
        })
        .collect::<Result<Vec<_>, RuntimeError>>()?;
    let mut outcome = Outcome::default();
    // One broken inbound (say a port in use) must not hold back the others: its
    // ops are skipped for the rest of this reconcile, the others go on.
    let mut failed: Vec<(Option<Protocol>, RuntimeError)> = Vec::new();
    let mut last_plan = Vec::new();
    for pass in 0..MAX_PASSES {
        let observed = observe(env).await?;
        if pass == 0 {
            hold_public_ports(env, desired, &observed);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let input = PlanInput {
            inbounds: &inbounds,
            users: &desired.users,
            handoff: env.stream.is_none(),
            // One new generation per reconcile at most: the next pass routes to it.
            generation_allowed: generation_allowed && !outcome.started_generation,
            drain: env.drain,
            now_ms,
        };
        let plan = plan(input, &observed);
        let failed_in =
            |failed: &[(Option<Protocol>, RuntimeError)], op: &Op| failed.iter().any(|(p, _)| *p == op.protocol());
        if plan.ops.iter().all(|op| failed_in(&failed, op)) {
            record_users(env, &observed);
            if let Some(stream) = &env.stream {
                stream.follow(engine_streams(&observed));
            }
            outcome.generation_deferred = plan.generation_deferred;
            outcome.draining = plan.draining;
            return match failed.len() {
                0 => Ok(outcome),
                1 => Err(failed.remove(0).1),
                _ => Err(RuntimeError::Several(failed.into_iter().map(|(_, e)| e).collect())),
            };
        }
        // Ops run in the plan's order, except that a run of new generations
        // (of different inbounds, each a container start) starts side by side.
        let mut ops = plan.ops.iter().peekable();
        while let Some(op) = ops.next() {
            let mut group = vec![op];
            while matches!(op, Op::StartGeneration { .. }) && matches!(ops.peek(), Some(Op::StartGeneration { .. })) {
                group.extend(ops.next());
            }
            // After a failed op, the rest of its inbound's ops wait (a route must not follow a failed start).
            group.retain(|op| !failed_in(&failed, op));
            let results =
                futures::future::join_all(group.iter().map(|op| executor::apply(env, desired, &observed, op))).await;
            for (op, result) in group.into_iter().zip(results) {
                match result {
                    Ok(()) => outcome.started_generation |= matches!(op, Op::StartGeneration { .. }),
                    Err(e) => failed.push((op.protocol(), e)),
                }
            }
        }
        last_plan = plan.ops;
    }
    Err(RuntimeError::NotConverging { passes: MAX_PASSES, last_plan: format!("{last_plan:?}") })
}

/// The running generations whose connection events can be read (an engine
/// started before they were rendered has no `api` service port).
fn engine_streams(observed: &Observed) -> Vec<EngineStream> {
    observed
        .containers
        .iter()
        .filter(|c| c.running && c.generation.is_some())
        .filter_map(|c| {
            let api = c.api.as_ref()?;
            Some(EngineStream { container_id: c.id.clone(), port: *api.ports.get(EVENTS)?, secret: api.secret.clone() })
        })
        .collect()
}

/// Holds the public ports routed already (a vpnd restart lets go of them).
/// One that another program took meanwhile is reported, not fatal: the
/// redirect still takes its connections.
fn hold_public_ports<E: Engine>(env: &Env<E>, desired: &DesiredState, observed: &Observed) {
    for inbound in desired.inbounds.iter().filter(|i| observed.routes.contains_key(&i.listen_port)) {
        if let Err(e) = env.public_ports.take(inbound.protocol, inbound.listen_port) {
            tracing::warn!(node = env.node_id, error = %e, "a routed public port is bound by another program too");
        }
    }
}

fn record_users<E: Engine>(env: &Env<E>, observed: &Observed) {
    let mut generations: BTreeMap<Protocol, usize> = BTreeMap::new();
    for c in &observed.containers {
        let Some(p) = c.protocol else { continue };
        if c.generation.is_some() && c.running {
            *generations.entry(p).or_default() += 1;
        }
        // A generation's users count while new connections reach it.
        let current =
            c.generation.is_none() || c.engine_port.is_some_and(|port| observed.routes.values().any(|r| *r == port));
        if let (true, Some(users)) = (current, &c.users) {
            env.metrics.set_users(p, users.live.keys().filter(|n| !users.refused.contains(*n)).count());
        }
    }
    for (p, n) in generations {
        env.metrics.set_generations_live(p, n);
    }
}

/// Spaces new generations: one may start `interval` after the last one.
struct Throttle {
    interval: Duration,
    last: Option<Instant>,
}

impl Throttle {
    fn allowed_at(&self) -> Instant {
        self.last.map_or_else(Instant::now, |t| t + self.interval)
    }

    fn allowed(&self, now: Instant) -> bool {
        self.last.is_none_or(|t| now >= t + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_may_start_an_interval_after_the_last_one() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Throttle { interval: ms(1000), last: None };
        assert!(t.allowed(t0), "the first change starts one at once");
        t.last = Some(t0);
        assert!(!t.allowed(t0 + ms(999)));
        assert_eq!(t.allowed_at(), t0 + ms(1000));
        assert!(t.allowed(t0 + ms(1000)));
    }
}
