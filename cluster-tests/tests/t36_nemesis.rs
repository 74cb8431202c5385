//! Nemesis schedules against a three-node cluster in a network lab, while
//! clients run a random workload on a few users; each schedule's history
//! must be linearizable ([`cluster_tests::linearizability`]).
//!
//! A schedule: a workload of seven clients (one request in flight each, on
//! six user names of the schedule's own) against random nodes; a fault a few
//! seconds in (partitions by iptables, SIGSTOP, kill -9, kill -9 with a
//! torn write or a flipped bit in the log, a snapshot cut short or a damaged
//! sled file, a node joining and an isolated one removed), held 4-6 s, then healed; the workload goes on at least 4 s more, and until a write started
//! after the heal is acknowledged. Then, with a leader agreed again, every node reads every
//! user linearizably, and those reads join the history: a lost acknowledged
//! write or a resurrected delete shows there. Besides the history:
//! - every node lists the same users, earlier schedules' too (a node back
//!   on a damaged state machine would differ);
//! - no node's (term, leader) goes back (each node's `Status`, polled every
//!   100 ms through the whole run; one term may see several leaders one
//!   after another, see `Observer::check`);
//! - the cluster takes writes again after the heal (time to the first
//!   acknowledged write, printed with the longest stretch without one).
//!
//! Beside the registry, a simulated fleet of three data-plane agents
//! ([`cluster_tests::sim`]) heartbeats through every schedule of a test: two
//! bill traffic to users of their own at every heartbeat, the third goes
//! silent before the first schedule and is marked down. At the end:
//! - every billed user's usage, read on every node, equals what the agents
//!   billed (no traffic report counted twice or dropped);
//! - no user was placed on the down node after its down mark committed, and
//!   none is left on it ([`cluster_tests::fleet_checks`]).
//!
//! And a real data-plane node (vpnd and its sing-box engine in the
//! machine's Docker, on the host, reaching the lab over its host link)
//! serves a user only it may serve ([`Serving`]): fetches through that
//! user's sing-box client every 250 ms, from before the first schedule to
//! after the last, must all succeed; the data plane keeps serving through
//! every control-plane fault.
//!
//! Each test runs a group of schedules one after another on one cluster
//! (partitions; pauses; crashes; disk faults; membership), each schedule on
//! user names of its own.
//! Every choice (operations, users, nodes, fault timings) comes from one
//! seed, printed at the start and in every failure: `NEMESIS_SEED=<n>`
//! replays the choices (the interleaving is the machine's).
//!
//! `NEMESIS_ROUNDS=<n>` (default 1) runs each group `n` times over on the
//! same cluster: the soak (`ops/scripts/soak.sh`), and the recovery-time
//! figures (heal to the first acknowledged write, median and max per
//! nemesis, printed at the end of each test).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_tests::cluster::{channel, http_get, CONVERGE};
use cluster_tests::dataplane::DataplaneCluster;
use cluster_tests::docker;
use cluster_tests::fleet_checks::{all_users, billable_users, placed, usage_matches, DownWatch};
use cluster_tests::linearizability::{History, Input, Output, Status, Verdict};
use cluster_tests::netns::Lab;
use cluster_tests::process::send_signal;
use cluster_tests::sim::{Fleet, FIRST_ID};
use cluster_tests::traffic::{fetch_via_socks_within, HttpSource, Prober, SingBoxClient};
use cluster_tests::{eventually, lock, Cluster};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tonic::transport::Channel;
use tonic::Code;
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{
    ClusterStatus, CreateUserRequest, DeleteUserRequest, GetUserRequest, MemberRole, RemoveMemberRequest,
    StatusRequest, UpdateUserRequest, User, UserStatus,
};

/// Elections within a second even when two debug builds share a core.
const RAFT_TIMINGS: [&str; 6] =
    ["--heartbeat-ms", "100", "--election-timeout-min-ms", "500", "--election-timeout-max-ms", "1000"];
/// How long a client call may take before its outcome counts as unknown.
const CALL: Duration = Duration::from_millis(2500);
const CLIENTS: u64 = 7;
const KEYS: usize = 6;
/// A bound on each client's loop besides the schedule's end.
const MAX_OPS_PER_CLIENT: usize = 400;
/// Workload before the fault, and how long the fault holds (ms ranges).
const WARMUP_MS: (u64, u64) = (1500, 2500);
const HOLD_MS: (u64, u64) = (4000, 6000);
/// Workload after the heal, at least (and until a write started after it is acknowledged).
const AFTER_HEAL: Duration = Duration::from_secs(4);
/// How often each node's own view (term, leader) is polled.
const POLL: Duration = Duration::from_millis(100);
/// Client ids of the final reads: this plus the node read from.
const FINAL_READER: u64 = 100;
/// For failure messages: how to keep the nodes' logs of a replay.
const KEEP: &str = "VPN_TEST_KEEP_DIRS=1 keeps the nodes' logs";

