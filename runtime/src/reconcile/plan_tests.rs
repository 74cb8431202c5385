use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::testutil::user;

const SS: Protocol = Protocol::Shadowsocks2022;
const VL: Protocol = Protocol::VlessTls;
const HOUR_MS: u64 = 3_600_000;
/// "Now" in these plans: generations are created at small times before it.
const NOW: u64 = 10 * HOUR_MS;

fn inbound(protocol: Protocol, port: u16, hash: &str) -> DesiredInbound {
    let strategy = if protocol == SS { UserStrategy::Live } else { UserStrategy::Generations };
    DesiredInbound { protocol, listen_port: port, config_hash: hash.into(), strategy }
}

fn container(id: &str, protocol: Option<Protocol>, hash: &str, port: u16, running: bool) -> ObservedContainer {
    ObservedContainer {
        id: id.into(),
        name: format!("name-{id}"),
        protocol,
        config_hash: hash.into(),
        listen_port: Some(port),
        generation: None,
        engine_port: None,
        created_ms: None,
        running,
        started_at: String::new(),
        api: None,
        users: running.then(EngineUsers::default),
        sessions: None,
    }
}

/// VLESS generation `n` on public port 443, listening on 40000 + n, created
/// at `NOW - age_ms`, serving `live` users.
fn generation(n: u64, hash: &str, age_ms: u64, live: &[(&str, String)]) -> ObservedContainer {
    let mut c = with_users(container(&format!("g{n}"), Some(VL), hash, 443, true), live, &[]);
    c.generation = Some(n);
    c.engine_port = Some(40000 + n as u16);
    c.created_ms = Some(NOW - age_ms);
    c
}

fn sessions(mut c: ObservedContainer, n: usize) -> ObservedContainer {
    c.sessions = Some(n);
    c
}

fn cref(id: &str) -> ContainerRef {
    ContainerRef { id: id.into(), name: format!("name-{id}") }
}

fn with_users(mut c: ObservedContainer, live: &[(&str, String)], refused: &[&str]) -> ObservedContainer {
    c.users = Some(EngineUsers {
        live: live.iter().map(|(n, cred)| (n.to_string(), cred.clone())).collect(),
        refused: refused.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>(),
    });
    c
}

const DRAIN: DrainPolicy = DrainPolicy { deadline: Duration::from_secs(3600), max_generations: 3 };

fn run(
    inbounds: &[DesiredInbound],
    users: &[EngineUser],
    generation_allowed: bool,
    observed: Vec<ObservedContainer>,
) -> Plan {
    run_routed(inbounds, users, generation_allowed, observed, &[])
}

fn run_routed(
    inbounds: &[DesiredInbound],
    users: &[EngineUser],
    generation_allowed: bool,
    observed: Vec<ObservedContainer>,
    routes: &[(u16, u16)],
) -> Plan {
    let input = PlanInput { inbounds, users, generation_allowed, drain: DRAIN, now_ms: NOW };
    plan(input, &Observed { containers: observed, routes: routes.iter().copied().collect::<BTreeMap<_, _>>() })
}

fn ss_key(n: u8) -> String {
    user("x", n).credential(SS)
}

fn uuid(n: u8) -> String {
    user("x", n).credential(VL)
}

fn route(n: u64) -> Op {
    Op::Route { protocol: VL, public_port: 443, container: cref(&format!("g{n}")), engine_port: 40000 + n as u16 }
}

fn remove(n: u64, reason: RemoveReason) -> Op {
    Op::Remove { container: cref(&format!("g{n}")), protocol: Some(VL), reason }
}

#[test]
fn nothing_desired_nothing_running_is_a_no_op() {
    assert_eq!(run(&[], &[], true, vec![]), Plan::default());
}

#[test]
fn a_missing_engine_is_created() {
    let plan = run(&[inbound(SS, 8388, "h")], &[user("a", 1)], true, vec![]);
    assert_eq!(plan.ops, vec![Op::Create { protocol: SS, replaces: None, reason: CreateReason::Missing }]);
    let plan = run(&[inbound(VL, 443, "h")], &[user("a", 1)], false, vec![]);
    assert_eq!(
        plan.ops,
        vec![Op::StartGeneration { protocol: VL, generation: 1 }],
        "the throttle never holds the first"
    );
}

