#!/usr/bin/env bash
# Builds the binaries to deploy: vpnd and vpnctl as static, non-PIE x86_64
# Linux executables (glibc linked in), with the release profile's fat LTO.
#
#   bash ops/scripts/build-vpnd.sh     # -> target/x86_64-unknown-linux-gnu/release/{vpnd,vpnctl}
#
# Why: nothing to install beside them, and less memory. A dynamically linked,
# position-independent vpnd maps libc, libm and the loader and relocates
# ~600 KB of pointer tables at every start; idle, the static one holds
# ~9,100 KiB resident against ~10,800 KiB (benches/RESULTS.md). The price is no
# address-space randomisation of the binary's own code (as with Go binaries,
# etcd's among them), and name lookups through glibc's NSS need the host's
# glibc of the same version (DNS and /etc/hosts work as usual).
#
# The flags go through --target so that build scripts and proc macros, which
# run on the host as shared objects, are built the ordinary way.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release --locked --target "$target" -p vpn-node --bin vpnd -p vpnctl --bin vpnctl
echo "built target/$target/release/vpnd and target/$target/release/vpnctl"
