//! Stopping and restarting nodes keeps every acknowledged write; SIGTERM is a
//! graceful stop (exit 0, leadership handed off).

use std::time::Duration;

use cluster_tests::cluster::CONVERGE;
use cluster_tests::{eventually, replicated, Cluster};
use tonic::Code;
use vpn_proto::v1::{CreateUserRequest, GetUserRequest, UpdateUserRequest, UserStatus};

#[tokio::test(flavor = "multi_thread")]
async fn all_nodes_stopped_and_restarted_keep_the_state() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut created = Vec::new();
    for i in 0..30 {
        let u = cluster
            .users(i % 3 + 1)
            .create_user(CreateUserRequest { name: format!("u{i}"), ..Default::default() })
            .await
            .expect("create")
            .into_inner();
        created.push(u);
    }
    let disabled = cluster
        .users(2)
        .update_user(UpdateUserRequest {
            name: "u7".into(),
            status: Some(UserStatus::Disabled as i32),
            ..Default::default()
        })
        .await
        .expect("disable")
        .into_inner();
    created[7] = disabled;

    for id in 1..=3 {
        let status = cluster.node_mut(id).terminate(Duration::from_secs(10));
        assert!(status.success(), "node {id} exited with {status} on SIGTERM");
    }
    for id in 1..=3 {
        cluster.node_mut(id).start();
    }
    cluster.wait_leader().await;
    for id in 1..=3 {
        for want in &created {
            // A linearizable read may still be refused as UNAVAILABLE ("retry")
            // while the restarted nodes settle (a leadership check that missed
            // its quorum on a busy machine); any other answer is final.
            let what = format!("node {id} answers for {}", want.name);
            let got = eventually(&what, CONVERGE, || async {
                let read = GetUserRequest { name: want.name.clone(), consistency: 0 };
                match cluster.users(id).get_user(read).await {
                    Ok(user) => Ok(user.into_inner()),
                    Err(s) if s.code() == Code::Unavailable => Err(s.to_string()),
                    Err(s) => panic!("node {id} lost {}: {s}", want.name),
                }
            })
            .await;
            assert_eq!(replicated(got), replicated(want.clone()), "node {id} changed {}", want.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_the_leader_hands_leadership_off_and_exits_zero() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let term_before = cluster.status(leader).await.expect("status").term;
    let status = cluster.node_mut(leader).terminate(Duration::from_secs(10));
    assert!(status.success(), "leader exited with {status}");
    assert!(
        cluster.node(leader).log_text().contains("leadership handed off"),
        "the stopping leader did not hand off:\n{}",
        cluster.node(leader).log_tail()
    );
    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, leader);
    assert!(cluster.status(new_leader).await.expect("status").term > term_before);
    cluster
        .users(new_leader)
        .create_user(CreateUserRequest { name: "after-handoff".into(), ..Default::default() })
        .await
        .expect("writes continue with two of three nodes");
}
