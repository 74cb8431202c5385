//! Replicas that apply the same log hold the same state, however the entries
//! are batched, through a snapshot transfer and across a reopen.

mod common;

use base64::Engine as _;
use common::{blank, membership, normal, state_of};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use proptest::prelude::*;
use uuid::Uuid;
use vpn_storage::command::{self, Command, LimitsChange, Move, TrafficReport, UserUsage};
use vpn_storage::model::{
    Credentials, DataplaneNode, InboundRecord, Limits, MemberRecord, NodeHealth, Placement, Protocol, ResetPeriod,
    Schedule, User, UserStatus,
};
use vpn_storage::state::State;
use vpn_storage::types::{Entry, NodeId};

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["alice", "bob", "carol", "dave"]).prop_map(String::from)
}

fn status() -> impl Strategy<Value = UserStatus> {
    prop::sample::select(UserStatus::ALL.to_vec())
}

/// Times within a few days, so expiries and resets fall due within a run.
fn at_ms() -> impl Strategy<Value = i64> {
    0i64..400_000_000
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![Just(0i64), at_ms()],
        prop_oneof![Just(0u64), 1u64..5000],
        prop::sample::select(ResetPeriod::ALL.to_vec()),
    )
        .prop_map(|(expires_at_ms, data_limit_bytes, reset)| Limits { expires_at_ms, data_limit_bytes, reset })
}

/// Two ids per name, so reports for a deleted and re-created user are seen.
fn user_id() -> impl Strategy<Value = Uuid> {
    (0u128..2).prop_map(Uuid::from_u128)
}

fn user() -> impl Strategy<Value = User> {
    (
        (name(), user_id(), any::<u128>(), any::<[u8; 16]>(), at_ms(), status()),
        (limits(), prop::collection::vec((1u64..4, 0u64..8), 0..3), "[a-z]{0,4}"),
    )
        .prop_map(|((name, id, vless, key, created_at_ms, status), (limits, placed, sub_token))| User {
            id,
            name,
            status,
            created_at_ms,
            credentials: Credentials {
                vless_uuid: Uuid::from_u128(vless),
                ss2022_key: base64::engine::general_purpose::STANDARD.encode(key),
            },
            limits,
            used_bytes: 0,
            period_start_ms: created_at_ms,
            sub_token,
            constraint: Default::default(),
            placements: placed
                .into_iter()
                .map(|(node, since_generation)| Placement { node, since_generation })
                .collect(),
        })
}

fn member() -> impl Strategy<Value = MemberRecord> {
    (1u64..4, 0u128..2).prop_map(|(id, incarnation)| MemberRecord {
        id,
        addr: format!("10.0.0.{id}:7000"),
        incarnation: Uuid::from_u128(incarnation),
    })
}

fn inbound() -> impl Strategy<Value = InboundRecord> {
    (prop::sample::select(Protocol::ALL.to_vec()), 1u16..4, proptest::option::of("[a-z]{1,3}")).prop_map(
        |(protocol, port, param)| {
            let mut inbound = InboundRecord::new(protocol, 440 + port);
            match protocol {
                Protocol::Shadowsocks2022 => inbound.ss2022_server_key = param,
                Protocol::VlessTls => {
                    inbound.tls_self_signed = param.is_some();
                    inbound.tls_cert_sha256 = param;
                }
                Protocol::VlessReality => inbound.reality_public_key = param,
            }
            inbound
        },
    )
}

