//! Simulated data-plane agents, for scale runs without containers.
//!
//! Each agent of a [`Fleet`] speaks to the leader what a control-plane node
//! relays for a real agent: it registers its offer through `Raft/Propose` and
//! reports through `Raft/Heartbeat` every second, following the leader when
//! it moves (so the fleet costs no watch streams; the scenario runs
//! `--insecure`). Its engine is a test double that applies any assignment at
//! once: it reports as applied its node's assigned generation, which one
//! poller reads for the whole fleet from any node (`Nodes/ListNodes`, a local
//! read). Simulated nodes are not Raft members: their ids start at
//! [`FIRST_ID`], clear of the members', and no member record checks them.
//!
//! Agents may also bill traffic ([`Fleet::bill`]): each heartbeat then adds
//! a report of some bytes for each billed user and sends every report the
//! leader has not acknowledged, as the real agent does, so that what the
//! cluster recorded can be compared with what was billed through faults.
//!
//! Beside the fleet, what a scale run needs around it: [`create_users`] (many
//! `CreateUser` calls at a bounded concurrency), [`Scrape`] (the leader's
//! `/metrics`: placements per node, nodes by status, the plan-time histogram),
//! [`check_placements`] (every user, page by page) and [`rss_kib`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use vpn_proto::internal::raft_client::RaftClient;
use vpn_proto::internal::{HeartbeatRequest, RaftPayload, TrafficReport, UserUsage};
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{CreateUserRequest, ListNodesRequest, ListUsersRequest, ReadConsistency};
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::{DataplaneNode, InboundRecord, Protocol};

use crate::cluster::{channel, http_get};
use crate::lock;

/// The id of a fleet's first node; the others follow it.
pub const FIRST_ID: u64 = 1000;
/// How often each agent reports (vpnd's default `--node-heartbeat-ms`).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A heartbeat the leader did not answer within this counts as failed (as in the real agent).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the engine doubles learn their nodes' assigned generations.
const GENERATION_POLL: Duration = Duration::from_millis(250);
/// Longest a proposal (a registration) is retried: elections, a busy leader.
const PROPOSE_WITHIN: Duration = Duration::from_secs(30);
/// Longest one user's creation is retried.
const CREATE_WITHIN: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata naming the leader on UNAVAILABLE (`vpn_node::api::status::LEADER_ADDR_HEADER`).
const LEADER_ADDR: &str = "x-vpn-leader-addr";
/// Stands for a data dir's incarnation: the leader checks it only against a
/// member record, and simulated nodes have none.
const INCARNATION: &str = "00000000-0000-4000-8000-000000000000";

/// The cluster's endpoints and the one believed to lead.
struct Links {
    endpoints: Vec<(SocketAddr, Channel)>,
    leader: AtomicUsize,
}

impl Links {
    fn new(addrs: &[SocketAddr]) -> Self {
        Self { endpoints: addrs.iter().map(|a| (*a, channel(*a))).collect(), leader: AtomicUsize::new(0) }
    }

    fn leader(&self) -> (usize, Channel) {
        let i = self.leader.load(Ordering::Relaxed) % self.endpoints.len();
        (i, self.endpoints[i].1.clone())
    }

    /// After `status` from endpoint `tried`: on UNAVAILABLE go to the leader
    /// it names, else (unreachable, or no leader known there) to the next
    /// endpoint. Any other failure (a deadline, a refusal) keeps the guess, as
    /// an agent keeps the leader it knows. Of many agents failing at once, one
    /// moves the guess. Returns whether trying again at once may help.
    fn failed(&self, tried: usize, status: &Status) -> bool {
        if status.code() != Code::Unavailable {
            return false;
        }
        let named = status
            .metadata()
            .get(LEADER_ADDR)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.trim_start_matches("http://").parse::<SocketAddr>().ok())
            .and_then(|a| self.endpoints.iter().position(|(e, _)| *e == a));
        let next = named.unwrap_or((tried + 1) % self.endpoints.len());
        let _ = self.leader.compare_exchange(tried, next, Ordering::Relaxed, Ordering::Relaxed);
        true
    }
}