#[test]
fn a_changed_config_replaces_the_container_and_says_whether_it_holds_the_port() {
    let same_port = run(&[inbound(SS, 8388, "new")], &[], true, vec![container("c1", Some(SS), "old", 8388, true)]);
    let replaces = Some(Replaced { container: cref("c1"), holds_port: true });
    assert_eq!(same_port.ops, vec![Op::Create { protocol: SS, replaces, reason: CreateReason::ConfigChanged }]);

    let new_port = run(&[inbound(SS, 9000, "new")], &[], true, vec![container("c1", Some(SS), "old", 8388, true)]);
    let replaces = Some(Replaced { container: cref("c1"), holds_port: false });
    assert_eq!(new_port.ops, vec![Op::Create { protocol: SS, replaces, reason: CreateReason::ConfigChanged }]);
}

#[test]
fn a_stopped_engine_is_recreated_and_holds_no_port() {
    let plan = run(&[inbound(SS, 8388, "h")], &[user("a", 1)], true, vec![container("c1", Some(SS), "h", 8388, false)]);
    let replaces = Some(Replaced { container: cref("c1"), holds_port: false });
    assert_eq!(plan.ops, vec![Op::Create { protocol: SS, replaces, reason: CreateReason::NotRunning }]);
}

#[test]
fn containers_not_desired_or_unknown_or_duplicate_are_removed() {
    let observed = vec![
        container("a-unknown", None, "", 0, false),
        generation(1, "h", 0, &[]),
        container("c-ss-old", Some(SS), "old", 8388, true),
        container("d-ss", Some(SS), "h", 8388, true),
    ];
    let plan = run_routed(&[inbound(SS, 8388, "h")], &[], true, observed, &[(443, 40001)]);
    assert_eq!(
        plan.ops,
        vec![
            Op::Remove { container: cref("a-unknown"), protocol: None, reason: RemoveReason::Unknown },
            remove(1, RemoveReason::NotDesired),
            Op::Remove { container: cref("c-ss-old"), protocol: Some(SS), reason: RemoveReason::Duplicate },
            Op::Unroute { public_port: 443 },
        ]
    );
}

#[test]
fn among_duplicates_a_running_current_one_is_kept() {
    let observed = vec![container("a", Some(SS), "h", 1, false), container("b", Some(SS), "h", 1, true)];
    let plan = run(&[inbound(SS, 1, "h")], &[], true, observed);
    assert_eq!(
        plan.ops,
        vec![Op::Remove { container: cref("a"), protocol: Some(SS), reason: RemoveReason::Duplicate }]
    );
}

#[test]
fn live_users_are_added_removed_and_rekeyed() {
    let c = with_users(
        container("ss", Some(SS), "h", 1, true),
        &[("keep", ss_key(1)), ("gone", ss_key(2)), ("rekey", ss_key(3))],
        &[],
    );
    let users = [user("keep", 1), user("new", 4), user("rekey", 5)];
    let plan = run(&[inbound(SS, 1, "h")], &users, false, vec![c]);
    assert_eq!(
        plan.ops,
        vec![
            Op::RemoveUsers { protocol: SS, container: cref("ss"), names: vec!["gone".into(), "rekey".into()] },
            Op::AddUsers {
                protocol: SS,
                container: cref("ss"),
                users: vec![("new".into(), ss_key(4)), ("rekey".into(), ss_key(5))]
            },
        ]
    );
    assert!(!plan.generation_deferred, "live users never wait for the generation throttle");
}

#[test]
fn in_sync_engines_need_nothing() {
    let ss = with_users(container("ss", Some(SS), "h", 1, true), &[("a", ss_key(1))], &[]);
    let vl = generation(1, "h", 0, &[("a", uuid(1))]);
    let plan =
        run_routed(&[inbound(SS, 1, "h"), inbound(VL, 443, "h")], &[user("a", 1)], true, vec![ss, vl], &[(443, 40001)]);
    assert_eq!(plan, Plan::default());
}

