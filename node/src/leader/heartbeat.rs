//! The leader's side of a data-plane heartbeat: the node is alive; its
//! applied generation and its traffic reports go through Raft (one proposal,
//! only when something advanced); the reply names the last traffic report the
//! cluster recorded, which the node may then forget.

use vpn_proto::internal::{HeartbeatReply, HeartbeatRequest};
use vpn_storage::command::{Command, CommandResponse, TrafficReport, UserUsage};

use crate::error::Error;
use crate::node::Node;

pub async fn handle(node: &Node, req: HeartbeatRequest) -> Result<HeartbeatReply, Error> {
    node.ensure_leading()?;
    let known = |node: &Node| {
        node.state.read(|s| {
            (
                s.dataplane_nodes.get(&req.node_id).map(|n| (n.applied_generation, n.traffic_seq)),
                s.members.get(&req.node_id).map(|m| m.incarnation.to_string()),
            )
        })
    };
    let (mut recorded, mut member) = known(node);
    // A refusal is decided on the state as of now: this node's copy may lag
    // (a registration it has not applied yet), so look again after a barrier.
    if recorded.is_none() || member.as_ref().is_some_and(|m| *m != req.incarnation) {
        node.linearizable_barrier().await?;
        (recorded, member) = known(node);
    }
    let Some((applied, traffic_seq)) = recorded else {
        return Err(Error::FailedPrecondition(format!(
            "node {} is not registered as a data-plane node yet: it registers itself at start",
            req.node_id
        )));
    };
    if member.is_some_and(|m| m != req.incarnation) {
        return Err(Error::FailedPrecondition(format!(
            "node {} sent a heartbeat from another data dir than the cluster knows: run `vpnctl member remove {}` and start it under a new --id",
            req.node_id, req.node_id
        )));
    }
    let engine_error = Some(req.engine_error.clone()).filter(|e| !e.is_empty());
    node.liveness.heard(req.node_id, engine_error);

    let reports = reports(&req)?;
    let mut cmds = Vec::new();
    if req.applied_generation > applied {
        cmds.push(Command::ReportApplied { node: req.node_id, generation: req.applied_generation });
    }
    if reports.iter().any(|r| r.seq > traffic_seq) {
        cmds.push(Command::RecordTraffic { node: req.node_id, reports, at_ms: crate::api::convert::now_ms() });
    }
    let acked = match cmds.len() {
        0 => traffic_seq,
        1 => recorded_through(node.propose(cmds.remove(0)).await?, traffic_seq),
        _ => match node.propose(Command::Batch(cmds)).await? {
            CommandResponse::Batch(rs) => rs.into_iter().fold(traffic_seq, |acc, r| recorded_through(r, acc)),
            other => recorded_through(other, traffic_seq),
        },
    };
    Ok(HeartbeatReply { traffic_acked_seq: acked })
}

fn recorded_through(response: CommandResponse, otherwise: u64) -> u64 {
    match response {
        CommandResponse::TrafficRecorded { through_seq } => through_seq,
        _ => otherwise,
    }
}

/// The request's reports in domain form; a malformed one refuses the whole heartbeat.
pub(crate) fn reports(req: &HeartbeatRequest) -> Result<Vec<TrafficReport>, Error> {
    req.traffic
        .iter()
        .take(crate::limits::MAX_REPORTS)
        .map(|r| {
            if r.usage.len() > crate::limits::REPORT_USAGE_ENTRIES {
                return Err(Error::InvalidArgument {
                    field: "traffic.usage",
                    detail: format!(
                        "{} users in one report: at most {}",
                        r.usage.len(),
                        crate::limits::REPORT_USAGE_ENTRIES
                    ),
                });
            }
            let usage = r
                .usage
                .iter()
                .map(|u| {
                    let id = u.user_id.parse().map_err(|_| Error::InvalidArgument {
                        field: "traffic.usage.user_id",
                        detail: format!("{:?} is not a UUID", u.user_id),
                    })?;
                    Ok(UserUsage { name: u.name.clone(), id, bytes: u.bytes })
                })
                .collect::<Result<_, Error>>()?;
            Ok(TrafficReport { seq: r.seq, usage })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use vpn_proto::internal::{TrafficReport as WireReport, UserUsage as WireUsage};

    use super::*;

    #[test]
    fn a_report_of_more_users_than_the_limit_is_refused() {
        let usage = WireUsage { name: "a".into(), user_id: uuid::Uuid::nil().to_string(), bytes: 1 };
        let heartbeat = |n: usize| HeartbeatRequest {
            traffic: vec![WireReport { seq: 1, usage: vec![usage.clone(); n] }],
            ..Default::default()
        };
        assert_eq!(
            reports(&heartbeat(crate::limits::REPORT_USAGE_ENTRIES)).map(|r| r[0].usage.len()).ok(),
            Some(1_000_000)
        );
        let over = reports(&heartbeat(crate::limits::REPORT_USAGE_ENTRIES + 1));
        assert!(matches!(over, Err(Error::InvalidArgument { field: "traffic.usage", .. })));
    }
}