/// Heartbeats sent by the whole fleet.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Agent {
    task: Option<JoinHandle<()>>,
    /// When the leader last acknowledged a heartbeat of this agent.
    acked: Arc<Mutex<Option<Instant>>>,
    ledger: Arc<Mutex<Ledger>>,
}

/// An agent's traffic: the users it bills, what it billed, and the reports
/// the leader has not acknowledged yet.
#[derive(Default)]
struct Ledger {
    /// (name, id) of each user billed at every heartbeat; empty: none.
    users: Vec<(String, String)>,
    last_seq: u64,
    /// Oldest first, as the heartbeat carries them.
    unacked: Vec<TrafficReport>,
    /// Bytes billed per user name, acknowledged or not.
    billed: BTreeMap<String, u64>,
    /// Answers to heartbeats that carried reports.
    answers: u64,
}

impl Ledger {
    /// A new report for every billed user; sizes vary with the sequence
    /// number, so a report counted twice or dropped changes the totals.
    fn bill(&mut self) {
        if self.users.is_empty() {
            return;
        }
        self.last_seq += 1;
        let bytes = 1000 + (self.last_seq % 13) * 97;
        let usage =
            self.users.iter().map(|(name, id)| UserUsage { name: name.clone(), user_id: id.clone(), bytes }).collect();
        for (name, _) in &self.users {
            *self.billed.entry(name.clone()).or_default() += bytes;
        }
        self.unacked.push(TrafficReport { seq: self.last_seq, usage });
    }

    /// What the next heartbeat carries: the oldest reports, as many as the
    /// leader takes from one.
    fn pending(&self) -> Vec<TrafficReport> {
        self.unacked.iter().take(vpn_node::limits::MAX_REPORTS).cloned().collect()
    }

    /// The leader recorded every report through `through`. Every third
    /// answer is taken as lost on the way (as a reply cut by a timeout is),
    /// so reports the cluster already recorded are sent again: the leader
    /// must not count them twice.
    fn acknowledged(&mut self, through: u64) {
        self.answers += 1;
        if !self.answers.is_multiple_of(3) {
            self.unacked.retain(|r| r.seq > through);
        }
    }
}

/// Simulated data-plane agents; every task stops when the fleet is dropped.
pub struct Fleet {
    agents: BTreeMap<u64, Agent>,
    poller: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
}

impl Fleet {
    /// Registers `n` nodes (ids [`FIRST_ID`]..) with `capacity` users each
    /// (0: no limit) through the leader, one by one as agents do, and starts
    /// their heartbeats, spread over one interval.
    pub async fn start(endpoints: &[SocketAddr], n: usize, capacity: u32) -> Result<Self> {
        Self::launch(endpoints, n, capacity, false).await
    }

    /// [`Fleet::start`], but every registration goes in one `Command::Batch`
    /// entry, so the scheduler sees the nodes appear at one instant (a plan
    /// between two registrations would place users on the first nodes only,
    /// and it never moves a user who is served).
    pub async fn start_together(endpoints: &[SocketAddr], n: usize, capacity: u32) -> Result<Self> {
        Self::launch(endpoints, n, capacity, true).await
    }

    async fn launch(endpoints: &[SocketAddr], n: usize, capacity: u32, together: bool) -> Result<Self> {
        if endpoints.is_empty() || n == 0 {
            bail!("a fleet needs endpoints and at least one node");
        }
        let links = Arc::new(Links::new(endpoints));
        let ids: Vec<u64> = (FIRST_ID..).take(n).collect();
        if together {
            let all = ids.iter().map(|id| Command::RegisterDataplaneNode(offer(*id, capacity))).collect();
            match propose(&links, &Command::Batch(all)).await? {
                CommandResponse::Batch(rs) if rs.iter().all(|r| matches!(r, CommandResponse::DataplaneNode(_))) => {}
                other => bail!("registering {n} nodes at once: the leader answered {other:?}"),
            }
        }
        let (generation_tx, generation) = watch::channel(BTreeMap::new());
        let counts = Arc::new(Counts::default());
        let mut fleet = Self { agents: BTreeMap::new(), poller: None, counts: counts.clone() };
        let first_beat = tokio::time::Instant::now();
        for (i, &id) in ids.iter().enumerate() {
            if !together {
                match propose(&links, &Command::RegisterDataplaneNode(offer(id, capacity))).await? {
                    CommandResponse::DataplaneNode(node) if node.id == id => {}
                    other => bail!("registering node {id}: the leader answered {other:?}"),
                }
            }
            if fleet.poller.is_none() {
                fleet.poller = Some(tokio::spawn(poll_generations(links.clone(), generation_tx.clone())));
            }
            let acked = Arc::new(Mutex::new(None));
            let ledger = Arc::new(Mutex::new(Ledger::default()));
            let beat = Beat {
                id,
                links: links.clone(),
                generation: generation.clone(),
                acked: acked.clone(),
                ledger: ledger.clone(),
            };
            let at = first_beat + HEARTBEAT.mul_f64(i as f64 / n as f64);
            let task = tokio::spawn(beat.run(at, counts.clone()));
            fleet.agents.insert(id, Agent { task: Some(task), acked, ledger });
        }
        Ok(fleet)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.agents.keys().copied().collect()
    }

