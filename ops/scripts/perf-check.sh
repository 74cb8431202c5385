#!/usr/bin/env bash
# CI's performance regression check: a short, fixed run of ratios measured in
# the same run, so the machine's speed cancels out:
#   - vpnd under mutual TLS against etcd under TLS (3 members each, loopback),
#   - vpnd under mutual TLS against vpnd --insecure (what TLS and the admin
#     certificate's check cost),
# committed writes/s at concurrency 1 and 16, 5 s per level; then, with roles
# on both sides (`throughput --auth`, ~25 s), at concurrency 16:
#   - vpnd writing with an API token and with a client certificate bound to a
#     role, each against etcd with `auth enable` (a user and a role),
#   - the token against the `admin` certificate (what the token check costs).
# It fails only when a ratio falls below half its baseline (benches/RESULTS.md,
# "Perf check"), so noise cannot flake it but a 2x regression shows.
#
# An optimised build (profile `perf`: release without fat LTO; a debug build's
# figures say little about the deployable one); etcd from Debian's
# etcd-server, installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

# Half of the baselines recorded in benches/RESULTS.md ("Perf check").
FLOOR_VS_ETCD="${FLOOR_VS_ETCD:-0.55}"
FLOOR_TLS_VS_INSECURE="${FLOOR_TLS_VS_INSECURE:-0.45}"
FLOOR_AUTH_VS_ETCD="${FLOOR_AUTH_VS_ETCD:-0.65}"
FLOOR_TOKEN_VS_ADMIN="${FLOOR_TOKEN_VS_ADMIN:-0.5}"

if ! [ -x /usr/bin/etcd ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
    else
        echo "perf-check.sh: /usr/bin/etcd missing (Debian: apt-get install etcd-server)" >&2
        exit 1
    fi
fi
cargo build --profile perf --locked -p vpn-node --bin vpnd -p vpn-benches --bin loadgen
out=target/perf-check
mkdir -p "$out"
target/perf/loadgen --vpnd target/perf/vpnd --etcd /usr/bin/etcd --tls \
    --out "$out/loadgen.json" --log-dir "$out/logs" \
    throughput --concurrency 1,16 --duration 5s --warmup-ops 200 \
    --floor "ratio_throughput_vpnd_tls_over_etcd_tls=$FLOOR_VS_ETCD" \
    --floor "ratio_throughput_vpnd_tls_over_insecure=$FLOOR_TLS_VS_INSECURE"
target/perf/loadgen --vpnd target/perf/vpnd --etcd /usr/bin/etcd --tls \
    --out "$out/loadgen-auth.json" --log-dir "$out/logs" \
    throughput --auth --concurrency 16 --duration 5s --warmup-ops 200 \
    --floor "ratio_throughput_vpnd_token_over_etcd_auth=$FLOOR_AUTH_VS_ETCD" \
    --floor "ratio_throughput_vpnd_cert_over_etcd_auth=$FLOOR_AUTH_VS_ETCD" \
    --floor "ratio_throughput_vpnd_token_over_admin=$FLOOR_TOKEN_VS_ADMIN"
