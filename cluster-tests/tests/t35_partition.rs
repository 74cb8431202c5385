//! A leader cut off from its peers by a real partition (iptables inside its
//! network namespace) while clients still reach it: it never answers from
//! its stale copy of the state, and when the link heals, the writes it
//! forwards to the new leader get through (no connection closed under them).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_tests::cluster::{channel, CONVERGE};
use cluster_tests::netns::Lab;
use cluster_tests::Cluster;
use tokio::time::Instant;
use tonic::{Code, Status};
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{CreateUserRequest, DeleteUserRequest, GetUserRequest, User};

/// How long each client call may take before it counts as "no answer".
const CALL: Duration = Duration::from_secs(3);

async fn create(addr: SocketAddr, name: &str) -> Result<User, Status> {
    let mut req = tonic::Request::new(CreateUserRequest { name: name.into(), ..Default::default() });
    req.set_timeout(CALL);
    UsersClient::new(channel(addr)).create_user(req).await.map(|r| r.into_inner())
}

async fn get(addr: SocketAddr, name: &str) -> Result<User, Status> {
    let mut req = tonic::Request::new(GetUserRequest { name: name.into(), consistency: 0 });
    req.set_timeout(CALL);
    UsersClient::new(channel(addr)).get_user(req).await.map(|r| r.into_inner())
}

/// Waits until the nodes other than `old` agree on a leader among themselves.
async fn new_leader(cluster: &Cluster, old: u64) -> u64 {
    let others: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != old).collect();
    cluster_tests::eventually("a new leader elected by the majority", CONVERGE, || async {
        let mut seen = Vec::new();
        for id in &others {
            seen.push(cluster.status(*id).await?.leader_id);
        }
        match seen.as_slice() {
            [Some(first), rest @ ..] if *first != old && rest.iter().all(|l| *l == Some(*first)) => Ok(*first),
            _ => Err(format!("nodes {others:?} name leaders {seen:?}")),
        }
    })
    .await
}

fn start(lab: &Lab) -> Cluster {
    let mut cluster = Cluster::in_lab(lab, &[]);
    for p in cluster.nodes.values_mut() {
        p.start();
    }
    cluster
}