    /// The node's death as the leader sees it: its heartbeats stop at once
    /// (the task is aborted, an unanswered one included). Returns when the
    /// leader last acknowledged one, `None` for an unknown node or none yet.
    pub fn stop_heartbeats(&mut self, id: u64) -> Option<Instant> {
        let agent = self.agents.get_mut(&id)?;
        if let Some(task) = agent.task.take() {
            task.abort();
        }
        *lock(&agent.acked)
    }

    /// From the next heartbeat on, agent `id` bills every one of `users`
    /// (name, id) in each heartbeat; an empty list stops its billing.
    /// Returns false for an unknown agent.
    pub fn bill(&self, id: u64, users: &[(String, String)]) -> bool {
        let Some(agent) = self.agents.get(&id) else { return false };
        lock(&agent.ledger).users = users.to_vec();
        true
    }

    /// Bytes billed per user name by the whole fleet, acknowledged or not.
    pub fn billed(&self) -> BTreeMap<String, u64> {
        let mut total = BTreeMap::new();
        for agent in self.agents.values() {
            for (name, bytes) in &lock(&agent.ledger).billed {
                *total.entry(name.clone()).or_default() += bytes;
            }
        }
        total
    }

    /// Traffic reports the leader has not acknowledged yet, fleet-wide.
    pub fn unacknowledged(&self) -> usize {
        self.agents.values().map(|a| lock(&a.ledger).unacked.len()).sum()
    }

    /// Heartbeats the leader acknowledged and those that failed, fleet-wide.
    pub fn heartbeats(&self) -> (u64, u64) {
        (self.counts.ok.load(Ordering::Relaxed), self.counts.failed.load(Ordering::Relaxed))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.agents.values_mut().filter_map(|a| a.task.take()).for_each(|t| t.abort());
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
    }
}

/// A node's offer: one Shadowsocks-2022 inbound on an address nobody dials.
fn offer(id: u64, capacity: u32) -> DataplaneNode {
    let mut node =
        DataplaneNode::new(id, format!("sim-{id}.invalid"), vec![InboundRecord::new(Protocol::Shadowsocks2022, 8388)]);
    node.capacity = capacity;
    node.labels.insert("sim".into(), "true".into());
    node
}

/// `Raft/Propose` of `cmd` to the leader, retried while no leader takes it.
async fn propose(links: &Links, cmd: &Command) -> Result<CommandResponse> {
    let json = serde_json::to_vec(cmd).context("encoding a command")?;
    let reply = retried(PROPOSE_WITHIN, Duration::from_millis(50), |_| {
        let (i, ch) = links.leader();
        let mut req = Request::new(RaftPayload { json: json.clone() });
        req.set_timeout(CALL_TIMEOUT);
        async move {
            let reply = RaftClient::new(ch).propose(req).await;
            if let Err(status) = &reply {
                links.failed(i, status);
            }
            reply
        }
    })
    .await
    .map_err(|s| anyhow::anyhow!("proposing through the leader: {:?}: {}", s.code(), s.message()))?;
    serde_json::from_slice(&reply.into_inner().json).context("an answer that is no CommandResponse")
}

fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

