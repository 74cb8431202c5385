//! State-machine apply of CreateUser commands.
//!
//! - `apply_create_user_1000`: the pure `command::apply` on a `State`, against
//!   a plain `BTreeMap` insert of the same users (the floor for this layout).
//! - `sm_apply_sled`: openraft's `RaftStateMachine::apply` on the real store
//!   (`vpn_storage::open` in a temp dir: in-memory state, changes queued to
//!   the thread that writes them to sled in coalesced batches), against a
//!   bare sled `apply_batch` of the same JSON-encoded users.
//! - `command_codec`: the JSON encoding a CreateUser entry carries in the log.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use vpn_storage::command::{apply, Command};
use vpn_storage::model::User;
use vpn_storage::state::State;
use vpn_storage::types::Entry;

const USERS: usize = 1000;
const CREATED_AT_MS: i64 = 1_700_000_000_000;

fn users(prefix: &str, n: usize) -> Vec<User> {
    (0..n).map(|i| User::new(format!("{prefix}{i:06}"), CREATED_AT_MS)).collect()
}

fn pure_apply(c: &mut Criterion) {
    let cmds: Vec<Command> = users("user-", USERS).into_iter().map(Command::CreateUser).collect();
    let mut g = c.benchmark_group("apply_create_user_1000");
    g.throughput(Throughput::Elements(USERS as u64));
    g.bench_function("command_apply", |b| {
        b.iter_batched(
            State::default,
            |mut state| {
                for cmd in &cmds {
                    black_box(apply(&mut state, cmd));
                }
                state
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("baseline_btreemap_insert", |b| {
        b.iter_batched(
            BTreeMap::<String, User>::new,
            |mut map| {
                for cmd in &cmds {
                    if let Command::CreateUser(user) = cmd {
                        map.insert(user.name.clone(), user.clone());
                    }
                }
                map
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn entry(index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::CreateUser(User::new(format!("user-{index:08}"), CREATED_AT_MS))),
    }
}

fn sled_apply(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = vpn_storage::open(&dir.path().join("store")).expect("open the store");
    let raw = sled::Config::new().path(dir.path().join("raw")).open().expect("open sled");
    let raw_tree = raw.open_tree("sm").expect("sled tree");
    let mut next = 0u64;

    let mut g = c.benchmark_group("sm_apply_sled");
    for batch in [1usize, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("state_machine_apply", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let entries: Vec<Entry> = (0..batch)
                        .map(|_| {
                            next += 1;
                            entry(next)
                        })
                        .collect();
                    let t = Instant::now();
                    black_box(rt.block_on(sm.apply(entries)).expect("apply"));
                    total += t.elapsed();
                }
                total
            })
        });
        g.bench_with_input(BenchmarkId::new("baseline_sled_apply_batch", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let rows: Vec<(String, User)> = (0..batch)
                        .map(|_| {
                            next += 1;
                            let user = User::new(format!("user-{next:08}"), CREATED_AT_MS);
                            (format!("u/{}", user.name), user)
                        })
                        .collect();
                    let t = Instant::now();
                    let mut b = sled::Batch::default();
                    for (key, user) in &rows {
                        b.insert(key.as_bytes(), serde_json::to_vec(user).expect("encode"));
                    }
                    raw_tree.apply_batch(b).expect("sled batch");
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let cmd = Command::CreateUser(User::new("alice-0001".into(), CREATED_AT_MS));
    let bytes = serde_json::to_vec(&cmd).expect("encode");
    let mut g = c.benchmark_group("command_codec");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode_json", |b| b.iter(|| serde_json::to_vec(black_box(&cmd)).expect("encode")));
    g.bench_function("decode_json", |b| {
        b.iter(|| serde_json::from_slice::<Command>(black_box(&bytes)).expect("decode"))
    });
    g.finish();
}

criterion_group!(benches, pure_apply, sled_apply, codec);
criterion_main!(benches);