#[test]
fn netns_an_isolated_leader_never_refuses_a_create_from_stale_state() {
    let Some(lab) = Lab::new("netns_an_isolated_leader_never_refuses_a_create_from_stale_state", 3) else {
        return;
    };
    let cluster = start(&lab);
    lab.run_as_client(async {
        let old = cluster.wait_leader().await;
        let old_addr = cluster.node(old).grpc;
        let first = create(old_addr, "u03").await.expect("create u03 on the leader");

        lab.isolate(old);
        let new = new_leader(&cluster, old).await;
        let majority_addr = cluster.node(new).grpc;
        let deadline = Instant::now() + CONVERGE;
        loop {
            let mut req = tonic::Request::new(DeleteUserRequest { name: "u03".into() });
            req.set_timeout(CALL);
            match UsersClient::new(channel(majority_addr)).delete_user(req).await {
                // NOT_FOUND: an earlier attempt that ran out of time did delete it.
                Ok(_) => break,
                Err(s) if s.code() == Code::NotFound => break,
                Err(s) => assert!(Instant::now() < deadline, "delete through node {new}: {s}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The old leader, still cut off, is asked to create the user the
        // majority deleted: whatever it answers, never "already exists".
        let mut history = Vec::new();
        let cut_off_until = Instant::now() + Duration::from_secs(4);
        let mut created = None;
        while created.is_none() && Instant::now() < cut_off_until {
            let outcome = create(old_addr, "u03").await;
            history.push(format!("cut off: {:?}", outcome.as_ref().map(|u| &u.id).map_err(|s| s.code())));
            assert!(
                !matches!(&outcome, Err(s) if s.code() == Code::AlreadyExists),
                "the isolated old leader (node {old}) refused from its stale state: {history:?}"
            );
            created = outcome.ok();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lab.heal();
        let deadline = Instant::now() + CONVERGE;
        while created.is_none() {
            let outcome = create(old_addr, "u03").await;
            history.push(format!("healed: {:?}", outcome.as_ref().map(|u| &u.id).map_err(|s| s.code())));
            match outcome {
                Ok(user) => created = Some(user),
                Err(s) if s.code() == Code::AlreadyExists => {
                    panic!("node {old} refused a create of a deleted user: {history:?}")
                }
                Err(s) => assert!(Instant::now() < deadline, "no create succeeded on node {old}: {s}; {history:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let created = created.unwrap_or_else(|| unreachable!("the loop ends with a user"));
        assert_ne!(created.id, first.id, "a new user, not the deleted one");
        for id in cluster.nodes.keys() {
            let seen = get(cluster.node(*id).grpc, "u03").await.unwrap_or_else(|s| panic!("node {id}: {s}"));
            assert_eq!(seen.id, created.id, "node {id} agrees on the new user");
        }
    });
}

#[test]
fn netns_forwarded_writes_survive_the_heal_of_an_isolated_leader() {
    let Some(lab) = Lab::new("netns_forwarded_writes_survive_the_heal_of_an_isolated_leader", 3) else {
        return;
    };
    let cluster = start(&lab);
    lab.run_as_client(async {
        for round in 1..=2 {
            let old = cluster.wait_leader().await;
            lab.isolate(old);
            new_leader(&cluster, old).await;
            // Hold the partition: whatever the old leader's links queue
            // meanwhile reaches its peers in one burst at the heal.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let forwarded_before = forwarded(&cluster, old).await;

            let stop = Arc::new(AtomicBool::new(false));
            let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
            let healed = Arc::new(AtomicBool::new(false));
            let writers: Vec<_> = (0..8)
                .map(|w| {
                    let (stop, outcomes, healed) = (stop.clone(), outcomes.clone(), healed.clone());
                    let addr = cluster.node(old).grpc;
                    tokio::spawn(async move {
                        for n in 0.. {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let after_heal = healed.load(Ordering::Relaxed);
                            let (code, message) = match create(addr, &format!("r{round}-w{w}-{n}")).await {
                                Ok(_) => (Code::Ok, String::new()),
                                Err(s) => (s.code(), s.message().to_owned()),
                            };
                            outcomes.lock().expect("outcomes").push((after_heal, code, message));
                            if code != Code::Ok {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(500)).await;
            lab.heal();
            healed.store(true, Ordering::Relaxed);
            // Write through the old leader, now a follower that forwards,
            // while what its links queued arrives at its peers.
            tokio::time::sleep(Duration::from_secs(6)).await;
            stop.store(true, Ordering::Relaxed);
            for writer in writers {
                writer.await.expect("writer");
            }
            let outcomes = outcomes.lock().expect("outcomes").clone();
            let exhausted = outcomes.iter().filter(|(_, c, _)| *c == Code::ResourceExhausted).count();
            let ok_after_heal = outcomes.iter().filter(|(after, c, _)| *after && *c == Code::Ok).count();
            let summary = summarize(&outcomes);
            assert_eq!(
                exhausted, 0,
                "round {round}: writes through node {old} failed with RESOURCE_EXHAUSTED: {summary}"
            );
            assert!(
                ok_after_heal > 0,
                "round {round}: no write through node {old} succeeded after the heal: {summary}"
            );
            let forwarded_now = forwarded(&cluster, old).await;
            assert!(
                forwarded_now > forwarded_before,
                "round {round}: node {old} forwarded nothing ({forwarded_before} -> {forwarded_now}): {summary}"
            );
            eprintln!("round {round}: old leader {old}: {summary}");
        }
    });
    // h2 closes a connection (GOAWAY) on a burst of resets of streams it had
    // not accepted yet, and says so in the log: the links between nodes
    // must have carried the heals without that.
    for (id, p) in &cluster.nodes {
        let log = p.log_text();
        let closed: Vec<&str> = log.lines().filter(|l| l.contains("streams reached limit")).collect();
        assert!(closed.is_empty(), "node {id} closed a link on a burst of stream resets: {closed:?}");
    }
}

/// Writes node `id` has forwarded to the leader so far.
async fn forwarded(cluster: &Cluster, id: u64) -> f64 {
    cluster.metric(id, "vpn_forwarded_requests_total").await.unwrap_or(0.0)
}

/// Whether the call was made after the heal, its code and its message.
type Outcome = (bool, Code, String);

/// Counts per phase and code, each with the first message seen.
fn summarize(outcomes: &[Outcome]) -> String {
    let mut counts = std::collections::BTreeMap::<(bool, String), (usize, &str)>::new();
    for (after, code, message) in outcomes {
        counts.entry((*after, format!("{code:?}"))).or_insert((0, message)).0 += 1;
    }
    let parts: Vec<String> = counts
        .into_iter()
        .map(|((after, code), (n, message))| {
            format!("{} {code}: {n} ({message:?})", if after { "after heal" } else { "before heal" })
        })
        .collect();
    parts.join(", ")
}
