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
    DesiredInbound { protocol, listen_port: port, config_hash: hash.into() }
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
    let input = PlanInput { inbounds, users, handoff: true, generation_allowed, drain: DRAIN, now_ms: NOW };
    // Every user an engine holds or the state wants has a mark; the table exists while anything runs.
    let marked = observed
        .iter()
        .filter_map(|c| c.users.as_ref())
        .flat_map(|u| u.live.keys().cloned())
        .chain(users.iter().map(|u| u.name.clone()))
        .collect();
    let table = !observed.is_empty() || !routes.is_empty();
    let routes = routes.iter().copied().collect::<BTreeMap<_, _>>();
    plan(input, &Observed { containers: observed, routes, marked, table })
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
    // No session listed right after the switch: one may still be in its handshake, so it waits.
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, true, vec![sessions(old(), 0), new()], &[(443, 40002)]);
    assert_eq!(plan.ops, vec![]);
    assert!(plan.draining);
    // Still none once the handshake grace passed: gone.
    let settled = generation(2, "h", millis(HANDSHAKE_GRACE), &[("a", uuid(1)), ("b", uuid(2))]);
    let plan = run_routed(&[inbound(VL, 443, "h")], &users, true, vec![sessions(old(), 0), settled], &[(443, 40002)]);
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
    assert!(plan.generation_deferred, "the next generation leaves the removed user out");
}

#[test]
fn a_refused_user_stays_refused_and_is_readmitted_when_desired_again() {
    let c = || with_users(generation(1, "h", 0, &[]), &[("a", uuid(1)), ("b", uuid(2))], &["b"]);
    let refused = run_routed(&[inbound(VL, 443, "h")], &[user("a", 1)], true, vec![c()], &[(443, 40001)]);
    assert_eq!(refused.ops, vec![Op::StartGeneration { protocol: VL, generation: 2 }], "not refused again");

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
            Op::Refuse { protocol: VL, container: cref("g1"), names: vec!["a".into()] },
            Op::StartGeneration { protocol: VL, generation: 2 },
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

    let g1 = generation(1, "h", HOUR_MS, &[("a", uuid(1))]);
    let plan =
        run_routed(&[inbound(VL, 443, "h")], &[user("a", 1)], true, vec![sessions(legacy, 0), g1], &[(443, 40001)]);
    assert_eq!(
        plan.ops,
        vec![Op::Remove { container: cref("old"), protocol: Some(VL), reason: RemoveReason::Drained }]
    );
}

fn ss_generation(n: u64, live: &[(&str, String)]) -> ObservedContainer {
    let mut c = generation(n, "h", 0, live);
    c.id = format!("s{n}");
    c.name = format!("name-s{n}");
    c.protocol = Some(SS);
    c.listen_port = Some(8388);
    c.engine_port = Some(41000 + n as u16);
    c
}

#[test]
fn a_missing_engine_starts_its_first_generation_whatever_the_throttle() {
    let plan = run(&[inbound(SS, 8388, "h")], &[user("a", 1)], false, vec![]);
    assert_eq!(plan.ops, vec![Op::StartGeneration { protocol: SS, generation: 1 }]);
}

#[test]
fn in_sync_engines_need_nothing() {
    let ss = ss_generation(1, &[("a", ss_key(1))]);
    let vl = generation(1, "h", 0, &[("a", uuid(1))]);
    let routes = [(443, 40001), (8388, 41001)];
    let plan =
        run_routed(&[inbound(SS, 8388, "h"), inbound(VL, 443, "h")], &[user("a", 1)], true, vec![ss, vl], &routes);
    assert_eq!(plan, Plan::default());
}

#[test]
fn containers_not_desired_or_unknown_are_removed_and_their_ports_unrouted() {
    let observed = vec![container("a-unknown", None, "", 0, false), generation(1, "h", 0, &[]), ss_generation(1, &[])];
    let plan = run_routed(&[inbound(SS, 8388, "h")], &[], true, observed, &[(443, 40001), (8388, 41001)]);
    assert_eq!(
        plan.ops,
        vec![
            Op::Remove { container: cref("a-unknown"), protocol: None, reason: RemoveReason::Unknown },
            remove(1, RemoveReason::NotDesired),
            Op::Unroute { public_port: 443 },
        ]
    );
}

