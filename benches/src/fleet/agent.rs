//! One simulated data-plane agent: the real agent's protocol
//! (`node/src/agent/session.rs`, `heartbeat.rs`) without engines. It dials one
//! control-plane node over mutual TLS with its own certificate, registers an
//! offer (one Shadowsocks-2022 inbound on a fake port), follows its
//! assignment stream, and heartbeats every interval reporting the last
//! generation it received as applied (engines that apply instantly). A
//! failed session registers again after a backoff, as the real agent does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use prost::Message as _;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, ClientTlsConfig};
use vpn_proto::internal::agent_client::AgentClient;
use vpn_proto::internal::{HeartbeatRequest, OfferedInbound, RegisterRequest, WatchAssignmentRequest};

use super::tracker::{AgentIx, Tracker};
use super::wire::{counted_channel, WireCounters};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The real agent's heartbeat deadline.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);
/// Longest error text kept (errors are grouped by text).
const MAX_ERROR_LEN: usize = 160;

/// Who one agent is and where it dials.
pub struct AgentSpec {
    pub ix: AgentIx,
    pub node_id: u64,
    pub control_plane: SocketAddr,
    pub tls: ClientTlsConfig,
    pub cert_not_after_ms: i64,
}

/// What the whole fleet shares: the view of assignments, counters, latencies.
pub struct Fleet {
    pub agents: usize,
    pub tracker: Mutex<Tracker>,
    pub wire: Arc<WireCounters>,
    pub heartbeat: Duration,
    pub registered: AtomicU64,
    pub heartbeats_ok: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    pub sessions_failed: AtomicU64,
    /// Assignment messages and their encoded size (protobuf, before HTTP/2 and TLS).
    pub assignment_messages: AtomicU64,
    pub assignment_bytes: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// First registration of each agent, from its turn at the gate: connect,
    /// TLS handshake and `Register` (µs).
    pub register_us: Mutex<Vec<u64>>,
    /// Heartbeat round trips (µs), while a window records them.
    pub heartbeat_us: Mutex<Option<Vec<u64>>>,
}

impl Fleet {
    pub fn new(agents: usize, heartbeat: Duration) -> Self {
        Self {
            agents,
            tracker: Mutex::new(Tracker::new(agents)),
            wire: Arc::default(),
            heartbeat,
            registered: AtomicU64::new(0),
            heartbeats_ok: AtomicU64::new(0),
            heartbeats_failed: AtomicU64::new(0),
            sessions_failed: AtomicU64::new(0),
            assignment_messages: AtomicU64::new(0),
            assignment_bytes: AtomicU64::new(0),
            errors: Mutex::default(),
            register_us: Mutex::default(),
            heartbeat_us: Mutex::default(),
        }
    }

    /// The view, locked (a panicked holder does not poison the measurement).
    pub fn view(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, what: &str, status: &tonic::Status) {
        let mut text = format!("{what}: {:?}: {}", status.code(), status.message());
        text.truncate(MAX_ERROR_LEN);
        *self.errors.lock().unwrap_or_else(PoisonError::into_inner).entry(text).or_default() += 1;
    }

    /// Starts (`Some(empty)`) or ends (`None`, returning them) recording heartbeat latencies.
    pub fn record_heartbeats(&self, on: bool) -> Vec<u64> {
        let mut slot = self.heartbeat_us.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = slot.take().unwrap_or_default();
        if on {
            *slot = Some(Vec::new());
        }
        taken
    }
}

/// A running agent; [`Agent::stop`] ends its heartbeats and its stream.
pub struct Agent {
    pub ix: AgentIx,
    pub node_id: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Agent {
    /// Starts the agent. `gate` bounds how many agents are connecting and
    /// registering at once (the first session only).
    pub fn spawn(spec: AgentSpec, fleet: Arc<Fleet>, gate: Arc<Semaphore>) -> anyhow::Result<Self> {
        let channel = counted_channel(spec.control_plane, spec.tls.clone(), fleet.wire.clone())?;
        let (stop, stopped) = watch::channel(false);
        let (ix, node_id) = (spec.ix, spec.node_id);
        let task = tokio::spawn(run(spec, channel, fleet, gate, stopped));
        Ok(Self { ix, node_id, stop, task })
    }

    /// Stops heartbeating and drops the stream and the connection, as a
    /// node that died; returns once both loops ended.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(spec: AgentSpec, channel: Channel, fleet: Arc<Fleet>, gate: Arc<Semaphore>, stop: watch::Receiver<bool>) {
    let client = AgentClient::new(channel);
    let incarnation = uuid::Uuid::new_v4().to_string();
    let offer = RegisterRequest {
        node_id: spec.node_id,
        incarnation: incarnation.clone(),
        public_host: crate::tls::HOST.to_owned(),
        inbounds: vec![OfferedInbound {
            protocol: "shadowsocks-2022".into(),
            // Fake: nothing listens; the control plane only records it.
            port: 20_000 + spec.ix % 40_000,
            ss2022_server_key: base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes()),
            ..Default::default()
        }],
        labels: Default::default(),
        capacity: 0,
        cert_not_after_ms: spec.cert_not_after_ms,
        accounting: String::new(),
    };
    let applied = Arc::new(AtomicU64::new(0));
    let (registered_tx, registered) = watch::channel(false);
    let session =
        Session { ix: spec.ix, client: client.clone(), offer, fleet: fleet.clone(), applied: applied.clone() };
    let beat = Beat { ix: spec.ix, node_id: spec.node_id, incarnation, client, fleet, applied };
    tokio::join!(session.run(gate, registered_tx, stop.clone()), beat.run(registered, stop));
}

