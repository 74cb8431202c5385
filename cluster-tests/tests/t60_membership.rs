//! Membership: a node joins as a learner, catches up and becomes a voter;
//! members are removed; a wiped node cannot come back under its old id.

use std::time::Duration;

use cluster_tests::cluster::CONVERGE;
use cluster_tests::{eventually, Cluster};
use vpn_proto::v1::{
    ClusterStatus, CreateUserRequest, GetUserRequest, MemberRole, ReadConsistency, RemoveMemberRequest,
};

fn role(status: &ClusterStatus, id: u64) -> Option<MemberRole> {
    status.members.iter().find(|m| m.id == id).and_then(|m| MemberRole::try_from(m.role).ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joining_node_becomes_a_voter_and_a_removed_one_is_gone() {
    let mut cluster = Cluster::start(3, &[]).await;
    for i in 0..20 {
        cluster
            .users(1)
            .create_user(CreateUserRequest { name: format!("m{i}"), ..Default::default() })
            .await
            .expect("create");
    }
    cluster.add_joining_node(4, &[]).start();
    let status = eventually("node 4 is a voter", CONVERGE, || async {
        let s = cluster.status(1).await?;
        match role(&s, 4) {
            Some(MemberRole::Voter) => Ok(s),
            other => Err(format!("node 4 is {other:?}")),
        }
    })
    .await;
    assert_eq!(status.members.iter().filter(|m| m.role == MemberRole::Voter as i32).count(), 4);
    for i in 0..20 {
        let req = GetUserRequest { name: format!("m{i}"), consistency: ReadConsistency::Local as i32 };
        cluster.users(4).get_user(req).await.unwrap_or_else(|s| panic!("m{i} missing on the new node: {s}"));
    }
    // The joined node learned the cluster's id (and presents it from now on).
    let joined = eventually("node 4 knows its cluster", CONVERGE, || async {
        let id = cluster.status(4).await?.cluster_id;
        if id.is_empty() {
            Err("no cluster id yet".to_owned())
        } else {
            Ok(id)
        }
    })
    .await;
    assert_eq!(joined, status.cluster_id);

    // Remove node 2 through node 4 (forwarded to the leader); stop it afterwards.
    // When node 2 leads, it hands leadership off and answers UNAVAILABLE, and
    // the caller retries as vpnctl does.
    let after = eventually("node 2 removed", CONVERGE, || async {
        match cluster.cluster_client(4).remove_member(RemoveMemberRequest { id: 2 }).await {
            Ok(status) => Ok(status.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable => Err(format!("retryable: {}", s.message())),
            Err(s) => panic!("remove: {s}"),
        }
    })
    .await;
    assert_eq!(role(&after, 2), None, "node 2 still listed: {after:?}");
    cluster.node_mut(2).terminate(Duration::from_secs(10));
    cluster.wait_leader().await;
    cluster
        .users(3)
        .create_user(CreateUserRequest { name: "after-removal".into(), ..Default::default() })
        .await
        .expect("writes go on");
    for id in [1, 3, 4] {
        for name in ["m0", "m19", "after-removal"] {
            let req = GetUserRequest { name: name.into(), consistency: 0 };
            cluster.users(id).get_user(req).await.unwrap_or_else(|s| panic!("{name} missing on node {id}: {s}"));
        }
    }
    let err = cluster.cluster_client(1).remove_member(RemoveMemberRequest { id: 2 }).await.expect_err("already gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_node_rejoining_under_its_old_id_is_refused() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.add_joining_node(4, &[]).start();
    eventually("node 4 is a voter", CONVERGE, || async {
        let s = cluster.status(1).await?;
        if role(&s, 4) == Some(MemberRole::Voter) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let node = cluster.node_mut(4);
    node.kill9();
    std::fs::remove_dir_all(&node.data_dir).expect("wipe the data dir");
    node.start();
    let status = node.wait_exit(CONVERGE);
    assert!(!status.success());
    let log = node.log_text();
    assert!(
        log.contains("another data dir") || log.contains("incarnation"),
        "no clear refusal in the log:\n{}",
        node.log_tail()
    );
    assert!(log.contains("member remove 4"), "the message does not say what to do:\n{}", node.log_tail());
    // The cluster is unharmed.
    cluster
        .users(1)
        .create_user(CreateUserRequest { name: "still-fine".into(), ..Default::default() })
        .await
        .expect("writes go on");
}
