#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests (unit, storage
# suite, property tests, multi-node cluster tests over real processes), and a
# compile of the benches. Needs only cargo; protoc comes from a crate.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== benches compile"
cargo build --workspace --benches --locked
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --test-threads "${TEST_THREADS:-4}"
else
    cargo test --workspace --locked --no-fail-fast -- --test-threads "${TEST_THREADS:-4}"
fi