struct Session {
    ix: AgentIx,
    client: AgentClient<Channel>,
    offer: RegisterRequest,
    fleet: Arc<Fleet>,
    applied: Arc<AtomicU64>,
}

impl Session {
    async fn run(self, gate: Arc<Semaphore>, registered: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut permit = gate.acquire_owned().await.ok();
        let admitted = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let outcome = tokio::select! {
                outcome = self.once(&registered, &mut permit, admitted) => outcome,
                _ = stop.changed() => return,
            };
            match outcome {
                Ok(()) => {}
                Err((what, status)) => {
                    self.fleet.sessions_failed.fetch_add(1, Ordering::Relaxed);
                    self.fleet.error(what, &status);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(LONGEST_BACKOFF);
        }
    }

    /// Register, then follow the assignment until the stream ends or fails.
    async fn once(
        &self,
        registered: &watch::Sender<bool>,
        permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
        admitted: Instant,
    ) -> Result<(), (&'static str, tonic::Status)> {
        let mut client = self.client.clone();
        let mut req = tonic::Request::new(self.offer.clone());
        req.set_timeout(CALL_TIMEOUT);
        client.register(req).await.map_err(|s| ("register", s))?;
        if !*registered.borrow() {
            self.fleet.registered.fetch_add(1, Ordering::Relaxed);
            let us = admitted.elapsed().as_micros() as u64;
            self.fleet.register_us.lock().unwrap_or_else(PoisonError::into_inner).push(us);
            registered.send_replace(true);
        }
        // The first session's connect and registration are done: let the next agent in.
        permit.take();
        let req = tonic::Request::new(WatchAssignmentRequest { node_id: self.offer.node_id });
        let mut stream = client.watch_assignment(req).await.map_err(|s| ("watch", s))?.into_inner();
        while let Some(a) = stream.message().await.map_err(|s| ("assignment stream", s))? {
            let at = Instant::now();
            self.fleet.assignment_messages.fetch_add(1, Ordering::Relaxed);
            self.fleet.assignment_bytes.fetch_add(a.encoded_len() as u64, Ordering::Relaxed);
            self.fleet.view().update(self.ix, &a, at);
            // Engines that apply at once: the next heartbeat reports it.
            self.applied.fetch_max(a.generation, Ordering::Relaxed);
        }
        Err(("assignment stream", tonic::Status::unavailable("ended by the server")))
    }
}

struct Beat {
    ix: AgentIx,
    node_id: u64,
    incarnation: String,
    client: AgentClient<Channel>,
    fleet: Arc<Fleet>,
    applied: Arc<AtomicU64>,
}

impl Beat {
    /// Every interval from the first registration on, phased by the agent's
    /// place in the fleet so that the fleet's heartbeats spread over the interval.
    async fn run(self, mut registered: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            r = registered.wait_for(|r| *r) => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        let interval = self.fleet.heartbeat;
        let phase = interval.mul_f64(f64::from(self.ix) / self.fleet.agents.max(1) as f64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let mut req = tonic::Request::new(HeartbeatRequest {
                node_id: self.node_id,
                incarnation: self.incarnation.clone(),
                applied_generation: self.applied.load(Ordering::Relaxed),
                engine_error: String::new(),
                traffic: Vec::new(),
            });
            req.set_timeout(HEARTBEAT_TIMEOUT);
            let sent = Instant::now();
            let mut client = self.client.clone();
            let reply = tokio::select! {
                r = client.heartbeat(req) => r,
                _ = stop.changed() => return,
            };
            match reply {
                Ok(_) => {
                    self.fleet.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                    let us = sent.elapsed().as_micros() as u64;
                    if let Some(v) = self.fleet.heartbeat_us.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                        v.push(us);
                    }
                }
                Err(status) => {
                    self.fleet.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                    self.fleet.error("heartbeat", &status);
                }
            }
        }
    }
}
