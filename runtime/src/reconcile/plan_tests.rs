use std::collections::BTreeSet;

use super::*;
use crate::testutil::user;

const SS: Protocol = Protocol::Shadowsocks2022;
const VL: Protocol = Protocol::VlessTls;

fn inbound(protocol: Protocol, port: u16, hash: &str) -> DesiredInbound {
    let strategy = if protocol == SS { UserStrategy::Live } else { UserStrategy::Reload };
    DesiredInbound { protocol, listen_port: port, config_hash: hash.into(), strategy }
}

fn container(id: &str, protocol: Option<Protocol>, hash: &str, port: u16, running: bool) -> ObservedContainer {
    ObservedContainer {
        id: id.into(),
        name: format!("name-{id}"),
        protocol,
        config_hash: hash.into(),
        listen_port: Some(port),
        running,
        started_at: String::new(),
        api: None,
        users: running.then(EngineUsers::default),
    }
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

fn run(
    inbounds: &[DesiredInbound],
    users: &[EngineUser],
    reload_allowed: bool,
    observed: Vec<ObservedContainer>,
) -> Plan {
    plan(PlanInput { inbounds, users, reload_allowed }, &Observed { containers: observed })
}

fn ss_key(n: u8) -> String {
    user("x", n).credential(SS)
}

fn uuid(n: u8) -> String {
    user("x", n).credential(VL)
}

#[test]
fn nothing_desired_nothing_running_is_a_no_op() {
    assert_eq!(run(&[], &[], true, vec![]), Plan::default());
}

#[test]
fn a_missing_engine_is_created() {
    let plan = run(&[inbound(SS, 8388, "h")], &[user("a", 1)], true, vec![]);
    assert_eq!(plan.ops, vec![Op::Create { protocol: SS, replaces: None, reason: CreateReason::Missing }]);
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
    let plan = run(&[inbound(VL, 8443, "h")], &[user("a", 1)], true, vec![container("c1", Some(VL), "h", 8443, false)]);
    let replaces = Some(Replaced { container: cref("c1"), holds_port: false });
    assert_eq!(plan.ops, vec![Op::Create { protocol: VL, replaces, reason: CreateReason::NotRunning }]);
}

#[test]
fn containers_not_desired_or_unknown_or_duplicate_are_removed() {
    let observed = vec![
        container("a-unknown", None, "", 0, false),
        container("b-vless", Some(VL), "h", 8443, true),
        container("c-ss-old", Some(SS), "old", 8388, true),
        container("d-ss", Some(SS), "h", 8388, true),
    ];
    let plan = run(&[inbound(SS, 8388, "h")], &[], true, observed);
    assert_eq!(
        plan.ops,
        vec![
            Op::Remove { container: cref("a-unknown"), protocol: None, reason: RemoveReason::Unknown },
            Op::Remove { container: cref("b-vless"), protocol: Some(VL), reason: RemoveReason::NotDesired },
            Op::Remove { container: cref("c-ss-old"), protocol: Some(SS), reason: RemoveReason::Duplicate },
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
fn removals_come_before_creations_before_user_changes() {
    let observed = vec![container("old-vless", Some(VL), "h", 443, true), container("ss", Some(SS), "h", 8388, true)];
    let inbounds = [inbound(SS, 8388, "h"), inbound(Protocol::VlessReality, 443, "r")];
    let plan = run(&inbounds, &[user("a", 1)], true, observed);
    assert_eq!(
        plan.ops,
        vec![
            Op::Remove { container: cref("old-vless"), protocol: Some(VL), reason: RemoveReason::NotDesired },
            Op::Create { protocol: Protocol::VlessReality, replaces: None, reason: CreateReason::Missing },
            Op::AddUsers { protocol: SS, container: cref("ss"), users: vec![("a".into(), ss_key(1))] },
        ]
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
    assert!(!plan.reload_deferred, "live users never wait for the reload debounce");
}

#[test]
fn in_sync_engines_need_nothing() {
    let ss = with_users(container("ss", Some(SS), "h", 1, true), &[("a", ss_key(1))], &[]);
    let vl = with_users(container("vl", Some(VL), "h", 2, true), &[("a", uuid(1))], &[]);
    let plan = run(&[inbound(SS, 1, "h"), inbound(VL, 2, "h")], &[user("a", 1)], true, vec![ss, vl]);
    assert_eq!(plan, Plan::default());
}

#[test]
fn an_added_vless_user_needs_a_reload_which_the_debounce_may_defer() {
    let c = || with_users(container("vl", Some(VL), "h", 2, true), &[("a", uuid(1))], &[]);
    let users = [user("a", 1), user("b", 2)];
    let allowed = run(&[inbound(VL, 2, "h")], &users, true, vec![c()]);
    assert_eq!(allowed.ops, vec![Op::Reload { protocol: VL, container: cref("vl") }]);
    assert!(!allowed.reload_deferred);

    let deferred = run(&[inbound(VL, 2, "h")], &users, false, vec![c()]);
    assert!(deferred.ops.is_empty());
    assert!(deferred.reload_deferred);
}

#[test]
fn a_removed_vless_user_is_refused_at_once_without_a_reload() {
    let c = with_users(container("vl", Some(VL), "h", 2, true), &[("a", uuid(1)), ("b", uuid(2))], &[]);
    let plan = run(&[inbound(VL, 2, "h")], &[user("a", 1)], true, vec![c]);
    assert_eq!(plan.ops, vec![Op::Refuse { protocol: VL, container: cref("vl"), names: vec!["b".into()] }]);
}

#[test]
fn a_refused_user_stays_refused_and_is_readmitted_when_desired_again() {
    let c = || with_users(container("vl", Some(VL), "h", 2, true), &[("a", uuid(1)), ("b", uuid(2))], &["b"]);
    assert_eq!(run(&[inbound(VL, 2, "h")], &[user("a", 1)], true, vec![c()]), Plan::default());

    let back = run(&[inbound(VL, 2, "h")], &[user("a", 1), user("b", 2)], true, vec![c()]);
    assert_eq!(back.ops, vec![Op::Readmit { protocol: VL, container: cref("vl"), names: vec!["b".into()] }]);
}

#[test]
fn a_new_uuid_refuses_the_old_one_now_and_reloads_for_the_new_one() {
    let c = || with_users(container("vl", Some(VL), "h", 2, true), &[("a", uuid(1))], &[]);
    let users = [user("a", 9)];
    let allowed = run(&[inbound(VL, 2, "h")], &users, true, vec![c()]);
    assert_eq!(
        allowed.ops,
        vec![
            Op::Refuse { protocol: VL, container: cref("vl"), names: vec!["a".into()] },
            Op::Reload { protocol: VL, container: cref("vl") },
        ]
    );
    let deferred = run(&[inbound(VL, 2, "h")], &users, false, vec![c()]);
    assert_eq!(deferred.ops, vec![Op::Refuse { protocol: VL, container: cref("vl"), names: vec!["a".into()] }]);
    assert!(deferred.reload_deferred);

    // Already refused with the old UUID: not readmitted; the reload brings the new one.
    let refused = with_users(container("vl", Some(VL), "h", 2, true), &[("a", uuid(1))], &["a"]);
    let plan = run(&[inbound(VL, 2, "h")], &users, true, vec![refused]);
    assert_eq!(plan.ops, vec![Op::Reload { protocol: VL, container: cref("vl") }]);
}

#[test]
fn a_container_being_replaced_gets_no_user_ops() {
    let c = with_users(container("vl", Some(VL), "old", 2, true), &[], &[]);
    let plan = run(&[inbound(VL, 2, "new")], &[user("a", 1)], true, vec![c]);
    assert_eq!(plan.ops.len(), 1);
    assert!(matches!(plan.ops[0], Op::Create { reason: CreateReason::ConfigChanged, .. }));
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
    let vl = with_users(container("v", Some(VL), "h", 443, true), &[("a", uuid(1)), ("b", uuid(2))], &[]);
    let ss = with_users(container("s", Some(SS), "h", 8388, true), &[("a", ss_key(1))], &[]);
    let plan =
        run(&[inbound(VL, 443, "h"), inbound(SS, 8388, "h")], &[user("b", 2), user("c", 3)], false, vec![vl, ss]);
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
    assert_eq!(kinds[..2], ["remove", "refuse"], "{:?}", plan.ops);
}