/// Runs `attempt` (told whether it is a retry) until it succeeds, fails with
/// a status not worth retrying, or `within` has passed, `pause` between tries.
async fn retried<T, F, Fut>(within: Duration, pause: Duration, mut attempt: F) -> Result<T, Status>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + within;
    let mut again = false;
    loop {
        match attempt(again).await {
            Err(status) if retryable(&status) && Instant::now() < deadline => tokio::time::sleep(pause).await,
            done => return done,
        }
        again = true;
    }
}

/// One agent's heartbeat loop.
struct Beat {
    id: u64,
    links: Arc<Links>,
    /// Every node's assigned generation, as last polled.
    generation: watch::Receiver<BTreeMap<u64, u64>>,
    acked: Arc<Mutex<Option<Instant>>>,
    ledger: Arc<Mutex<Ledger>>,
}

impl Beat {
    async fn run(self, first: tokio::time::Instant, counts: Arc<Counts>) {
        let mut tick = tokio::time::interval_at(first, HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            lock(&self.ledger).bill();
            // A redirect or an unreachable endpoint is retried at once on the next guess.
            for _ in 0..self.links.endpoints.len() {
                let (i, ch) = self.links.leader();
                let mut req = Request::new(HeartbeatRequest {
                    node_id: self.id,
                    incarnation: INCARNATION.into(),
                    // The engine double applied everything it was shown.
                    applied_generation: self.generation.borrow().get(&self.id).copied().unwrap_or(0),
                    engine_error: String::new(),
                    traffic: lock(&self.ledger).pending(),
                });
                req.set_timeout(HEARTBEAT_TIMEOUT);
                match RaftClient::new(ch).heartbeat(req).await {
                    Ok(reply) => {
                        let mut ledger = lock(&self.ledger);
                        if !ledger.unacked.is_empty() {
                            ledger.acknowledged(reply.into_inner().traffic_acked_seq);
                        }
                        drop(ledger);
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        *lock(&self.acked) = Some(Instant::now());
                        break;
                    }
                    Err(status) => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        if !self.links.failed(i, &status) {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Keeps `generations` at each node's newest `desired_generation` (its
/// assigned generation) any endpoint shows, trying the endpoints in turn.
async fn poll_generations(links: Arc<Links>, generations: watch::Sender<BTreeMap<u64, u64>>) {
    let mut tick = tokio::time::interval(GENERATION_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let n = links.endpoints.len();
    let mut next = 0;
    loop {
        tick.tick().await;
        for _ in 0..n {
            let ch = links.endpoints[next].1.clone();
            next = (next + 1) % n;
            let mut req = Request::new(ListNodesRequest { consistency: ReadConsistency::Local.into() });
            req.set_timeout(Duration::from_secs(2));
            if let Ok(list) = NodesClient::new(ch).list_nodes(req).await {
                generations.send_modify(|known| {
                    for node in list.into_inner().nodes {
                        let g = known.entry(node.id).or_default();
                        *g = (*g).max(node.desired_generation);
                    }
                });
                break;
            }
        }
    }
}

/// Creates users `{prefix}{0..count}` through every endpoint (one channel
/// each; followers forward), `concurrency` calls in flight. A retried call
/// that finds its user already there counts as done.
pub async fn create_users(endpoints: &[SocketAddr], prefix: &str, count: usize, concurrency: usize) -> Result<()> {
    if endpoints.is_empty() {
        bail!("no endpoints to create users through");
    }
    let channels: Vec<Channel> = endpoints.iter().map(|a| channel(*a)).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers: JoinSet<Result<()>> = JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (client, next, prefix) =
            (UsersClient::new(channels[w % channels.len()].clone()), next.clone(), prefix.to_owned());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok(());
                }
                create_one(&client, &format!("{prefix}{i:06}")).await?;
            }
        });
    }
    // The first failure ends the run; dropping the set aborts the other workers.
    while let Some(done) = workers.join_next().await {
        done.context("a creating task panicked")??;
    }
    Ok(())
}

async fn create_one(client: &UsersClient<Channel>, name: &str) -> Result<()> {
    let created = retried(CREATE_WITHIN, Duration::from_millis(20), |again| {
        let mut client = client.clone();
        let mut req = Request::new(CreateUserRequest { name: name.to_owned(), ..Default::default() });
        req.set_timeout(CALL_TIMEOUT);
        async move {
            match client.create_user(req).await {
                Ok(_) => Ok(()),
                // An earlier try that timed out may have created it.
                Err(s) if s.code() == Code::AlreadyExists && again => Ok(()),
                Err(s) => Err(s),
            }
        }
    });
    created.await.map_err(|s| anyhow::anyhow!("creating user {name}: {:?}: {}", s.code(), s.message()))
}

/// A Prometheus histogram as scraped: cumulative counts by upper bound.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)` in bound order; the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// What was observed after `earlier` (a scrape of the same histogram).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| earlier.buckets.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
        Histogram {
            buckets: self.buckets.iter().map(|&(le, c)| (le, c.saturating_sub(before(le)))).collect(),
            sum: self.sum - earlier.sum,
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The upper bound of the bucket holding the `q` quantile (`q` = 1: the
    /// maximum); `None` when nothing was observed.
    pub fn bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64 * q).ceil() as u64).clamp(1, self.count);
        self.buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The figures a scale run reads from a node's `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// `vpn_placements`: placements on each data-plane node.
    pub placements: BTreeMap<u64, u64>,
    /// `vpn_dataplane_nodes`: data-plane nodes by status.
    pub nodes: BTreeMap<String, u64>,
    /// `vpn_users`: users by status.
    pub users: BTreeMap<String, u64>,
    /// `vpn_failovers_total`: nodes this node, as leader, marked down.
    pub failovers: u64,
    /// `vpn_scheduler_plan_duration_seconds` (meaningful on the leader).
    pub plan: Histogram,
}

impl Scrape {
    pub async fn fetch(http: SocketAddr) -> Result<Self, String> {
        let (code, body) = http_get(http, "/metrics").await?;
        if code != 200 {
            return Err(format!("GET /metrics on {http}: {code}"));
        }
        Ok(Self::parse(&body))
    }

