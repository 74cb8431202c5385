#!/usr/bin/env bash
# Builds the binaries to deploy: vpnd and vpnctl as static, non-PIE x86_64
# Linux executables (glibc linked in), with the release profile's fat LTO, and
# vpnd's code laid out by ops/layout/vpnd.order.
#
#   bash ops/scripts/build-vpnd.sh     # -> target/x86_64-unknown-linux-gnu/release/{vpnd,vpnctl}
#
# Why static: nothing to install beside them, and less memory. A dynamically
# linked, position-independent vpnd maps libc, libm and the loader and
# relocates ~600 KB of pointer tables at every start (benches/RESULTS.md). The
# price is no address-space randomisation of the binary's own code (as with Go
# binaries, etcd's among them), and name lookups through glibc's NSS need the
# host's glibc of the same version (DNS and /etc/hosts work as usual).
#
# Why the layout: an idle node's resident memory is mostly its code, and the
# kernel maps code in 64 KiB windows around each page that runs
# (fault-around). The functions a node runs, listed in ops/layout/vpnd.order
# (ops/scripts/profile-layout.sh records them), are linked first and side by
# side, so those windows hold little else. A function missing from the list
# (new code, or a name that changed) is linked after them as usual: a stale
# list costs memory, never correctness.
#
# The flags go through --target so that build scripts and proc macros, which
# run on the host as shared objects, are built the ordinary way. They are the
# same on every build, whatever the list holds, so the symbol names the list
# refers to do not move; a changed list relinks vpnd.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
target=x86_64-unknown-linux-gnu
order=ops/layout/vpnd.order
vpnd="target/$target/release/vpnd"
# Cargo does not see the list (the linker reads it): relink when it changed.
if [ -e "$vpnd" ] && [ "$order" -nt "$vpnd" ]; then
    touch node/src/main.rs
fi
# The linker runs in the workspace root, so the list's path is relative.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static \
    -C link-arg=-Wl,--symbol-ordering-file=$order -C link-arg=-Wl,--no-warn-symbol-ordering" \
    cargo build --release --locked --target "$target" -p vpn-node --bin vpnd -p vpnctl --bin vpnctl
echo "built $vpnd and target/$target/release/vpnctl"
# A list whose names the build no longer has lays out nothing: say how much
# of it was found. Symbol names carry a hash of each crate's dependencies, so
# a dependency added to or updated in vpnd's graph renames most of them
# (a change of our own code renames only what it touches).
listed=$(grep -c . "$order")
found=$(nm --defined-only "$vpnd" | awk '{print $3}' | grep -cxFf - "$order" || true)
echo "layout: $found of the $listed functions in $order found in $vpnd"
if [ $((found * 10)) -lt $((listed * 9)) ]; then
    echo "!!! build-vpnd.sh: under 90% of the layout list found: the idle node maps more code" \
        "than it needs (a few MiB of RSS); record it again: bash ops/scripts/profile-layout.sh" >&2
fi
