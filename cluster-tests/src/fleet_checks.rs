//! What a simulated fleet ([`crate::sim::Fleet`]) must see through a fault
//! schedule, checked from outside with linearizable reads:
//! - [`DownWatch`]: once a silent node's down mark has committed, no user is
//!   placed on it again, and its users are moved off it;
//! - [`usage_matches`]: every user's recorded usage equals what the agents
//!   billed: no traffic report counted twice or dropped.
//!
//! Reads go to the given nodes in turn; a read that fails (a partitioned or
//! paused node, an election) is skipped, so faults make the watch coarser,
//! never wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request};
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{CreateUserRequest, GetUserRequest, ListNodesRequest, ListUsersRequest, User};

use crate::cluster::channel;
use crate::sim::Fleet;

const READ: Duration = Duration::from_secs(2);
const EVERY: Duration = Duration::from_millis(300);

fn request<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(READ);
    req
}

/// Every user, page by page, each page a linearizable read.
pub async fn all_users(ch: &Channel) -> Result<Vec<User>, tonic::Status> {
    let (mut users, mut page_token) = (Vec::new(), String::new());
    // Bounded: a watch's users fit in a few pages.
    for _ in 0..100 {
        let req = ListUsersRequest { page_size: 1000, page_token, consistency: 0 };
        let page = UsersClient::new(ch.clone()).list_users(request(req)).await?.into_inner();
        users.extend(page.users);
        if page.next_page_token.is_empty() {
            return Ok(users);
        }
        page_token = page.next_page_token;
    }
    Err(tonic::Status::internal("more than 100 pages of users"))
}

fn why(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Tries `attempt` on `endpoints` in turn, every `EVERY`, until it answers
/// or `within` has passed; then fails with `what` and its last reason.
async fn until<T, F, Fut>(endpoints: &[SocketAddr], within: Duration, what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    let channels: Vec<Channel> = endpoints.iter().map(|a| channel(*a)).collect();
    let mut last = String::from("no read answered");
    for i in 0.. {
        match attempt(channels[i % channels.len()].clone()).await {
            Ok(answer) => return Ok(answer),
            Err(reason) => last = reason,
        }
        if Instant::now() >= deadline {
            break;
        }
        sleep(EVERY).await;
    }
    Err(format!("{what} within {within:?}: {last}"))
}

/// The status the cluster records for data-plane node `node`.
async fn node_status(ch: &Channel, node: u64) -> Result<Option<String>, tonic::Status> {
    let nodes = NodesClient::new(ch.clone()).list_nodes(request(ListNodesRequest { consistency: 0 })).await?;
    Ok(nodes.into_inner().nodes.into_iter().find(|n| n.id == node).map(|n| n.status))
}

/// Watches a data-plane node that has gone silent for good.
pub struct DownWatch {
    node: u64,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<Watched, String>>,
}

#[derive(Default)]
struct Watched {
    /// Reads that saw the node down.
    reads: usize,
    /// Users on the node at the first of them.
    at_first: usize,
    /// The users on the node as last read, by id.
    placed: Option<BTreeSet<String>>,
}

impl DownWatch {
    /// Starts reading, from `endpoints` in turn, whether `node` is down and
    /// which users are placed on it. Once a read saw it down: it must never
    /// read as anything else (it never heartbeats again), and each read's
    /// users on it must be among the previous read's (a user newly placed on
    /// a down node is the failure).
    pub fn start(endpoints: &[SocketAddr], node: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let channels: Vec<Channel> = endpoints.iter().map(|a| channel(*a)).collect();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut watched = Watched::default();
            // A bound besides the stop flag: an hour of reads.
            for i in 0..12_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let ch = &channels[i % channels.len()];
                watched.read(ch, node).await?;
                sleep(EVERY).await;
            }
            Ok(watched)
        });
        Self { node, stop, task }
    }

    /// Waits until a read has seen the node down.
    pub async fn seen_down(&self, endpoints: &[SocketAddr], within: Duration) -> Result<(), String> {
        let what = format!("node {} not marked down after its silence", self.node);
        until(endpoints, within, &what, |ch| async move {
            match node_status(&ch, self.node).await.map_err(why)? {
                Some(status) if status == "down" => Ok(()),
                status => Err(format!("status {status:?}")),
            }
        })
        .await
    }

    /// Stops the watch, then reads until no user is left on the node;
    /// returns a summary, or the violation the watch saw.
    pub async fn stop(self, endpoints: &[SocketAddr], within: Duration) -> Result<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut watched = self.task.await.map_err(|e| format!("the placement watch failed: {e}"))??;
        if watched.reads == 0 {
            return Err(format!("node {} was never read as down", self.node));
        }
        let channels: Vec<Channel> = endpoints.iter().map(|a| channel(*a)).collect();
        let deadline = Instant::now() + within;
        for i in 0.. {
            watched.read(&channels[i % channels.len()], self.node).await?;
            if watched.placed.as_ref().is_some_and(BTreeSet::is_empty) {
                return Ok(format!(
                    "node {} down: {} reads, no user newly placed on it; {} users on it at the first read, none at the end",
                    self.node, watched.reads, watched.at_first
                ));
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(EVERY).await;
        }
        Err(format!("users {:?} still placed on down node {} after {within:?}", watched.placed, self.node))
    }
}

