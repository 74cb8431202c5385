//! `fuzz_agent_protocol`: the messages of `vpn.internal.v1.Agent`. The
//! requests a data-plane node sends go through the dispatcher's and the
//! leader's checks; the replies the agent reads are decoded as tonic
//! decodes them, and an `Assignment` goes through the agent's own check
//! (`Stored::from_wire`) and the runtime's validation of what the engines
//! would serve.

use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vpn_proto::internal::{
    AssignedUser, Assignment, HeartbeatReply, HeartbeatRequest, OfferedInbound, RegisterReply, RegisterRequest,
    TrafficReport, UserUsage, WatchAssignmentRequest,
};
use vpn_storage::model::Protocol;

use super::{case, decoded, messages, outcome, text, user_name, uuid_text};
use crate::agent::Stored;
use crate::dispatcher::registration;
use crate::leader::heartbeat::reports;
use crate::limits::MAX_REPORTS;

messages!(AgentMessage {
    Register(RegisterRequest),
    WatchAssignment(WatchAssignmentRequest),
    Heartbeat(HeartbeatRequest),
    Assignment(Assignment),
    RegisterReply(RegisterReply),
    HeartbeatReply(HeartbeatReply),
});

fn node_id() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..6, 1 => any::<u64>()]
}

fn protocol() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(Protocol::ALL.to_vec()).prop_map(|p| p.to_string()),
        1 => prop::sample::select(vec!["", "vless", "VLESS-TLS", "shadowsocks"]).prop_map(String::from),
        1 => text(),
    ]
}

fn inbound() -> impl Strategy<Value = OfferedInbound> {
    (
        (protocol(), prop_oneof![4 => 0u32..70_000, 1 => any::<u32>()], text(), text()),
        (text(), any::<bool>(), text(), text(), text()),
    )
        .prop_map(
            |(
                (protocol, port, ss2022_server_key, tls_server_name),
                (tls_cert_sha256, tls_self_signed, reality_public_key, reality_short_id, reality_server_name),
            )| OfferedInbound {
                protocol,
                port,
                ss2022_server_key,
                tls_server_name,
                tls_cert_sha256,
                tls_self_signed,
                reality_public_key,
                reality_short_id,
                reality_server_name,
            },
        )
}

fn register() -> impl Strategy<Value = RegisterRequest> {
    (
        (node_id(), uuid_text(), prop_oneof![3 => "[a-z0-9.-]{1,16}", 1 => text()]),
        (vec(inbound(), 0..3), hash_map(text(), text(), 0..3), any::<u32>(), any::<i64>(), text()),
    )
        .prop_map(
            |((node_id, incarnation, public_host), (inbounds, labels, capacity, cert_not_after_ms, accounting))| {
                RegisterRequest {
                    node_id,
                    incarnation,
                    public_host,
                    inbounds,
                    labels,
                    capacity,
                    cert_not_after_ms,
                    accounting,
                }
            },
        )
}

pub(super) fn heartbeat() -> impl Strategy<Value = HeartbeatRequest> {
    let usage =
        (user_name(), uuid_text(), any::<u64>()).prop_map(|(name, user_id, bytes)| UserUsage { name, user_id, bytes });
    let report = (any::<u64>(), vec(usage, 0..3)).prop_map(|(seq, usage)| TrafficReport { seq, usage }).boxed();
    let reports = prop_oneof![8 => vec(report.clone(), 0..4), 1 => vec(report, MAX_REPORTS..MAX_REPORTS + 3)];
    (node_id(), uuid_text(), any::<u64>(), text(), reports).prop_map(
        |(node_id, incarnation, applied_generation, engine_error, traffic)| HeartbeatRequest {
            node_id,
            incarnation,
            applied_generation,
            engine_error,
            traffic,
        },
    )
}

fn assignment() -> impl Strategy<Value = Assignment> {
    let user = (user_name(), uuid_text(), uuid_text(), text())
        .prop_map(|(name, id, vless_uuid, ss2022_key)| AssignedUser { name, id, vless_uuid, ss2022_key });
    (any::<u64>(), vec(user, 0..4)).prop_map(|(generation, users)| Assignment { generation, users })
}

fn message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        4 => register().prop_map(AgentMessage::Register),
        1 => node_id().prop_map(|node_id| AgentMessage::WatchAssignment(WatchAssignmentRequest { node_id })),
        4 => heartbeat().prop_map(AgentMessage::Heartbeat),
        2 => assignment().prop_map(AgentMessage::Assignment),
        1 => (any::<u64>(), text()).prop_map(|(traffic_acked_seq, cluster_id)| {
            AgentMessage::RegisterReply(RegisterReply { traffic_acked_seq, cluster_id })
        }),
        1 => any::<u64>().prop_map(|traffic_acked_seq| AgentMessage::HeartbeatReply(HeartbeatReply { traffic_acked_seq })),
    ]
}

/// A heartbeat's traffic reports as the leader takes them: at most
/// [`MAX_REPORTS`], each usage naming a user by a UUID.
pub(super) fn check_heartbeat(req: &HeartbeatRequest) -> Result<(), TestCaseError> {
    outcome(reports(req), |taken| {
        prop_assert_eq!(taken.len(), req.traffic.len().min(MAX_REPORTS));
        for (report, sent) in taken.iter().zip(&req.traffic) {
            prop_assert_eq!(report.seq, sent.seq);
            prop_assert_eq!(report.usage.len(), sent.usage.len());
        }
        Ok(())
    })
}

fn check(message: AgentMessage) -> Result<(), TestCaseError> {
    match message {
        AgentMessage::Register(req) => outcome(registration(&req), |(offer, _incarnation)| {
            prop_assert!(offer.id == req.node_id && offer.id != 0);
            prop_assert!(!offer.public_host.trim().is_empty());
            prop_assert_eq!(offer.inbounds.len(), req.inbounds.len());
            prop_assert!(offer.inbounds.iter().all(|i| i.port != 0));
            // The same offer registered again is recognised as the same.
            prop_assert!(offer.same_offer(&registration(&req).map_err(|e| TestCaseError::fail(e.to_string()))?.0));
            Ok(())
        }),
        AgentMessage::Heartbeat(req) => check_heartbeat(&req),
        AgentMessage::Assignment(wire) => {
            if let Ok(stored) = Stored::from_wire(7, &wire) {
                // Kept sorted and without duplicates; the engines' own checks refuse
                // what no engine may serve (names, keys), cleanly.
                prop_assert!(stored.users.windows(2).all(|w| w[0].name < w[1].name));
                let _ = vpn_runtime::validate(&stored.desired(&[]), 7);
            }
            Ok(())
        }
        AgentMessage::WatchAssignment(_) | AgentMessage::RegisterReply(_) | AgentMessage::HeartbeatReply(_) => Ok(()),
    }
}

#[test]
fn fuzz_agent_protocol() {
    vpn_fuzzkit::run("agent_protocol", file!(), case(message()), |case| match decoded(&case)? {
        Some(message) => check(message),
        None => Ok(()),
    });
}