#[derive(Clone, Copy, Debug)]
enum Nemesis {
    /// The leader alone on its side: the 2|1 split with the leader in the minority.
    IsolateLeader,
    /// A follower alone: it campaigns in rising terms and comes back with them.
    IsolateFollower,
    /// Non-transitive: the leader and one follower lose each other; the
    /// third node (the bridge) still sees both.
    Bridge,
    PauseLeader,
    PauseFollower,
    /// kill -9 of the leader, restarted on its data dir at the heal.
    CrashLeader,
    /// kill -9 of a node (the leader half the time), then a torn write at
    /// the end of its newest log segment: part of a frame that was never
    /// acknowledged (the disk wrote one sector of it). At the heal it must
    /// start, cut the tail off, and catch up.
    TornWrite,
    /// kill -9 of a follower, then one flipped bit inside an early frame of
    /// its log (acknowledged data): at the heal it must refuse to start and
    /// name the segment; once the bit is restored it starts and catches up.
    BitFlip,
    /// kill -9 of a follower, then its snapshot file cut to half (a disk
    /// that lost its end): at the heal it must refuse to start, naming the
    /// file; with the file restored it starts and catches up. Its group
    /// snapshots every 100 entries, so every node has one.
    SnapshotCut,
    /// kill -9 of a follower, then its state machine's sled file
    /// (`raft/db`) damaged: one flipped bit at a random offset, or its last
    /// 4 KiB cut off. At the heal it either refuses to start, naming its
    /// `raft` dir and the fix (then the file is restored), or it starts, and
    /// the final reads it serves and the history must show nothing lost or
    /// changed.
    SledDamage,
    /// A follower isolated; meanwhile a new node joins (learner, then voter)
    /// and the isolated follower is removed from the membership, then stays
    /// cut off for the hold (campaigning in rising terms). It stays up
    /// through the heal (a removed member must not disturb the others), then stops.
    Membership,
    /// A fault on a random node (the last seen leader half the time) about
    /// every 1-1.6 s: isolate, cut a link, pause or kill; each undone before the next.
    Rolling,
}

#[test]
fn netns_nemesis_partitions_keep_histories_linearizable() {
    let test = "netns_nemesis_partitions_keep_histories_linearizable";
    run(test, 1, &[Nemesis::IsolateLeader, Nemesis::IsolateFollower, Nemesis::Bridge]);
}

#[test]
fn netns_nemesis_pauses_keep_histories_linearizable() {
    run("netns_nemesis_pauses_keep_histories_linearizable", 2, &[Nemesis::PauseLeader, Nemesis::PauseFollower]);
}

#[test]
fn netns_nemesis_disk_faults_keep_histories_linearizable() {
    let test = "netns_nemesis_disk_faults_keep_histories_linearizable";
    run(test, 4, &[Nemesis::TornWrite, Nemesis::BitFlip, Nemesis::SledDamage]);
}

#[test]
fn netns_nemesis_snapshot_damage_keeps_histories_linearizable() {
    let test = "netns_nemesis_snapshot_damage_keeps_histories_linearizable";
    run_with(test, 6, &[Nemesis::SnapshotCut], &["--snapshot-every", "100"]);
}

#[test]
fn netns_nemesis_membership_changes_under_a_partition_keep_histories_linearizable() {
    let test = "netns_nemesis_membership_changes_under_a_partition_keep_histories_linearizable";
    run(test, 5, &[Nemesis::Membership]);
}

#[test]
fn netns_nemesis_crashes_keep_histories_linearizable() {
    run("netns_nemesis_crashes_keep_histories_linearizable", 3, &[Nemesis::CrashLeader, Nemesis::Rolling]);
}

/// Runs `schedules` one after another on one cluster (each on its own
/// users), `NEMESIS_ROUNDS` times over.
fn run(test: &str, group: u64, schedules: &[Nemesis]) {
    run_with(test, group, schedules, &[]);
}

/// [`run`] with `extra` flags for every node.
fn run_with(test: &str, group: u64, schedules: &[Nemesis], extra: &[&str]) {
    if !docker::available(test) {
        return;
    }
    let Some(lab) = Lab::with_host_link(test, 3) else { return };
    let seed = seed();
    let rounds = rounds();
    eprintln!("{test}: NEMESIS_SEED={seed} (set it to replay these choices), NEMESIS_ROUNDS={rounds}");
    let mut rng = Rng::new(seed ^ group);
    // The data plane runs on the host (its engines use host networking), on
    // a runtime of its own there; the workload runs in the lab's client
    // namespace.
    let host = tokio::runtime::Runtime::new().expect("the host's runtime");
    let voters = Cluster::in_lab(&lab, &[&RAFT_TIMINGS[..], extra].concat());
    let mut dp = host.block_on(DataplaneCluster::with_voters(voters));
    let serving = host.block_on(Serving::start(&mut dp));
    let started = Instant::now();
    let cluster = &mut dp.cluster;
    lab.run_as_client(async {
        let observer = Observer::start(cluster);
        let fail = |what: &str, e: String| -> ! {
            panic!("{test}, NEMESIS_SEED={seed}: {what}: {e}; {KEEP}");
        };
        let endpoints: Vec<SocketAddr> = cluster.control_plane().map(|p| p.grpc).collect();
        let (billing, silent) = ([FIRST_ID, FIRST_ID + 1], FIRST_ID + 2);
        let mut fleet = Fleet::start(&endpoints, 3, 0).await.unwrap_or_else(|e| fail("the fleet", format!("{e:#}")));
        let names: Vec<String> = (0..3).map(|i| format!("billed-{i}")).collect();
        let billed = billable_users(&endpoints, &names, CONVERGE).await.unwrap_or_else(|e| fail("billed users", e));
        for id in billing {
            fleet.bill(id, &billed);
        }
        // Users on the node that goes silent, so that moving them off it is seen.
        let spread = placed(&endpoints, &names, 2, CONVERGE).await.unwrap_or_else(|e| fail("placement", e));
        fleet.stop_heartbeats(silent);
        let down = DownWatch::start(&endpoints, silent);
        down.seen_down(&endpoints, CONVERGE * 2).await.unwrap_or_else(|e| fail("the silent node", e));
        let mut recovery: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        let plan = (0..rounds).flat_map(|_| schedules.iter());
        for (n, nemesis) in plan.enumerate() {
            let ctx = format!("{test}, NEMESIS_SEED={seed}, schedule {n} ({nemesis:?})");
            let (summary, first_ack) = schedule(&lab, cluster, &observer, *nemesis, n, &mut rng, &ctx).await;
            eprintln!("{ctx}: {summary}");
            recovery.entry(format!("{nemesis:?}")).or_default().push(first_ack);
        }
        let terms = observer.stop().await.unwrap_or_else(|e| panic!("{test}, NEMESIS_SEED={seed}: {e}"));
        for id in billing {
            fleet.bill(id, &[]);
        }
        let members: Vec<SocketAddr> = cluster.control_plane().map(|p| p.grpc).collect();
        let usage = usage_matches(&fleet, &members, CONVERGE).await.unwrap_or_else(|e| fail("usage", e));
        let placement = down.stop(&members, CONVERGE).await.unwrap_or_else(|e| fail("placement", e));
        eprintln!("{test}: NEMESIS_SEED={seed}: {usage}; users per node before the silence {spread:?}; {placement}");
        let runs = schedules.len() * rounds;
        eprintln!("{test}: NEMESIS_SEED={seed}: {runs} schedules, {terms}, {:.1?}", started.elapsed());
        for (nemesis, mut times) in recovery {
            times.sort();
            let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
            eprintln!(
                "recovery {nemesis}: heal to the first acknowledged write, median {median:.2?}, max {max:.2?} \
                 over {} rounds",
                times.len()
            );
        }
    });
    let (probes, failed) = host.block_on(serving.prober.stop());
    assert!(probes >= 20, "{test}, NEMESIS_SEED={seed}: only {probes} probes of the data plane ran");
    assert!(
        failed.is_empty(),
        "{test}, NEMESIS_SEED={seed}: the data plane failed {} of {probes} probes through the schedules: \
         {failed:?}; {KEEP}\n{}",
        failed.len(),
        dp.diagnose(serving.node)
    );
    eprintln!("{test}: NEMESIS_SEED={seed}: the data plane served all {probes} probes through every schedule");
}