/// Few ids and few distinct offers, so re-registrations repeat and change offers.
fn dataplane_node() -> impl Strategy<Value = DataplaneNode> {
    (1u64..4, prop::collection::vec(inbound(), 0..3), 0u32..2, any::<u64>(), any::<bool>()).prop_map(
        |(id, inbounds, capacity, applied_generation, labelled)| {
            let mut node = DataplaneNode::new(id, format!("n{id}.example.com"), inbounds);
            node.labels = labelled.then(|| ("region".to_owned(), "eu".to_owned())).into_iter().collect();
            node.capacity = capacity;
            node.applied_generation = applied_generation;
            node
        },
    )
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        user().prop_map(Command::CreateUser),
        (name(), proptest::option::of(status()), proptest::option::of(limits()), at_ms()).prop_map(
            |(name, status, limits, at_ms)| {
                let limits = limits.map_or_else(LimitsChange::default, |l| LimitsChange {
                    expires_at_ms: Some(l.expires_at_ms),
                    data_limit_bytes: Some(l.data_limit_bytes),
                    reset: Some(l.reset),
                });
                Command::UpdateUser { name, status, limits, at_ms }
            }
        ),
        (name(), at_ms()).prop_map(|(name, at_ms)| Command::ResetTraffic { name, at_ms }),
        (name(), "[a-z]{1,4}").prop_map(|(name, token)| Command::RotateToken { name, token }),
        (prop::collection::vec(name(), 0..3), at_ms()).prop_map(|(names, at_ms)| Command::Reevaluate { names, at_ms }),
        prop::collection::vec(
            (name(), prop::collection::vec(1u64..4, 0..2), prop::collection::vec(1u64..4, 0..2)),
            0..3
        )
        .prop_map(|moves| Command::Place(
            moves.into_iter().map(|(user, add, remove)| Move { user, add, remove }).collect()
        )),
        (1u64..4, any::<bool>()).prop_map(|(node, down)| Command::SetNodeHealth {
            node,
            health: if down { NodeHealth::Down } else { NodeHealth::Ready },
            engine_error: down.then(|| "engine exited".to_owned()),
        }),
        (1u64..4, prop::sample::select(vec![Schedule::Schedulable, Schedule::Cordoned, Schedule::Draining]))
            .prop_map(|(node, schedule)| Command::SetNodeSchedule { node, schedule }),
        (
            1u64..4,
            prop::collection::vec((0u64..6, prop::collection::vec((name(), user_id(), 0u64..3000), 0..3)), 0..3),
            at_ms()
        )
            .prop_map(|(node, reports, at_ms)| Command::RecordTraffic {
                node,
                reports: reports
                    .into_iter()
                    .map(|(seq, usage)| TrafficReport {
                        seq,
                        usage: usage.into_iter().map(|(name, id, bytes)| UserUsage { name, id, bytes }).collect(),
                    })
                    .collect(),
                at_ms,
            }),
        name().prop_map(|name| Command::DeleteUser { name }),
        member().prop_map(Command::RegisterMember),
        (1u64..4).prop_map(|id| Command::ForgetMember { id }),
        dataplane_node().prop_map(Command::RegisterDataplaneNode),
        (1u64..4, 0u64..64).prop_map(|(node, generation)| Command::ReportApplied { node, generation }),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Command(Command),
    Blank,
    Membership(Vec<NodeId>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => command().prop_map(Step::Command),
        1 => Just(Step::Blank),
        1 => prop::collection::vec(1u64..5, 1..4).prop_map(Step::Membership),
    ]
}

/// The steps as log entries with consecutive indexes from 1.
fn entries(steps: &[Step]) -> Vec<Entry> {
    (1u64..)
        .zip(steps)
        .map(|(index, step)| match step {
            Step::Command(cmd) => normal(index, cmd.clone()),
            Step::Blank => blank(index),
            Step::Membership(voters) => membership(index, voters),
        })
        .collect()
}

/// The users, members and data-plane nodes that applying `steps` to an empty state must give.
fn model(steps: &[Step]) -> State {
    let mut state = State::default();
    for step in steps {
        if let Step::Command(cmd) = step {
            command::apply(&mut state, cmd);
        }
    }
    state
}

async fn check(steps: Vec<Step>, chunk: usize) {
    let log = entries(&steps);
    let (dir_a, dir_b, dir_c) = (tempdir(), tempdir(), tempdir());

    // Two replicas, one applying in batches of `chunk`, one entry at a time.
    let (log_a, mut sm_a) = vpn_storage::open(dir_a.path()).expect("open a");
    let (log_b, mut sm_b) = vpn_storage::open(dir_b.path()).expect("open b");
    let mut responses_a = Vec::new();
    for batch in log.chunks(chunk) {
        responses_a.extend(sm_a.apply(batch.to_vec()).await.expect("apply a"));
    }
    let mut responses_b = Vec::new();
    for entry in &log {
        responses_b.extend(sm_b.apply([entry.clone()]).await.expect("apply b"));
    }
    let state = state_of(&sm_a);
    assert_eq!(responses_a, responses_b);
    assert_eq!(responses_a.len(), log.len());
    assert_eq!(state, state_of(&sm_b));
    assert_eq!(state.last_applied, log.last().map(|e| e.log_id));
    let expected = model(&steps);
    assert_eq!((&state.users, &state.members), (&expected.users, &expected.members));
    assert_eq!((&state.dataplane_nodes, state.generation), (&expected.dataplane_nodes, expected.generation));

    // A snapshot of one installed into a fresh third store.
    let snapshot = sm_a.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let (log_c, mut sm_c) = vpn_storage::open(dir_c.path()).expect("open c");
    let mut received = sm_c.begin_receiving_snapshot().await.expect("begin");
    *received = *snapshot.snapshot;
    sm_c.install_snapshot(&snapshot.meta, received).await.expect("install");
    assert_eq!(state_of(&sm_c), state);
    let current = sm_c.get_current_snapshot().await.expect("current").expect("a snapshot");
    assert_eq!(current.meta, snapshot.meta);

    // Every store reopened from its dir.
    drop((log_a, sm_a, log_b, sm_b, log_c, sm_c));
    for dir in [&dir_a, &dir_b, &dir_c] {
        let (_log, sm) = vpn_storage::open(dir.path()).expect("reopen");
        assert_eq!(state_of(&sm), state, "reopened {}", dir.path().display());
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn replicas_agree(steps in prop::collection::vec(step(), 0..48), chunk in 1usize..8) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(check(steps, chunk));
    }
}
