//! A cluster forms from `--initial-members` alone, and every node reports it.

use cluster_tests::cluster::http_get;
use cluster_tests::Cluster;
use vpn_proto::v1::MemberRole;

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_form_a_cluster_from_initial_members_alone() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    for id in 1..=3 {
        let status = cluster.status(id).await.expect("status");
        assert_eq!(status.node_id, id);
        assert_eq!(status.leader_id, Some(leader), "node {id} names another leader");
        assert!(status.term >= 1);
        let voters: Vec<(u64, String)> = status
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Voter as i32)
            .map(|m| (m.id, m.addr.clone()))
            .collect();
        let expected: Vec<(u64, String)> = (1..=3).map(|i| (i, cluster.node(i).grpc.to_string())).collect();
        assert_eq!(voters, expected, "node {id} sees other voters");

        let http = cluster.node(id).http;
        assert_eq!(http_get(http, "/livez").await.expect("livez").0, 200);
        // Ready was seen by wait_leader; on a loaded machine a leader can miss
        // its quorum's acks for a moment (its lease), so ask again until ready.
        cluster_tests::eventually("node ready", cluster_tests::cluster::CONVERGE, || async {
            match http_get(http, "/readyz?verbose").await? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code}: {body}")),
            }
        })
        .await;
        assert_eq!(cluster.metric(id, "vpn_raft_leader_id").await.expect("metric"), leader as f64);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_health_reports_serving_on_every_node() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let cluster = Cluster::start(3, &[]).await;
    for id in 1..=3 {
        let mut client = HealthClient::new(cluster_tests::cluster::channel(cluster.node(id).grpc));
        let status = cluster_tests::eventually("health SERVING", cluster_tests::cluster::CONVERGE, || {
            let mut client = client.clone();
            async move {
                let reply =
                    client.check(HealthCheckRequest { service: String::new() }).await.map_err(|s| s.to_string())?;
                match reply.into_inner().status {
                    1 => Ok(1),
                    other => Err(format!("status {other}")),
                }
            }
        })
        .await;
        assert_eq!(status, 1);
        drop(client.check(HealthCheckRequest { service: String::new() }).await);
    }
}

/// Two clusters whose member lists share one address (a typo in
/// `--initial-members`, or a reused port): the node at that address belongs to
/// one of them, and the other's Raft traffic is refused, so neither cluster's
/// data reaches the other. Before cluster ids, the shared node could take the
/// other cluster's log (seen: its users replaced by the other cluster's).
#[tokio::test(flavor = "multi_thread")]
async fn two_clusters_sharing_an_address_keep_their_data_apart() {
    use cluster_tests::cluster::CONVERGE;
    use cluster_tests::eventually;
    use vpn_proto::v1::{CreateUserRequest, ListUsersRequest, ReadConsistency};

    let mut b = Cluster::new(3, &[]);
    let mut a = Cluster::new(3, &[]);
    // A's node 3 is, by mistake, B's node 3.
    let members = format!("1={},2={},3={}", a.node(1).grpc, a.node(2).grpc, b.node(3).grpc);
    a.nodes.remove(&3);
    for p in a.nodes.values_mut() {
        p.bootstrap = vec!["--initial-members".into(), members.clone()];
    }
    // All at once: the shared node may hear from A before B has a leader.
    for p in a.nodes.values_mut().chain(b.nodes.values_mut()) {
        p.start();
    }
    a.wait_leader().await;
    b.wait_leader().await;
    a.users(1).create_user(CreateUserRequest { name: "only-in-a".into(), ..Default::default() }).await.expect("a");
    b.users(1).create_user(CreateUserRequest { name: "only-in-b".into(), ..Default::default() }).await.expect("b");

    let names = |cluster: &Cluster, id: u64| {
        let mut users = cluster.users(id);
        async move {
            let req = ListUsersRequest { consistency: ReadConsistency::Local as i32, ..Default::default() };
            let reply = users.list_users(req).await.map_err(|s| s.to_string())?.into_inner();
            Ok::<Vec<String>, String>(reply.users.into_iter().map(|u| u.name).collect())
        }
    };
    for id in 1..=3 {
        eventually(&format!("B's node {id} holds B's users only"), CONVERGE, || async {
            let found = names(&b, id).await?;
            if found == ["only-in-b"] {
                Ok(())
            } else {
                Err(format!("{found:?}"))
            }
        })
        .await;
    }
    for id in 1..=2 {
        assert_eq!(names(&a, id).await.expect("list"), ["only-in-a"], "A's node {id}");
    }

    let cluster_id = |status: vpn_proto::v1::ClusterStatus| status.cluster_id;
    let b_id = cluster_id(b.status(1).await.expect("status"));
    assert_eq!(b_id.len(), 16, "{b_id:?}");
    for id in 2..=3 {
        assert_eq!(cluster_id(b.status(id).await.expect("status")), b_id, "B's node {id}");
    }
    let a_id = cluster_id(a.status(1).await.expect("status"));
    assert_eq!(cluster_id(a.status(2).await.expect("status")), a_id);
    assert_ne!(a_id, b_id);

    // A's leader keeps trying node 3; the shared node refuses it by name.
    eventually("the shared node refuses A's traffic", CONVERGE, || async {
        let log = b.node(3).log_text();
        let refusal = format!("this node belongs to cluster {b_id}, but node");
        if log.contains(&refusal) && log.contains(&format!("of cluster {a_id} sent it Raft traffic")) {
            Ok(())
        } else {
            Err("no refusal logged yet".to_owned())
        }
    })
    .await;
    for (name, cluster) in [("A", &mut a), ("B", &mut b)] {
        for p in cluster.nodes.values_mut() {
            assert!(p.exited().is_none(), "{name}'s node {} exited:\n{}", p.id, p.log_tail());
            assert!(!p.log_text().contains("panicked"), "{name}'s node {}:\n{}", p.id, p.log_tail());
        }
    }
}