impl Watched {
    /// One read; `Err` only for a violation.
    async fn read(&mut self, ch: &Channel, node: u64) -> Result<(), String> {
        let status = match node_status(ch, node).await {
            Ok(status) => status,
            Err(_) => return Ok(()),
        };
        match (status.as_deref(), self.reads) {
            (Some("down"), _) => {}
            (_, 0) => return Ok(()),
            (other, _) => return Err(format!("node {node}, silent and read as down, later read as {other:?}")),
        }
        // Read after the down mark: every placement it shows is one the
        // scheduler kept or made after the mark committed.
        let Ok(users) = all_users(ch).await else { return Ok(()) };
        let placed: BTreeSet<String> = users
            .into_iter()
            .filter(|u| u.placements.contains(&node))
            .map(|u| format!("{} ({})", u.id, u.name))
            .collect();
        if let Some(before) = &self.placed {
            let new: Vec<&String> = placed.difference(before).collect();
            if !new.is_empty() {
                return Err(format!("after node {node}'s down mark committed, {new:?} were placed on it"));
            }
        } else {
            self.at_first = placed.len();
        }
        self.reads += 1;
        self.placed = Some(placed);
        Ok(())
    }
}

/// Creates users `names` through `endpoints` (in turn, retried through
/// elections), for agents to bill; their (name, id) back.
pub async fn billable_users(
    endpoints: &[SocketAddr],
    names: &[String],
    within: Duration,
) -> Result<Vec<(String, String)>, String> {
    let mut users = Vec::new();
    for name in names {
        let id = until(endpoints, within, &format!("creating {name}"), |ch| async move {
            let mut client = UsersClient::new(ch);
            let req = CreateUserRequest { name: name.clone(), ..Default::default() };
            match client.create_user(request(req)).await {
                Ok(user) => Ok(user.into_inner().id),
                // A retry of a create that took effect.
                Err(e) if e.code() == Code::AlreadyExists => {
                    let req = GetUserRequest { name: name.clone(), consistency: 0 };
                    client.get_user(request(req)).await.map(|u| u.into_inner().id).map_err(why)
                }
                Err(e) => Err(why(e)),
            }
        })
        .await?;
        users.push((name.clone(), id));
    }
    Ok(users)
}

/// Waits until each of `names` is placed on `replicas` nodes; the users on
/// each node back.
pub async fn placed(
    endpoints: &[SocketAddr],
    names: &[String],
    replicas: usize,
    within: Duration,
) -> Result<BTreeMap<u64, usize>, String> {
    let what = format!("{names:?} not each placed on {replicas} nodes");
    until(endpoints, within, &what, |ch| async move {
        let users = all_users(&ch).await.map_err(why)?;
        let ours: Vec<&User> = users.iter().filter(|u| names.contains(&u.name)).collect();
        if ours.len() < names.len() || ours.iter().any(|u| u.placements.len() != replicas) {
            return Err(format!("{:?}", ours.iter().map(|u| (&u.name, &u.placements)).collect::<Vec<_>>()));
        }
        let mut per_node = BTreeMap::new();
        for node in ours.iter().flat_map(|u| &u.placements) {
            *per_node.entry(*node).or_default() += 1;
        }
        Ok(per_node)
    })
    .await
}

/// Waits (up to `within`) until the leader acknowledged every report of
/// `fleet` (whose billing has stopped), then reads each billed user from
/// every one of `endpoints`: its usage must equal what was billed.
pub async fn usage_matches(fleet: &Fleet, endpoints: &[SocketAddr], within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    while fleet.unacknowledged() > 0 {
        if Instant::now() >= deadline {
            return Err(format!("{} traffic reports unacknowledged after {within:?}", fleet.unacknowledged()));
        }
        sleep(EVERY).await;
    }
    let billed: BTreeMap<String, u64> = fleet.billed();
    for addr in endpoints {
        for (name, bytes) in &billed {
            let left = deadline.saturating_duration_since(Instant::now());
            let used = until(&[*addr], left, &format!("node {addr} did not read {name}"), |ch| async move {
                let req = GetUserRequest { name: name.clone(), consistency: 0 };
                UsersClient::new(ch).get_user(request(req)).await.map(|u| u.into_inner().used_bytes).map_err(why)
            })
            .await?;
            if used != *bytes {
                let how = if used > *bytes { "more: a report counted twice" } else { "less: a report dropped" };
                return Err(format!("{name}: node {addr} records {used} bytes, the agents billed {bytes} ({how})"));
            }
        }
    }
    let total: u64 = billed.values().sum();
    Ok(format!("{} users' usage equals the {total} bytes billed, on every node", billed.len()))
}
