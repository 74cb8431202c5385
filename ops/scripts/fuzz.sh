#!/usr/bin/env bash
# Fuzzes every decoder (see fuzzkit/src/lib.rs): each target in turn with
# CASES inputs (default 1,000,000), in the `fuzz` profile (optimised like
# release, with overflow checks and debug assertions, without fat LTO), and
# prints each target's case count and time.
#
#   ops/scripts/fuzz.sh [CASES] [FILTER...]    # FILTER: run the targets whose name contains it
#
# A failing target shrinks its input, prints it, and saves its seed in the
# crate's proptest-regressions/ (commit that file; also add the input as an
# explicit #[test] next to the target). The script goes on with the other
# targets and exits 1 if any failed. `cargo test` runs every target with
# FUZZ_CASES (default 1000) as part of the normal suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cases="${1:-1000000}"
shift || true
export FUZZ_CASES="$cases"

# crate   test path (unit tests of the crate's lib)
targets=(
    "vpn-storage fuzz::wal::fuzz_wal_segments"
    "vpn-storage fuzz::wire::fuzz_wire_append_entries"
    "vpn-storage fuzz::wire::fuzz_wire_install_snapshot"
    "vpn-storage fuzz::snapshot::fuzz_snapshot_file"
    "vpn-node fuzz::public::fuzz_grpc_public"
    "vpn-node fuzz::raft::fuzz_grpc_raft"
    "vpn-node fuzz::agent::fuzz_agent_protocol"
    "vpn-node fuzz::config::fuzz_config_toml"
    "vpn-node fuzz::subscription::fuzz_subscription_path"
)

selected=()
for t in "${targets[@]}"; do
    if [ "$#" -eq 0 ]; then
        selected+=("$t")
        continue
    fi
    for filter in "$@"; do
        if [[ "$t" == *"$filter"* ]]; then
            selected+=("$t")
            break
        fi
    done
done
if [ "${#selected[@]}" -eq 0 ]; then
    echo "fuzz.sh: no target matches $*" >&2
    exit 2
fi

echo "== build (profile fuzz)"
crates=$(printf '%s\n' "${selected[@]}" | cut -d' ' -f1 | sort -u)
args=()
for crate in $crates; do
    args+=(-p "$crate")
done
# Built once, then run directly: edits made while the targets run (by
# anyone) do not rebuild anything half-way.
built=$(cargo test --locked --profile fuzz "${args[@]}" --lib --no-run --message-format=json)
# The test binary of crate $1's lib, and the crate's dir.
field() { grep -o "\"$1\":\"[^\"]*\"" | cut -d'"' -f4; }
artifact() { grep '"executable":"' <<<"$built" | grep "#$1@" | tail -1; }

results=()
failed=0
for t in "${selected[@]}"; do
    read -r crate test <<<"$t"
    bin=$(artifact "$crate" | field executable)
    dir=$(dirname "$(artifact "$crate" | field manifest_path)")
    echo "== $test ($crate), $cases cases"
    log=$(mktemp)
    status=0
    # From the crate's dir, as cargo runs it (proptest finds its regressions file from there).
    (cd "$dir" && "$bin" --exact "$test" --nocapture --test-threads 1) 2>&1 | tee "$log" || status=$?
    line=$(grep -o 'fuzz-result .*' "$log" | tail -1 || true)
    rm -f "$log"
    outcome=ok
    if [ "$status" -ne 0 ]; then
        failed=1
        outcome=FAILED
    fi
    results+=("$(printf '%-7s %-48s %s' "$outcome" "$test" "${line#fuzz-result * }")")
done

echo "== results"
printf '%s\n' "${results[@]}"
exit "$failed"