/// A real data-plane node (its engine in the machine's Docker) serving one
/// user whom only it may serve, and a [`Prober`] fetching through that
/// user's sing-box client every 250 ms from before the first schedule to
/// after the last: the data plane must keep serving through every
/// control-plane fault, as its engines need nothing of the control plane
/// once applied.
struct Serving {
    node: u64,
    prober: Prober,
    _source: HttpSource,
    _client: SingBoxClient,
}

impl Serving {
    const USER: &str = "probe";

    async fn start(dp: &mut DataplaneCluster) -> Serving {
        const PROTOCOL: &str = "shadowsocks-2022";
        let source = HttpSource::start().await;
        let node = dp.add_node_with(&[PROTOCOL], &["--labels", "nemesis=probe"]);
        dp.ok(&["user", "add", Self::USER, "--constraint", "nemesis=probe"]).await;
        dp.caught_up(node.id, 1).await;
        let client = dp.client(&dp.link(Self::USER, node.id, PROTOCOL).await).await;
        let (proxy, origin) = (client.proxy, source.addr);
        eventually("the probe user served before the first schedule", CONVERGE, || async move {
            fetch_via_socks_within(proxy, origin, "/4096", 4096, Duration::from_secs(2)).await
        })
        .await;
        let prober = Prober::start(vec![(PROTOCOL.to_owned(), proxy)], origin);
        Serving { node: node.id, prober, _source: source, _client: client }
    }
}

/// `NEMESIS_ROUNDS` if set, else 1.
fn rounds() -> usize {
    match std::env::var("NEMESIS_ROUNDS") {
        Ok(s) => s
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("NEMESIS_ROUNDS={s:?}: want a count above 0")),
        Err(_) => 1,
    }
}

/// `NEMESIS_SEED` if set, else from the clock.
fn seed() -> u64 {
    match std::env::var("NEMESIS_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| panic!("NEMESIS_SEED={s:?} is not a u64: {e}")),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            now.as_nanos() as u64
        }
    }
}

