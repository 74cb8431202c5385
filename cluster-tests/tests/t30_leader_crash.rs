//! kill -9 of the leader while clients write: a new leader takes over and no
//! acknowledged write is lost, on the survivors or on the restarted node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use cluster_tests::cluster::{channel, CONVERGE};
use cluster_tests::{eventually, Cluster};
use tokio::sync::Mutex;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{CreateUserRequest, GetUserRequest, ListUsersRequest};

const WRITERS: u64 = 4;

/// Names of every user the cluster acknowledged, in order, per writer.
type Acked = Arc<Mutex<Vec<String>>>;

async fn writer(nodes: Vec<SocketAddr>, w: u64, acked: Acked, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Each attempt uses a fresh name, so a retry never blurs "acknowledged".
        let name = format!("w{w}-{n}");
        let node = nodes[(n + w) as usize % nodes.len()];
        let mut req = tonic::Request::new(CreateUserRequest { name: name.clone(), ..Default::default() });
        req.set_timeout(Duration::from_secs(3));
        if UsersClient::new(channel(node)).create_user(req).await.is_ok() {
            acked.lock().await.push(name);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn all_names(cluster: &Cluster, id: u64) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = cluster
            .users(id)
            .list_users(ListUsersRequest { page_size: 1000, page_token: token, consistency: 0 })
            .await
            .map_err(|s| format!("node {id}: {s}"))?
            .into_inner();
        names.extend(page.users.into_iter().map(|u| u.name));
        if page.next_page_token.is_empty() {
            return Ok(names);
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]).await;
    let old_leader = cluster.wait_leader().await;
    let endpoints: Vec<SocketAddr> = cluster.nodes.values().map(|p| p.grpc).collect();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(writer(endpoints.clone(), w, acked.clone(), stop.clone()))).collect();

    eventually("writes before the crash", CONVERGE, || async {
        let n = acked.lock().await.len();
        if n >= 40 {
            Ok(())
        } else {
            Err(format!("{n} acked"))
        }
    })
    .await;
    cluster.node_mut(old_leader).kill9();
    let acked_at_kill = acked.lock().await.len();
    eventually("writes acknowledged by a new leader", CONVERGE, || async {
        let n = acked.lock().await.len();
        if n >= acked_at_kill + 40 {
            Ok(())
        } else {
            Err(format!("{} acked since the kill", n - acked_at_kill))
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    let acked = acked.lock().await.clone();

    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, old_leader);
    for id in cluster.running() {
        let names = all_names(&cluster, id).await.expect("list");
        let missing: Vec<&String> = acked.iter().filter(|n| !names.contains(n)).collect();
        assert!(missing.is_empty(), "node {id} lost acknowledged writes: {missing:?}");
    }

    cluster.node_mut(old_leader).start();
    cluster.wait_leader().await;
    // A linearizable read on the restarted node waits until it has caught up.
    let last = acked.last().expect("some writes").clone();
    eventually("the restarted node serves reads", CONVERGE, || async {
        cluster
            .users(old_leader)
            .get_user(GetUserRequest { name: last.clone(), consistency: 0 })
            .await
            .map_err(|s| s.to_string())
    })
    .await;
    let names = all_names(&cluster, old_leader).await.expect("list");
    let missing: Vec<&String> = acked.iter().filter(|n| !names.contains(n)).collect();
    assert!(missing.is_empty(), "restarted node {old_leader} lacks acknowledged writes: {missing:?}");
}
