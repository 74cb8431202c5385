#!/usr/bin/env bash
# Records which of vpnd's functions run, into ops/layout/vpnd.order, the list
# ops/scripts/build-vpnd.sh links first (why: see that script). Run it after a
# dependency update or a large change, and commit the list with the change.
#
#   bash ops/scripts/profile-layout.sh
#
# 1. builds the deployable vpnd (with the current list: the flags, and so the
#    symbol names, are those of every deployable build) and loadgen;
# 2. runs loadgen's single-node and three-node workloads, mutual TLS and
#    --insecure, and `vpnd --dev` (first start and restart) with vpnctl's
#    everyday commands, every vpnd under valgrind's callgrind, which records
#    each function that runs at least once (not sampled: a function run once at
#    start is listed too);
# 3. writes the functions that ran in the binary's address order (the
#    compiler's, which keeps callers near callees) and relinks vpnd.
# Loopback only; every data dir is removed afterwards (the logs stay in target/layout).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

if ! command -v valgrind >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
bash ops/scripts/build-vpnd.sh
cargo build --release --locked -p vpn-benches --bin loadgen

vpnd="$PWD/target/x86_64-unknown-linux-gnu/release/vpnd"
work=target/layout
rm -rf "$work" && mkdir -p "$work/profiles"
wrapper="$work/vpnd-callgrind"
cat > "$wrapper" <<EOF
#!/bin/sh
exec valgrind -q --tool=callgrind --demangle=no --compress-strings=no --dump-line=no \\
    --callgrind-out-file=$PWD/$work/profiles/callgrind.%p.out "$vpnd" "\$@"
EOF
chmod +x "$wrapper"

# Slow under valgrind (~50x): few users, short levels, generous deadlines.
loadgen() { target/release/loadgen --vpnd "$wrapper" --log-dir "$work/logs" "$@" >>"$work/loadgen.txt" 2>&1; }
loadgen --tls --out "$work/single-tls.json" single-node --users 300 --restarts 1
loadgen --out "$work/single.json" single-node --users 100 --restarts 1
loadgen --tls --out "$work/throughput.json" throughput --no-etcd --through-follower \
    --concurrency 1,8 --duration 5s --warmup-ops 20 --request-timeout 20s
loadgen --tls --out "$work/auth.json" throughput --auth --no-etcd --through-follower \
    --concurrency 4 --duration 5s --warmup-ops 20 --request-timeout 20s

# The README's first command: `vpnd --dev` makes its CA and certificates,
# then starts again on them; vpnctl's everyday commands against each start.
dev="$work/dev"
port="${LAYOUT_DEV_PORT:-7400}"
mkdir -p "$dev/home"
# Their output names a user's credentials: only errors are kept.
vpnctl() { HOME="$dev/home" target/x86_64-unknown-linux-gnu/release/vpnctl "$@" >/dev/null 2>>"$dev/vpnctl-errors.txt"; }
for start in first again; do
    HOME="$dev/home" "$wrapper" --dev --data-dir "$dev/data" --listen "127.0.0.1:$port" \
        --http "127.0.0.1:$((port + 80))" >"$dev/$start.log" 2>&1 &
    pid=$!
    for _ in $(seq 1200); do
        curl -sf "127.0.0.1:$((port + 80))/readyz" >/dev/null && break
        sleep 0.1
    done
    vpnctl user add "user-$start"
    vpnctl user list
    vpnctl user show "user-$start" -o json
    vpnctl user links "user-$start"
    vpnctl cluster status
    vpnctl node list
    vpnctl audit list
    curl -s "127.0.0.1:$((port + 80))/metrics" >/dev/null
    curl -s "127.0.0.1:$((port + 80))/readyz?verbose" >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
done
# A throwaway cluster's CA key and users: not kept.
rm -rf "$dev/data" "$dev/home"

# Every function a profile names (fn= a function that ran, cfn= one it
# called), then the binary's symbols in address order, kept if they ran.
cat "$work"/profiles/callgrind.*.out | sed -n 's/^c\?fn=\(.*\)$/\1/p' | sed "s/'[0-9]*$//" | sort -u >"$work/ran.txt"
nm -n --defined-only "$vpnd" | awk 'NR == FNR { ran[$1] = 1; next } $2 ~ /^[tTwW]$/ && ($3 in ran) && !seen[$3]++ { print $3 }' \
    "$work/ran.txt" - >"$work/vpnd.order"
listed=$(wc -l <"$work/vpnd.order")
if [ "$listed" -lt 1000 ]; then
    echo "profile-layout.sh: only $listed functions recorded; see $work/loadgen.txt" >&2
    exit 1
fi
mkdir -p ops/layout
mv "$work/vpnd.order" ops/layout/vpnd.order
echo "profile-layout.sh: $listed functions listed in ops/layout/vpnd.order; relinking"
bash ops/scripts/build-vpnd.sh
