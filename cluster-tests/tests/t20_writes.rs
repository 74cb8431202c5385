//! Writes through any node, reads from every node.

use cluster_tests::{replicated, Cluster};
use vpn_proto::v1::{CreateUserRequest, GetUserRequest, ListUsersRequest, ReadConsistency, UserStatus};

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_a_follower_are_visible_on_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    let created = cluster
        .users(follower)
        .create_user(CreateUserRequest { name: "alice".into(), ..Default::default() })
        .await
        .expect("create through a follower")
        .into_inner();
    assert_eq!(created.name, "alice");
    assert_eq!(created.status, UserStatus::Active as i32);
    let creds = created.credentials.clone().expect("credentials");
    assert_eq!(creds.vless_uuid.len(), 36);
    assert!(!creds.ss2022_key.is_empty());
    assert!(cluster.metric(follower, "vpn_forwarded_requests_total").await.expect("metric") >= 1.0);

    // Linearizable reads (the default) see the acknowledged write on every node
    // at once, with no waiting.
    for id in 1..=3 {
        let got = cluster
            .users(id)
            .get_user(GetUserRequest { name: "alice".into(), consistency: ReadConsistency::Linearizable as i32 })
            .await
            .unwrap_or_else(|s| panic!("read on node {id}: {s}"))
            .into_inner();
        assert_eq!(replicated(got), replicated(created.clone()), "node {id} returned another user");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_through_every_user_in_name_order() {
    let cluster = Cluster::start(3, &[]).await;
    let mut names: Vec<String> = (0..25).map(|i| format!("user-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        let node = (i as u64 % 3) + 1;
        cluster
            .users(node)
            .create_user(CreateUserRequest { name: name.clone(), ..Default::default() })
            .await
            .expect("create");
    }
    names.sort();
    for id in 1..=3 {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = cluster
                .users(id)
                .list_users(ListUsersRequest { page_size: 10, page_token: token.clone(), consistency: 0 })
                .await
                .expect("list")
                .into_inner();
            assert!(page.users.len() <= 10);
            seen.extend(page.users.into_iter().map(|u| u.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, names, "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_reads_work_without_a_leader() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.users(1).create_user(CreateUserRequest { name: "bob".into(), ..Default::default() }).await.expect("create");
    // Make sure node 3 has applied it before the quorum goes away.
    cluster.users(3).get_user(GetUserRequest { name: "bob".into(), consistency: 0 }).await.expect("linearizable read");
    cluster.node_mut(1).kill9();
    cluster.node_mut(2).kill9();
    let local = GetUserRequest { name: "bob".into(), consistency: ReadConsistency::Local as i32 };
    let got = cluster.users(3).get_user(local).await.expect("a local read needs no leader").into_inner();
    assert_eq!(got.name, "bob");
    let strict = GetUserRequest { name: "bob".into(), consistency: ReadConsistency::Linearizable as i32 };
    let err = cluster.users(3).get_user(strict).await.expect_err("no quorum, no linearizable read");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}
