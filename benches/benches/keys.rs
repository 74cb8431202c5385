//! Credential generation: what `CreateUser` does before it proposes.
//!
//! - `credentials`: `Credentials::generate()` against its parts (a UUID v4,
//!   and 16 random bytes encoded as base64).
//! - `user_new`: `User::new` (id + credentials + the name) against the same
//!   randomness alone (two UUIDs and 16 bytes).

use std::hint::black_box;

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use rand::RngCore as _;
use uuid::Uuid;
use vpn_storage::model::{Credentials, User};

fn random_key_b64() -> String {
    let mut key = [0u8; 16];
    rand::rng().fill_bytes(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn credentials(c: &mut Criterion) {
    let mut g = c.benchmark_group("credentials");
    g.bench_function("credentials_generate", |b| b.iter(Credentials::generate));
    g.bench_function("baseline_uuid_v4", |b| b.iter(Uuid::new_v4));
    g.bench_function("baseline_16_random_bytes_base64", |b| b.iter(random_key_b64));
    g.finish();
}

fn user_new(c: &mut Criterion) {
    let name = String::from("alice-0001");
    let mut g = c.benchmark_group("user_new");
    g.bench_function("user_new", |b| b.iter(|| User::new(black_box(name.clone()), 1_700_000_000_000)));
    g.bench_function("baseline_randomness_only", |b| b.iter(|| (Uuid::new_v4(), Uuid::new_v4(), random_key_b64())));
    g.finish();
}

criterion_group!(benches, credentials, user_new);
criterion_main!(benches);
