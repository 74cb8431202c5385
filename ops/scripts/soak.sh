#!/usr/bin/env bash
# The nemesis soak: the fault schedules of cluster-tests/tests/t36_nemesis.rs
# (partitions, a non-transitive bridge, pauses, kill -9, rolling faults, a
# torn write and a flipped bit in a log, a snapshot cut short, a damaged
# sled file, membership changes under a partition) against three-node
# clusters in network namespaces, ROUNDS times over, every history checked
# for linearizability, and a real data-plane node (its engine in Docker)
# serving a user through all of it. Needs root (namespaces, iptables) and
# Docker; the engine image is built here when missing.
#
#   ops/scripts/soak.sh [ROUNDS]     # default 20 rounds (12 schedules, ~15 s each)
#   NEMESIS_SEED=<n> ops/scripts/soak.sh 1   # replays a failing run's choices
#
# Prints every schedule's summary, and per nemesis the time from the heal to
# the first acknowledged write (median and max over the rounds). The groups
# run one after another so the figures are not skewed by each other.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-20}"
case "$rounds" in
    '' | *[!0-9]* | 0) echo "soak.sh: ROUNDS must be a count above 0, got '$rounds'" >&2; exit 2 ;;
esac
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
bash ops/images/build-sing-box.sh
NEMESIS_ROUNDS="$rounds" CI=true cargo test --workspace --locked --test t36_nemesis -- --test-threads 1 --nocapture