    pub fn parse(text: &str) -> Self {
        const PLAN: &str = "vpn_scheduler_plan_duration_seconds";
        let mut s = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let count = value.max(0.0) as u64;
            if let Some(part) = name.strip_prefix(PLAN) {
                match part {
                    "_bucket" => {
                        let le = label(labels, "le").and_then(|le| le.replace("+Inf", "inf").parse().ok());
                        s.plan.buckets.extend(le.map(|le| (le, count)));
                    }
                    "_sum" => s.plan.sum = value,
                    "_count" => s.plan.count = count,
                    _ => {}
                }
                continue;
            }
            let by_status = match name {
                "vpn_placements" => {
                    if let Some(node) = label(labels, "node").and_then(|n| n.parse().ok()) {
                        s.placements.insert(node, count);
                    }
                    continue;
                }
                "vpn_failovers_total" => {
                    s.failovers = count;
                    continue;
                }
                "vpn_dataplane_nodes" => &mut s.nodes,
                "vpn_users" => &mut s.users,
                _ => continue,
            };
            by_status.insert(label(labels, "status").unwrap_or_default().to_owned(), count);
        }
        s.plan.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        s
    }

    /// Placements over every node.
    pub fn total(&self) -> u64 {
        self.placements.values().sum()
    }

    /// Most minus fewest placements over `ids` (a node not shown counts 0).
    pub fn spread(&self, ids: &[u64]) -> u64 {
        self.extremes(ids).map_or(0, |((_, min), (_, max))| max - min)
    }

    /// The least and the most loaded of `ids`: `(id, placements)` each.
    pub fn extremes(&self, ids: &[u64]) -> Option<((u64, u64), (u64, u64))> {
        let loads = ids.iter().map(|id| (*id, self.placements.get(id).copied().unwrap_or(0)));
        Some((loads.clone().min_by_key(|l| l.1)?, loads.max_by_key(|l| l.1)?))
    }

    /// Everyone placed: `users` active users and `users * replicas`
    /// placements, all on `ids`.
    pub fn placed(&self, ids: &[u64], users: u64, replicas: u64) -> Result<(), String> {
        let active = self.users.get("active").copied().unwrap_or(0);
        let on_ids: u64 = ids.iter().filter_map(|id| self.placements.get(id)).sum();
        let total = self.total();
        if active != users || total != users * replicas || on_ids != total {
            return Err(format!(
                "{active} active users, {total} placements ({on_ids} on the expected nodes), want {users} and {}; \
                 nodes by status {:?}, {} marked down so far",
                users * replicas,
                self.nodes,
                self.failovers
            ));
        }
        Ok(())
    }