#[test]
fn a_removed_user_is_cut_at_once_and_left_out_of_the_next_generation_then_forgotten() {
    let current = || ss_generation(3, &[("a", ss_key(1)), ("gone", ss_key(2))]);
    let users = [user("a", 1)];
    let plan = run_routed(&[inbound(SS, 8388, "h")], &users, false, vec![current()], &[(8388, 41003)]);
    assert_eq!(plan.ops, vec![Op::Refuse { protocol: SS, container: cref("s3"), names: vec!["gone".into()] }]);
    assert!(plan.generation_deferred);
    let plan = run_routed(&[inbound(SS, 8388, "h")], &users, true, vec![current()], &[(8388, 41003)]);
    assert_eq!(
        plan.ops,
        vec![
            Op::Refuse { protocol: SS, container: cref("s3"), names: vec!["gone".into()] },
            Op::StartGeneration { protocol: SS, generation: 4 },
        ]
    );
    // Once no generation holds the user, their mark and counts go (after a last reading).
    let next = ss_generation(4, &[("a", ss_key(1))]);
    let input = PlanInput {
        inbounds: &[inbound(SS, 8388, "h")],
        users: &users,
        handoff: true,
        generation_allowed: true,
        drain: DRAIN,
        now_ms: NOW,
    };
    let observed = Observed {
        containers: vec![next],
        routes: BTreeMap::from([(8388, 41004)]),
        marked: ["a".to_string(), "gone".to_string()].into(),
        table: true,
    };
    assert_eq!(super::plan(input, &observed).ops, vec![Op::Forget { names: vec!["gone".into()] }]);
}

#[test]
fn a_node_that_serves_nothing_deletes_its_table_last() {
    let input =
        PlanInput { inbounds: &[], users: &[], handoff: true, generation_allowed: true, drain: DRAIN, now_ms: NOW };
    let empty = Observed { table: true, ..Observed::default() };
    assert_eq!(plan(input, &empty).ops, vec![Op::DeleteTable]);
    let marked = Observed { table: true, marked: ["a".to_string()].into(), ..Observed::default() };
    assert_eq!(plan(input, &marked).ops, vec![Op::Forget { names: vec!["a".into()] }], "counts are read first");
    assert_eq!(plan(input, &Observed::default()), Plan::default());
    // Users desired on a node with no inbound hold no mark.
    let users = [user("a", 1)];
    let input = PlanInput { users: &users, ..input };
    assert_eq!(plan(input, &marked).ops, vec![Op::Forget { names: vec!["a".into()] }]);
}

#[test]
fn cuts_come_before_anything_else() {
    let vl = generation(1, "h", 0, &[("a", uuid(1)), ("b", uuid(2))]);
    let ss = ss_generation(1, &[("a", ss_key(1))]);
    let plan = run_routed(
        &[inbound(VL, 443, "h"), inbound(SS, 8388, "h")],
        &[user("b", 2), user("c", 3)],
        true,
        vec![vl, ss],
        &[(443, 40001)],
    );
    let kinds: Vec<&str> = plan
        .ops
        .iter()
        .map(|op| match op {
            Op::StartGeneration { .. } => "start",
            Op::Route { .. } => "route",
            Op::Refuse { .. } => "refuse",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["refuse", "refuse", "start", "start", "route"], "{:?}", plan.ops);
}

#[test]
fn without_nftables_the_next_generation_replaces_the_previous_once_it_runs() {
    // Each generation listens on the public port itself: no table, no routes.
    let on_port = |mut c: ObservedContainer| {
        c.engine_port = Some(443);
        c
    };
    let users = [user("a", 1), user("b", 2)];
    let inbounds = [inbound(VL, 443, "h")];
    let stream_plan = |observed: Vec<ObservedContainer>| {
        let input = PlanInput {
            inbounds: &inbounds,
            users: &users,
            handoff: false,
            generation_allowed: true,
            drain: DRAIN,
            now_ms: NOW,
        };
        let marked = ["a".to_string(), "b".to_string()].into();
        plan(input, &Observed { containers: observed, routes: BTreeMap::new(), marked, table: false })
    };
    let g1 = sessions(on_port(generation(1, "h", HOUR_MS, &[("a", uuid(1))])), 4);
    // b is new: the next generation starts beside the current one; nothing is routed.
    assert_eq!(stream_plan(vec![g1.clone()]).ops, vec![Op::StartGeneration { protocol: VL, generation: 2 }]);
    // Once it runs, the previous one goes with its 4 sessions (the documented cut).
    let g2 = sessions(on_port(generation(2, "h", 1000, &[("a", uuid(1)), ("b", uuid(2))])), 0);
    let plan = stream_plan(vec![g1, g2.clone()]);
    assert_eq!(
        plan.ops,
        vec![Op::Remove { container: cref("g1"), protocol: Some(VL), reason: RemoveReason::Replaced { sessions: 4 } }]
    );
    assert_eq!(RemoveReason::Replaced { sessions: 4 }.dropped_sessions(), 4);
    assert!(!plan.draining);
    assert_eq!(stream_plan(vec![g2]), Plan::default());
}
