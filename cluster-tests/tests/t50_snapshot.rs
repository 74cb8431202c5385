//! A node that was down while the log was compacted catches up by snapshot.

use std::time::Duration;

use cluster_tests::cluster::CONVERGE;
use cluster_tests::{eventually, Cluster};
use vpn_proto::v1::{CreateUserRequest, GetUserRequest, ReadConsistency};

#[tokio::test(flavor = "multi_thread")]
async fn a_node_behind_a_compacted_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "20"]).await;
    let leader = cluster.wait_leader().await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.node_mut(lagging).terminate(Duration::from_secs(10));

    let writer = (1..=3).find(|id| *id != lagging).expect("a live node");
    for i in 0..120 {
        cluster
            .users(writer)
            .create_user(CreateUserRequest { name: format!("s{i}"), ..Default::default() })
            .await
            .expect("create");
    }
    // The leader's log no longer reaches back to where the lagging node stopped.
    let leader = cluster.wait_leader().await;
    eventually("the leader compacted its log", CONVERGE, || async {
        let snap = cluster.metric(leader, "vpn_raft_snapshot_index").await?;
        if snap >= 100.0 {
            Ok(())
        } else {
            Err(format!("snapshot index {snap}"))
        }
    })
    .await;

    cluster.node_mut(lagging).start();
    eventually("the lagging node installed a snapshot", CONVERGE, || async {
        let n = cluster.metric(lagging, "vpn_raft_snapshots_received_total").await?;
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("{n} snapshots received"))
        }
    })
    .await;
    cluster.wait_leader().await;
    // The entries after the snapshot follow it by the log: local reads see every user soon.
    eventually("every user on the lagging node", CONVERGE, || async {
        for i in 0..120 {
            let req = GetUserRequest { name: format!("s{i}"), consistency: ReadConsistency::Local as i32 };
            cluster.users(lagging).get_user(req).await.map_err(|s| format!("s{i} missing on node {lagging}: {s}"))?;
        }
        Ok(())
    })
    .await;
}
