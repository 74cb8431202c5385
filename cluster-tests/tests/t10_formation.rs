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
        assert_eq!(http_get(http, "/readyz").await.expect("readyz").0, 200);
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