#[test]
fn a_ready_generation_gets_the_route_then_the_old_one_drains() {
    let users = [user("a", 1), user("b", 2)];
    let old = || generation(1, "h", HOUR_MS / 2, &[("a", uuid(1))]);
    let new = || generation(2, "h", 0, &[("a", uuid(1)), ("b", uuid(2))]);
    // Just started (or found after a crash mid-handoff): route to it; the old one is not touched.
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, true, vec![old(), new()], &[(443, 40001)]);
    assert_eq!(plan.ops, vec![route(2)]);
    // Routed: the old one serves its 3 sessions on.
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, true, vec![sessions(old(), 3), new()], &[(443, 40002)]);
    assert_eq!(plan.ops, vec![]);
    assert!(plan.draining);
    // Its last session ended: gone.
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, true, vec![sessions(old(), 0), new()], &[(443, 40002)]);
    assert_eq!(plan.ops, vec![remove(1, RemoveReason::Drained)]);
    assert!(!plan.draining);
}

#[test]
fn an_added_user_starts_the_next_generation_which_the_throttle_may_defer() {
    let current = || generation(4, "h", 0, &[("a", uuid(1))]);
    let users = [user("a", 1), user("b", 2)];
    let allowed = run_routed(&[inbound(VL, 443, "h")], &users, true, vec![current()], &[(443, 40004)]);
    assert_eq!(allowed.ops, vec![Op::StartGeneration { protocol: VL, generation: 5 }]);
    assert!(!allowed.generation_deferred);

    let deferred = run_routed(&[inbound(VL, 443, "h")], &users, false, vec![current()], &[(443, 40004)]);
    assert!(deferred.ops.is_empty());
    assert!(deferred.generation_deferred);
}

#[test]
fn a_changed_config_starts_a_generation_while_the_old_one_serves() {
    let old = generation(1, "old", 0, &[("a", uuid(1))]);
    let plan = run_routed(&[inbound(VL, 443, "new")], &[user("a", 1)], false, vec![old], &[(443, 40001)]);
    assert_eq!(plan.ops, vec![Op::StartGeneration { protocol: VL, generation: 2 }]);
}

#[test]
fn a_removed_user_is_refused_on_every_generation_at_once() {
    let users = [user("a", 1)];
    let old = sessions(generation(1, "h", 1000, &[("a", uuid(1)), ("b", uuid(2))]), 4);
    let new = generation(2, "h", 0, &[("a", uuid(1)), ("b", uuid(2))]);
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, false, vec![old, new], &[(443, 40002)]);
    assert_eq!(
        plan.ops,
        vec![
            Op::Refuse { protocol: VL, container: cref("g2"), names: vec!["b".into()] },
            Op::Refuse { protocol: VL, container: cref("g1"), names: vec!["b".into()] },
        ]
    );
    assert!(!plan.generation_deferred, "a removal needs no new generation");
}

#[test]
fn a_refused_user_stays_refused_and_is_readmitted_when_desired_again() {
    let c = || with_users(generation(1, "h", 0, &[]), &[("a", uuid(1)), ("b", uuid(2))], &["b"]);
    assert_eq!(
        run_routed(&[inbound(VL, 443, "h")], &[user("a", 1)], true, vec![c()], &[(443, 40001)]),
        Plan::default()
    );

    let back = run_routed(&[inbound(VL, 443, "h")], &[user("a", 1), user("b", 2)], true, vec![c()], &[(443, 40001)]);
    assert_eq!(back.ops, vec![Op::Readmit { protocol: VL, container: cref("g1"), names: vec!["b".into()] }]);
}

#[test]
fn a_new_uuid_refuses_the_old_one_now_and_starts_a_generation_for_the_new_one() {
    let c = || generation(1, "h", 0, &[("a", uuid(1))]);
    let users = [user("a", 9)];
    let allowed = run_routed(&[inbound(VL, 443, "h")], &users, true, vec![c()], &[(443, 40001)]);
    assert_eq!(
        allowed.ops,
        vec![
            Op::StartGeneration { protocol: VL, generation: 2 },
            Op::Refuse { protocol: VL, container: cref("g1"), names: vec!["a".into()] },
        ]
    );
    let deferred = run_routed(&[inbound(VL, 443, "h")], &users, false, vec![c()], &[(443, 40001)]);
    assert_eq!(deferred.ops, vec![Op::Refuse { protocol: VL, container: cref("g1"), names: vec!["a".into()] }]);
    assert!(deferred.generation_deferred);
}

