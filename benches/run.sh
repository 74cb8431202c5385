#!/usr/bin/env bash
# Runs every benchmark of the control plane and keeps the figures.
#
#   bash benches/run.sh                 # everything, defaults of issue 2
#   bash benches/run.sh --duration 20s  # extra flags go to `loadgen all`
#
# 1. builds the deployable vpnd (ops/scripts/build-vpnd.sh: static, LTO) and loadgen;
# 2. installs Debian's etcd-server (etcd 3.4, the baseline) when /usr/bin/etcd is missing;
# 3. `loadgen all`: a local 3-node vpnd cluster and a 3-member etcd on free loopback
#    ports (data in temp dirs, removed afterwards): writes/s and p50/p99 at
#    concurrency 1, 16, 64 for both, then failover (kill -9 of the leader, 5 rounds),
#    single-node startup to /readyz with 0 and 10,000 users (5 restarts) and idle RSS;
# 4. the criterion benches (state machine, keys, scheduler, the per-request cost of
#    authentication and authorization) and their ratios to the baselines.
# The data-plane benches (propagation, dataplane_failover, placement) need Docker and the
# engine image; benches/RESULTS.md gives the command of each.
#
# Output: target/bench-results/{loadgen.json,loadgen.txt,criterion.txt,criterion-summary.txt};
# the spawned processes' logs stay in target/loadgen-logs/<run id>/.
# Every process the run starts is on 127.0.0.1 and is killed when loadgen exits.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
out=target/bench-results

bash ops/scripts/build-vpnd.sh
vpnd=target/x86_64-unknown-linux-gnu/release/vpnd
cargo build --release -p vpn-benches --bin loadgen

if [ ! -x /usr/bin/etcd ]; then
    echo "run.sh: /usr/bin/etcd missing; installing Debian's etcd-server" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server
fi

mkdir -p "$out"
target/release/loadgen --vpnd "$vpnd" --etcd /usr/bin/etcd --out "$out/loadgen.json" \
    all "$@" 2>&1 | tee "$out/loadgen.txt"

cargo bench -p vpn-benches --bench state_machine --bench keys --bench scheduler --bench auth 2>&1 | tee "$out/criterion.txt"
target/release/loadgen --out "$out/criterion-summary.json" criterion-summary --dir target/criterion \
    | tee "$out/criterion-summary.txt"