/// One schedule: workload, fault, heal, recovery, final reads, checks. A
/// one-line summary back, and the time from the heal to the first
/// acknowledged write.
async fn schedule(
    lab: &Lab,
    cluster: &mut Cluster,
    observer: &Observer,
    nemesis: Nemesis,
    n: usize,
    rng: &mut Rng,
    ctx: &str,
) -> (String, Duration) {
    let t0 = Instant::now();
    let leader = agreed_leader(cluster).await.unwrap_or_else(|e| panic!("{ctx}: before the schedule: {e}"));
    let keys: Vec<String> = (0..KEYS).map(|k| format!("s{n}-k{k}")).collect();
    let nodes: Vec<(u64, SocketAddr)> = cluster.control_plane().map(|p| (p.id, p.grpc)).collect();
    let shared = Arc::new(Shared::new());
    let clients: Vec<JoinHandle<usize>> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(c, rng.next(), keys.clone(), nodes.clone(), shared.clone())))
        .collect();

    sleep(Duration::from_millis(rng.between(WARMUP_MS))).await;
    let mut faults = Faults::new(t0);
    let removed = inflict(nemesis, lab, cluster, leader, observer, rng, &mut faults).await;
    let healed = Instant::now();
    let deadline = healed + CONVERGE;
    while Instant::now() < deadline && (shared.first_ack_after(healed).is_none() || healed.elapsed() < AFTER_HEAL) {
        sleep(Duration::from_millis(100)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap_or_else(|e| panic!("{ctx}: a client task failed: {e}"));
    }
    // A member removed by the nemesis ran on through the heal (a removed node
    // must not disturb the others); now it leaves the cluster's processes.
    if let Some(gone) = removed.and_then(|id| cluster.nodes.remove(&id)) {
        let mut gone = gone;
        gone.kill9();
        faults.note(format!("node {} stopped", gone.id));
    }
    let faults = faults.log.join("; ");
    let first_ack = shared.first_ack_after(healed).unwrap_or_else(|| {
        panic!("{ctx}: no write started after the heal was acknowledged within {CONVERGE:?}; faults: {faults}; {KEEP}")
    });

    let leader =
        agreed_leader(cluster).await.unwrap_or_else(|e| panic!("{ctx}: after the heal: {e}; faults: {faults}; {KEEP}"));
    let members: Vec<(u64, SocketAddr)> = cluster.control_plane().map(|p| (p.id, p.grpc)).collect();
    final_reads(&shared, &keys, &members)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: final reads (leader {leader}): {e}; faults: {faults}; {KEEP}"));
    replicas_agree(&members)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: replicas (leader {leader}): {e}; faults: {faults}; {KEEP}"));

    let ops = shared.history.ops();
    match shared.history.check() {
        Verdict::Linearizable => {}
        verdict => panic!("{ctx}; faults: {faults}; {KEEP}\n{verdict}"),
    }
    let terms = observer.check().unwrap_or_else(|e| panic!("{ctx}: {e}; faults: {faults}; {KEEP}"));
    let unknown = ops.iter().filter(|op| op.output == Output::Unknown).count();
    let codes: Vec<String> = lock(&shared.codes).iter().map(|(code, n)| format!("{code} {n}")).collect();
    let odd = lock(&shared.odd).clone();
    let summary = format!(
        "{} ops, {unknown} unknown ({}), {} odd {odd:?}, first ack {first_ack:.2?} after the heal, \
         longest without an ack {:.2?}, {terms}, {:.1?}; faults: {faults}",
        ops.len(),
        codes.join(", "),
        odd.len(),
        shared.longest_gap(),
        t0.elapsed(),
    );
    (summary, first_ack)
}

/// Applies `nemesis`, holds it, and undoes it; returns the member it
/// removed from the cluster, if it did.
async fn inflict(
    nemesis: Nemesis,
    lab: &Lab,
    cluster: &mut Cluster,
    leader: u64,
    observer: &Observer,
    rng: &mut Rng,
    faults: &mut Faults,
) -> Option<u64> {
    let ids: Vec<u64> = cluster.control_plane().map(|p| p.id).collect();
    let followers: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    let hold = Duration::from_millis(rng.between(HOLD_MS));
    let follower = rng.pick(&followers);
    match nemesis {
        Nemesis::IsolateLeader => faults.isolate(lab, leader),
        Nemesis::IsolateFollower => faults.isolate(lab, follower),
        Nemesis::Bridge => faults.cut(lab, leader, follower),
        Nemesis::PauseLeader => faults.pause(cluster, leader),
        Nemesis::PauseFollower => faults.pause(cluster, follower),
        Nemesis::CrashLeader => faults.kill(cluster, leader),
        Nemesis::TornWrite => {
            let target = if rng.below(2) == 0 { leader } else { follower };
            faults.kill(cluster, target);
            sleep(hold).await;
            let segment = log_segments(&cluster.node(target).data_dir).pop().expect("a log segment");
            let end = vpn_storage::disk_faults::tear_tail(&segment).expect("tear the log's tail");
            faults.note(format!("torn write at byte {end} of {}", segment.display()));
            faults.undo(lab, cluster);
            return None;
        }
        Nemesis::BitFlip => {
            faults.kill(cluster, follower);
            sleep(hold).await;
            let segment = log_segments(&cluster.node(follower).data_dir).remove(0);
            // Inside the first frame's body: the magic (8), its header (16), a few bytes in.
            let offset = 8 + 16 + 3;
            flip_bit(&segment, offset);
            faults.note(format!("bit flip at byte {offset} of {}", segment.display()));
            refused_to_start(cluster, follower, &segment).await;
            flip_bit(&segment, offset);
            faults.note(format!("node {follower} refused to start; bit restored"));
            faults.undo(lab, cluster);
            return None;
        }
        Nemesis::SledDamage => {
            faults.kill(cluster, follower);
            sleep(hold).await;
            let file = cluster.node(follower).data_dir.join("raft").join("db");
            let whole = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // As many draws whatever the branch: the choices stay the seed's.
            let (flip, offset) = (rng.below(2) == 0, rng.below(whole.len() as u64) as usize);
            if flip {
                flip_bit(&file, offset);
                faults.note(format!("bit flip at byte {offset} of {} ({} bytes)", file.display(), whole.len()));
            } else {
                let keep = whole.len().saturating_sub(4096);
                std::fs::write(&file, &whole[..keep]).expect("cut the sled file");
                faults.note(format!("{} cut to {keep} of {} bytes", file.display(), whole.len()));
            }
            let raft_dir = file.parent().expect("raft dir").to_owned();
            if started_or_refused(cluster, follower, &raft_dir).await {
                faults.killed.remove(&follower);
                faults.note(format!("node {follower} started on it"));
            } else {
                std::fs::write(&file, &whole).expect("restore the sled file");
                faults.note(format!("node {follower} refused to start; file restored"));
            }
            faults.undo(lab, cluster);
            return None;
        }
        Nemesis::Rolling => {
            let end = Instant::now() + hold;
            for _ in 0..10 {
                if Instant::now() >= end {
                    break;
                }
                faults.undo(lab, cluster);
                // As many draws whatever the branch: the choices stay the seed's.
                let (towards_leader, random, other, kind) =
                    (rng.below(2) == 0, rng.pick(&ids), rng.next(), rng.below(4));
                let target = observer.last_leader().filter(|_| towards_leader).unwrap_or(random);
                let others: Vec<u64> = ids.iter().copied().filter(|id| *id != target).collect();
                match kind {
                    0 => faults.isolate(lab, target),
                    1 => faults.cut(lab, target, others[(other % others.len() as u64) as usize]),
                    2 => faults.pause(cluster, target),
                    _ => faults.kill(cluster, target),
                }
                sleep(Duration::from_millis(rng.between((900, 1600)))).await;
            }
            faults.undo(lab, cluster);
            return None;
        }
        Nemesis::SnapshotCut => {
            let snapshot = cluster.node(follower).data_dir.join("snapshots").join("current");
            // Under load the workload may not have reached the snapshot threshold yet.
            let deadline = Instant::now() + MEMBERSHIP;
            while !snapshot.exists() {
                assert!(Instant::now() < deadline, "node {follower} took no snapshot within {MEMBERSHIP:?}");
                sleep(Duration::from_millis(100)).await;
            }
            faults.kill(cluster, follower);
            sleep(hold).await;
            let whole = std::fs::read(&snapshot)
                .unwrap_or_else(|e| panic!("node {follower} has no snapshot at {}: {e}", snapshot.display()));
            std::fs::write(&snapshot, &whole[..whole.len() / 2]).expect("cut the snapshot");
            faults.note(format!("snapshot cut to {} of {} bytes", whole.len() / 2, whole.len()));
            refused_to_start(cluster, follower, &snapshot).await;
            std::fs::write(&snapshot, &whole).expect("restore the snapshot");
            faults.note(format!("node {follower} refused to start; snapshot restored"));
            faults.undo(lab, cluster);
            return None;
        }
        Nemesis::Membership => {
            let others: Vec<u64> = ids.iter().copied().filter(|id| *id != follower).collect();
            let id = lab.node_ids().into_iter().max().unwrap_or(0) + 1;
            lab.add_node(id);
            // Isolated from the new node too.
            faults.isolate(lab, follower);
            let joining = cluster.add_lab_node(lab, id);
            joining.start();
            observer.watch(id, joining.grpc);
            faults.note(format!("node {id} joins"));
            let ready = |status: &ClusterStatus| role(status, id) == Some(MemberRole::Voter);
            membership_settles(cluster, &others, ready, &format!("node {id} to become a voter")).await;
            faults.note(format!("node {id} is a voter"));
            remove_member(cluster, &others, follower).await;
            let gone = |status: &ClusterStatus| role(status, follower).is_none();
            membership_settles(cluster, &others, gone, &format!("node {follower} to leave the membership")).await;
            faults.note(format!("node {follower} removed"));
            // Still cut off, the removed node times out and campaigns in rising terms.
            sleep(hold).await;
            faults.undo(lab, cluster);
            return Some(follower);
        }
    }
    sleep(hold).await;
    faults.undo(lab, cluster);
    None
}