#[test]
fn the_drain_deadline_and_the_cap_cut_the_oldest_and_say_how_many_sessions() {
    let users = [user("a", 1)];
    let a = || vec![("a", uuid(1))];
    // g1's drain began when g2 was created, over an hour ago: cut at the deadline.
    let observed = vec![
        sessions(generation(1, "h", 3 * HOUR_MS, &a()), 5),
        sessions(generation(2, "h", HOUR_MS + 1, &a()), 2),
        sessions(generation(3, "h", 60_000, &a()), 1),
        generation(4, "h", 0, &a()),
    ];
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, true, observed, &[(443, 40004)]);
    assert_eq!(plan.ops, vec![remove(1, RemoveReason::DrainDeadline { sessions: 5 })]);

    // Under the deadline, but four generations where three may live: the oldest goes.
    let observed = vec![
        sessions(generation(1, "h", 50_000, &a()), 5),
        sessions(generation(2, "h", 40_000, &a()), 2),
        sessions(generation(3, "h", 30_000, &a()), 1),
        generation(4, "h", 0, &a()),
    ];
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, true, observed, &[(443, 40004)]);
    assert_eq!(plan.ops, vec![remove(1, RemoveReason::GenerationCap { sessions: 5 })]);
    assert!(plan.draining);
}

#[test]
fn dead_generations_are_removed_but_nothing_serving_is_cut_without_a_successor() {
    let users = [user("a", 1)];
    // A start that failed (exited) is cleaned up; the routed old one keeps serving.
    let mut failed = generation(2, "h", 0, &[]);
    failed.running = false;
    failed.users = None;
    let old = generation(1, "old", HOUR_MS * 5, &[("a", uuid(1))]);
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, true, vec![old, failed], &[(443, 40001)]);
    assert_eq!(
        plan.ops,
        vec![remove(2, RemoveReason::NotRunning), Op::StartGeneration { protocol: VL, generation: 3 }]
    );
}

#[test]
fn an_engine_from_before_generations_drains_as_generation_zero() {
    // Listened on the public port itself; found after an upgrade.
    let mut legacy = with_users(container("old", Some(VL), "v1", 443, true), &[("a", uuid(1))], &[]);
    legacy.generation = Some(0);
    legacy.engine_port = Some(443);
    let plan = run(&[inbound(VL, 443, "h")], &[user("a", 1)], true, vec![legacy.clone()]);
    assert_eq!(plan.ops, vec![Op::StartGeneration { protocol: VL, generation: 1 }]);

    let g1 = generation(1, "h", 0, &[("a", uuid(1))]);
    let plan =
        run_routed(&[inbound(VL, 443, "h")], &[user("a", 1)], true, vec![sessions(legacy, 0), g1], &[(443, 40001)]);
    assert_eq!(
        plan.ops,
        vec![Op::Remove { container: cref("old"), protocol: Some(VL), reason: RemoveReason::Drained }]
    );
}

#[test]
fn unknown_users_of_a_current_engine_plan_nothing() {
    let mut c = container("ss", Some(SS), "h", 1, true);
    c.users = None;
    assert_eq!(run(&[inbound(SS, 1, "h")], &[user("a", 1)], true, vec![c]), Plan::default());
}

#[test]
fn cuts_come_before_anything_else_and_the_live_api_cut_first() {
    // The VLESS inbound is listed first; its refusal still waits for the SS removal.
    let vl = generation(1, "h", 0, &[("a", uuid(1)), ("b", uuid(2))]);
    let ss = with_users(container("s", Some(SS), "h", 8388, true), &[("a", ss_key(1))], &[]);
    let plan = run_routed(
        &[inbound(VL, 443, "h"), inbound(SS, 8388, "h")],
        &[user("b", 2), user("c", 3)],
        false,
        vec![vl, ss],
        &[(443, 40001)],
    );
    let kinds: Vec<&str> = plan
        .ops
        .iter()
        .map(|op| match op {
            Op::RemoveUsers { .. } => "remove",
            Op::Refuse { .. } => "refuse",
            Op::AddUsers { .. } => "add",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["remove", "refuse", "add"], "{:?}", plan.ops);
}