    /// Everyone [placed](Self::placed), and within `max_spread` of each other over `ids`.
    pub fn converged(&self, ids: &[u64], users: u64, replicas: u64, max_spread: u64) -> Result<(), String> {
        self.placed(ids, users, replicas)?;
        match self.spread(ids) {
            spread if spread > max_spread => Err(format!(
                "spread {spread} (at most {max_spread}): (node, placements) least and most loaded {:?}; \
                 {} nodes marked down so far",
                self.extremes(ids),
                self.failovers
            )),
            _ => Ok(()),
        }
    }
}

/// The value of `key` in a label set like `node="4",le="0.1"`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    labels[start..].split('"').next()
}

/// Pages through every user on `endpoint` and checks that there are `users`
/// of them, each on `replicas` distinct nodes, all among `allowed`.
pub async fn check_placements(
    endpoint: SocketAddr,
    users: usize,
    replicas: usize,
    allowed: &BTreeSet<u64>,
) -> Result<(), String> {
    let client = UsersClient::new(channel(endpoint)).max_decoding_message_size(64 << 20);
    let (mut seen, mut page_token) = (0, String::new());
    loop {
        // Retried as vpnctl retries: a read-index can miss its quorum for a moment.
        let page = retried(CREATE_WITHIN, Duration::from_millis(100), |_| {
            let mut client = client.clone();
            let mut req = Request::new(ListUsersRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            });
            req.set_timeout(CALL_TIMEOUT);
            async move { client.list_users(req).await }
        })
        .await
        .map_err(|s| format!("ListUsers: {}", s.message()))?
        .into_inner();
        for u in &page.users {
            let distinct: BTreeSet<u64> = u.placements.iter().copied().collect();
            if distinct.len() != replicas || u.placements.len() != replicas || !distinct.is_subset(allowed) {
                return Err(format!("user {} is placed on {:?}", u.name, u.placements));
            }
        }
        seen += page.users.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if seen != users {
        return Err(format!("{seen} users listed, {users} expected"));
    }
    Ok(())
}

/// The resident memory (VmRSS) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE vpn_placements gauge
vpn_placements{node="1000"} 4001
vpn_placements{node="1001"} 3999
vpn_dataplane_nodes{status="down"} 1
vpn_failovers_total 1
vpn_users{status="active"} 4000
# TYPE vpn_scheduler_plan_duration_seconds histogram
vpn_scheduler_plan_duration_seconds_sum 0.35
vpn_scheduler_plan_duration_seconds_count 4
vpn_scheduler_plan_duration_seconds_bucket{le="0.1"} 3
vpn_scheduler_plan_duration_seconds_bucket{le="0.2"} 4
vpn_scheduler_plan_duration_seconds_bucket{le="+Inf"} 4
"#;

    #[test]
    fn a_scrape_reads_placements_statuses_and_the_plan_histogram() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.placements, BTreeMap::from([(1000, 4001), (1001, 3999)]));
        assert_eq!((s.total(), s.spread(&[1000, 1001]), s.spread(&[1000, 1001, 1002])), (8000, 2, 4001));
        assert_eq!((s.nodes["down"], s.failovers), (1, 1));
        assert_eq!((s.plan.count, s.plan.bound(0.5), s.plan.bound(1.0)), (4, Some(0.1), Some(0.2)));
        assert!(s.converged(&[1000, 1001], 4000, 2, 2).is_ok());
        assert!(s.converged(&[1000, 1001], 4000, 2, 1).is_err());
        let later = Histogram { buckets: vec![(0.1, 3), (0.2, 6), (f64::INFINITY, 6)], sum: 0.75, count: 6 };
        let delta = later.since(&s.plan);
        assert_eq!((delta.count, delta.bound(0.5), delta.bound(1.0)), (2, Some(0.2), Some(0.2)));
        assert!((delta.mean().unwrap_or(0.0) - 0.2).abs() < 1e-9);
    }
}