/// Starts node `id` on a damaged `damaged`: true once it is ready, false
/// once it exited with a failure that names `damaged` and the fix (then it
/// is stopped), within 30 s.
async fn started_or_refused(cluster: &mut Cluster, id: u64, damaged: &std::path::Path) -> bool {
    let node = cluster.node_mut(id);
    node.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = node.exited() {
            let log = node.log_tail();
            node.kill9();
            assert!(!status.success(), "node {id} stopped on a damaged {} with success", damaged.display());
            let named =
                log.contains(&format!("{} is corrupt", damaged.display())) && log.contains("restore it from a backup");
            assert!(named, "node {id}'s refusal names {} and the fix:\n{log}", damaged.display());
            return false;
        }
        if matches!(http_get(node.http, "/readyz").await, Ok((200, _))) {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} neither ready nor stopped on a damaged {} in 30 s; log:\n{}",
            damaged.display(),
            node.log_tail()
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Starts node `id` on its damaged data dir: it must exit with a failure
/// that names `damaged` and the fix, within 30 s.
async fn refused_to_start(cluster: &mut Cluster, id: u64, damaged: &std::path::Path) {
    let node = cluster.node_mut(id);
    node.start();
    let exited = async {
        loop {
            if let Some(status) = node.exited() {
                return status;
            }
            sleep(Duration::from_millis(50)).await;
        }
    };
    let status = timeout(Duration::from_secs(30), exited)
        .await
        .unwrap_or_else(|_| panic!("node {id} started on a damaged {}; log:\n{}", damaged.display(), node.log_tail()));
    node.kill9();
    let log = node.log_tail();
    assert!(!status.success(), "node {id} refused the damaged data dir with a failure status");
    let named = log.contains(&format!("{} is corrupt", damaged.display())) && log.contains("restore it from a backup");
    assert!(named, "node {id}'s refusal names {} and the fix:\n{log}", damaged.display());
}

/// How long a membership change may take while a fault is in force (and a
/// follower may take to reach its first snapshot under load).
const MEMBERSHIP: Duration = Duration::from_secs(60);

fn role(status: &ClusterStatus, id: u64) -> Option<MemberRole> {
    status.members.iter().find(|m| m.id == id).and_then(|m| MemberRole::try_from(m.role).ok())
}

/// Waits until one of `asked` reports a membership for which `settled` holds.
async fn membership_settles(cluster: &Cluster, asked: &[u64], settled: impl Fn(&ClusterStatus) -> bool, what: &str) {
    let deadline = Instant::now() + MEMBERSHIP;
    let mut last = String::new();
    loop {
        for id in asked {
            match cluster.status(*id).await {
                Ok(status) if settled(&status) => return,
                Ok(status) => last = format!("node {id}: {:?}", status.members),
                Err(e) => last = e,
            }
        }
        assert!(Instant::now() < deadline, "membership: no sign of {what} within {MEMBERSHIP:?}; last: {last}");
        sleep(Duration::from_millis(200)).await;
    }
}

/// Removes member `id` through any of `asked`, retrying until one takes it.
async fn remove_member(cluster: &Cluster, asked: &[u64], id: u64) {
    let deadline = Instant::now() + MEMBERSHIP;
    loop {
        for node in asked {
            let mut req = tonic::Request::new(RemoveMemberRequest { id });
            req.set_timeout(Duration::from_secs(10));
            match cluster.cluster_client(*node).remove_member(req).await {
                Ok(_) => return,
                Err(e) => {
                    assert!(Instant::now() < deadline, "membership: removing node {id} failed until the end: {e}");
                }
            }
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// The faults in force, and a log of all (seconds since the schedule began).
struct Faults {
    t0: Instant,
    cut: bool,
    paused: BTreeSet<u64>,
    killed: BTreeSet<u64>,
    log: Vec<String>,
}

impl Faults {
    fn new(t0: Instant) -> Faults {
        Faults { t0, cut: false, paused: BTreeSet::new(), killed: BTreeSet::new(), log: Vec::new() }
    }

    fn note(&mut self, what: String) {
        self.log.push(format!("{:.1}s {what}", self.t0.elapsed().as_secs_f64()));
    }

    fn isolate(&mut self, lab: &Lab, id: u64) {
        lab.isolate(id);
        self.cut = true;
        self.note(format!("isolate {id}"));
    }

    fn cut(&mut self, lab: &Lab, a: u64, b: u64) {
        lab.cut(a, b);
        self.cut = true;
        self.note(format!("cut {a}-{b}"));
    }

    fn pause(&mut self, cluster: &Cluster, id: u64) {
        send_signal(cluster.node(id).pid().expect("a running node"), "STOP");
        self.paused.insert(id);
        self.note(format!("SIGSTOP {id}"));
    }

    fn kill(&mut self, cluster: &mut Cluster, id: u64) {
        cluster.node_mut(id).kill9();
        self.killed.insert(id);
        self.note(format!("kill -9 {id}"));
    }

    /// Heals the network, resumes paused nodes, restarts killed ones.
    fn undo(&mut self, lab: &Lab, cluster: &mut Cluster) {
        let mut done = Vec::new();
        if std::mem::take(&mut self.cut) {
            lab.heal();
            done.push("heal".to_owned());
        }
        for id in std::mem::take(&mut self.paused) {
            send_signal(cluster.node(id).pid().expect("a paused node"), "CONT");
            done.push(format!("SIGCONT {id}"));
        }
        for id in std::mem::take(&mut self.killed) {
            cluster.node_mut(id).start();
            done.push(format!("restart {id}"));
        }
        if !done.is_empty() {
            self.note(done.join(", "));
        }
    }
}

/// The log segments of a node's data dir, oldest first.
fn log_segments(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = data_dir.join("raft-log");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut segments: Vec<_> =
        entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.extension().is_some_and(|x| x == "wal")).collect();
    segments.sort();
    segments
}

fn flip_bit(path: &std::path::Path, offset: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset] ^= 0x20;
    std::fs::write(path, &bytes).expect("write");
}

/// What the clients of one schedule share.
struct Shared {
    history: History,
    stop: AtomicBool,
    /// Call and return of every acknowledged write (Created, Deleted, Updated).
    acks: Mutex<Vec<(Instant, Instant)>>,
    /// Unknown outcomes by gRPC code.
    codes: Mutex<BTreeMap<String, usize>>,
    /// Answers that should not happen here (FAILED_PRECONDITION, a status
    /// other than active or disabled, ...), recorded as unknown.
    odd: Mutex<Vec<String>>,
}

impl Shared {
    fn new() -> Self {
        let (acks, codes, odd) = (Mutex::default(), Mutex::default(), Mutex::default());
        Shared { history: History::new(), stop: AtomicBool::new(false), acks, codes, odd }
    }

    /// From `at` to the first acknowledgment of a write called after `at`.
    fn first_ack_after(&self, at: Instant) -> Option<Duration> {
        lock(&self.acks).iter().filter(|(call, _)| *call >= at).map(|(_, ret)| *ret - at).min()
    }

    /// The longest stretch between two acknowledged writes.
    fn longest_gap(&self) -> Duration {
        let mut rets: Vec<Instant> = lock(&self.acks).iter().map(|(_, ret)| *ret).collect();
        rets.sort();
        rets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }
}

/// One client: random operations, one at a time, until told to stop.
async fn client(id: u64, seed: u64, keys: Vec<String>, nodes: Vec<(u64, SocketAddr)>, shared: Arc<Shared>) -> usize {
    let mut rng = Rng::new(seed);
    let channels: Vec<Channel> = nodes.iter().map(|(_, addr)| channel(*addr)).collect();
    let mut done = 0;
    while done < MAX_OPS_PER_CLIENT && !shared.stop.load(Ordering::Relaxed) {
        let key = &keys[rng.below(keys.len() as u64) as usize];
        let ch = channels[rng.below(channels.len() as u64) as usize].clone();
        let input = match rng.below(10) {
            0..=2 => Input::Create,
            3..=4 => Input::Delete,
            5..=7 => Input::Get,
            8 => Input::SetStatus(Status::Disabled),
            _ => Input::SetStatus(Status::Active),
        };
        let answered = call(&shared, id, key, input, ch).await != Output::Unknown;
        done += 1;
        let pause = if answered { rng.below(60) } else { 150 + rng.below(150) };
        sleep(Duration::from_millis(pause)).await;
    }
    done
}

/// Sends `input` on `key`, recorded in the history; the output recorded.
async fn call(shared: &Shared, client: u64, key: &str, input: Input, ch: Channel) -> Output {
    let pending = shared.history.invoke(client, key, input.clone());
    let called = Instant::now();
    let reply = timeout(CALL + Duration::from_millis(500), send(ch, key, &input))
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer (the client's own bound)")));
    let output = output(&input, reply, shared);
    shared.history.complete(pending, output.clone());
    if matches!(output, Output::Created { .. } | Output::Deleted | Output::Updated { .. }) {
        lock(&shared.acks).push((called, Instant::now()));
    }
    output
}

async fn send(ch: Channel, key: &str, input: &Input) -> Result<Option<User>, tonic::Status> {
    fn request<T>(msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(CALL);
        req
    }
    let mut users = UsersClient::new(ch);
    let name = key.to_owned();
    let reply = match input {
        Input::Create => users.create_user(request(CreateUserRequest { name, ..Default::default() })).await.map(Some),
        Input::Delete => users.delete_user(request(DeleteUserRequest { name })).await.map(|_| None),
        Input::Get => users.get_user(request(GetUserRequest { name, consistency: 0 })).await.map(Some),
        Input::SetStatus(to) => {
            let status = Some(match to {
                Status::Active => UserStatus::Active,
                Status::Disabled => UserStatus::Disabled,
            } as i32);
            users.update_user(request(UpdateUserRequest { name, status, ..Default::default() })).await.map(Some)
        }
    };
    reply.map(|reply| reply.map(tonic::Response::into_inner))
}

/// What the checker is told of `reply`: an answer the registry gave, or
/// unknown for anything that says nothing about the outcome.
fn output(input: &Input, reply: Result<Option<User>, tonic::Status>, shared: &Shared) -> Output {
    let user = match reply {
        Ok(user) => user,
        Err(s) => {
            match (input, s.code()) {
                (Input::Create, Code::AlreadyExists) => return Output::AlreadyExists,
                (Input::Delete | Input::Get | Input::SetStatus(_), Code::NotFound) => return Output::NotFound,
                (
                    _,
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Unknown
                    | Code::Internal
                    | Code::ResourceExhausted,
                ) => {}
                (_, code) => lock(&shared.odd).push(format!("{input:?} -> {code:?}: {}", s.message())),
            }
            *lock(&shared.codes).entry(format!("{:?}", s.code())).or_default() += 1;
            return Output::Unknown;
        }
    };
    let status_of = |u: &User| match UserStatus::try_from(u.status) {
        Ok(UserStatus::Active) => Some(Status::Active),
        Ok(UserStatus::Disabled) => Some(Status::Disabled),
        _ => None,
    };
    let known = match (input, user) {
        (Input::Create, Some(u)) => Some(Output::Created { id: u.id }),
        (Input::Delete, None) => Some(Output::Deleted),
        (Input::Get, Some(u)) => status_of(&u).map(|status| Output::Found { id: u.id, status }),
        (Input::SetStatus(_), Some(u)) => status_of(&u).map(|status| Output::Updated { id: u.id, status }),
        (_, user) => unreachable!("{input:?} answered {user:?}"),
    };
    known.unwrap_or_else(|| {
        lock(&shared.odd).push(format!("{input:?} answered an unexpected status"));
        Output::Unknown
    })
}

/// Every node reads every key linearizably, into the history, retrying
/// (each try recorded) until it answers.
async fn final_reads(shared: &Shared, keys: &[String], nodes: &[(u64, SocketAddr)]) -> Result<(), String> {
    let deadline = Instant::now() + CONVERGE;
    for (id, addr) in nodes {
        let ch = channel(*addr);
        for key in keys {
            loop {
                if call(shared, FINAL_READER + id, key, Input::Get, ch.clone()).await != Output::Unknown {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("node {id} gave no answer to a read of {key} within {CONVERGE:?}"));
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}

/// Every node lists the same users (all of them, this schedule's and the
/// earlier ones'), each read linearizable: a node that came back on a
/// damaged state, or skipped an entry, differs here. Usage is compared for
/// users no agent bills (billing goes on while the nodes are read, and the
/// probe user's traffic with it).
async fn replicas_agree(nodes: &[(u64, SocketAddr)]) -> Result<(), String> {
    type Row = (String, String, i32, u64, String, u64);
    let mut first: Option<(u64, Vec<Row>)> = None;
    let deadline = Instant::now() + CONVERGE;
    for (id, addr) in nodes {
        let ch = channel(*addr);
        let users = loop {
            match all_users(&ch).await {
                Ok(users) => break users,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("node {id} did not list the users: {:?}: {}", e.code(), e.message()))
                }
                Err(_) => sleep(Duration::from_millis(200)).await,
            }
        };
        let rows: Vec<Row> = users
            .into_iter()
            .map(|u| {
                let traffic_flows = u.name.starts_with("billed-") || u.name == Serving::USER;
                let used = if traffic_flows { 0 } else { u.used_bytes };
                (u.name, u.id, u.status, u.data_limit_bytes, u.expires_at, used)
            })
            .collect();
        match &first {
            None => first = Some((*id, rows)),
            Some((other, expected)) if *expected != rows => {
                let differ: Vec<_> = rows.iter().filter(|r| !expected.contains(r)).take(5).collect();
                let missing: Vec<_> = expected.iter().filter(|r| !rows.contains(r)).take(5).collect();
                return Err(format!("node {id} lists other users than node {other}: {differ:?}; lacks {missing:?}"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Waits until every node names the same leader and is ready, as
/// [`Cluster::wait_leader`] does, but says why it failed rather than panic
/// (so that the caller's message can carry the seed).
async fn agreed_leader(cluster: &Cluster) -> Result<u64, String> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let last = match timeout(Duration::from_secs(10), agreement(cluster)).await {
            Ok(Ok(leader)) => return Ok(leader),
            Ok(Err(e)) => e,
            Err(_) => "status calls ran out of time".to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(format!("no leader agreed by every node within {CONVERGE:?}: {last}"));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn agreement(cluster: &Cluster) -> Result<u64, String> {
    let mut leader = None;
    for id in cluster.control_plane().map(|p| p.id) {
        let l = cluster.status(id).await?.leader_id.ok_or(format!("node {id} knows no leader"))?;
        if leader.is_some_and(|x| x != l) {
            return Err(format!("nodes disagree: {leader:?} vs {l}"));
        }
        leader = Some(l);
    }
    for id in cluster.control_plane().map(|p| p.id) {
        let (code, body) = http_get(cluster.node(id).http, "/readyz?verbose").await?;
        if code != 200 {
            return Err(format!("node {id} not ready: {body}"));
        }
    }
    leader.ok_or("no nodes".to_owned())
}

/// One node's own view at one time.
#[derive(Clone, Copy, Debug)]
struct Seen {
    node: u64,
    term: u64,
    leader: Option<u64>,
}

/// Polls every node's `Status` (a task per node, so a paused node holds up
/// no other) and keeps what each said, in order.
struct Observer {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    /// One poller per node, nodes that joined during the run included.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Observer {
    fn start(cluster: &Cluster) -> Observer {
        let (seen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let observer = Observer { seen, stop, tasks: Mutex::default() };
        for p in cluster.control_plane() {
            observer.watch(p.id, p.grpc);
        }
        observer
    }

    /// Polls node `node` at `addr` from now until the end of the run.
    fn watch(&self, node: u64, addr: SocketAddr) {
        let (seen, stop) = (self.seen.clone(), self.stop.clone());
        lock(&self.tasks).push(tokio::spawn(async move {
            let mut client = ClusterClient::new(channel(addr));
            // A bound besides the stop flag: an hour of polls.
            for _ in 0..36_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut req = tonic::Request::new(StatusRequest {});
                req.set_timeout(Duration::from_secs(1));
                if let Ok(Ok(s)) = timeout(Duration::from_millis(1500), client.status(req)).await {
                    let s = s.into_inner();
                    lock(&seen).push(Seen { node, term: s.term, leader: s.leader_id });
                }
                sleep(POLL).await;
            }
        }));
    }

    /// The leader most recently named by any node.
    fn last_leader(&self) -> Option<u64> {
        lock(&self.seen).iter().rev().find_map(|s| s.leader)
    }

    /// No node's view of the leadership going back; a summary of the
    /// leaders seen, or what broke. openraft 0.9 (without its
    /// `single-term-leader` feature) names a leader by (term, node id),
    /// ordered that way, and a node grants any greater vote, so one term may
    /// elect several leaders one after another, each with a greater id
    /// (openraft's docs/data/leader_id.md; log ids carry the node id, so their
    /// entries never mix). A node's term never decreases, and within a term
    /// the leader it names never decreases. No check across nodes: polls are
    /// 100 ms apart and elections may overlap. The history is the safety test.
    fn check(&self) -> Result<String, String> {
        let seen = lock(&self.seen).clone();
        let mut leaders: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut last: BTreeMap<u64, (u64, Option<u64>)> = BTreeMap::new();
        for s in &seen {
            let (term, leader) = last.get(&s.node).copied().unwrap_or((0, None));
            if s.term < term {
                return Err(format!("node {}'s term went back from {term} to {}", s.node, s.term));
            }
            if s.term == term && s.leader.is_some() && s.leader < leader {
                return Err(format!("node {} named leader {:?} in term {term} after {leader:?}", s.node, s.leader));
            }
            let keep = if s.term == term { leader.max(s.leader) } else { s.leader };
            last.insert(s.node, (s.term, keep));
            if let Some(l) = s.leader {
                leaders.insert((s.term, l));
            }
        }
        let terms: BTreeSet<u64> = leaders.iter().map(|(t, _)| *t).collect();
        let (first, last) = (terms.first().unwrap_or(&0), terms.last().unwrap_or(&0));
        Ok(format!("{} status polls, {} leaders in {} terms, {first}..={last}", seen.len(), leaders.len(), terms.len()))
    }

    /// Stops the polls and checks what they saw.
    async fn stop(self) -> Result<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            task.await.map_err(|e| format!("a status poller failed: {e}"))?;
        }
        self.check()
    }
}

/// xorshift64, seeded through splitmix64 (never zero).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// In `lo..=hi`.
    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn pick(&mut self, items: &[u64]) -> u64 {
        items[self.below(items.len() as u64) as usize]
    }
}
