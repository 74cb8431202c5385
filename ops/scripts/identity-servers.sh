#!/usr/bin/env bash
# Installs the real identity servers that the LDAP and OIDC tests start through
# ops/identity/slapd.sh and ops/identity/oidc.sh, all from Debian's packages:
#   slapd, ldap-utils  OpenLDAP server and its clients (ldapwhoami for readiness)
#   glewlwyd           OpenID Connect provider (standalone C server)
#   rnbyc              JWK tool from glewlwyd's author: makes the signing keys
#   sqlite3, jq, curl  glewlwyd's database setup, JSON, HTTP
# Idempotent: when every command is already there it only says so (no apt).
# Exits non-zero, saying why, when something is missing and cannot be installed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

die() { echo "identity-servers: $*" >&2; exit 1; }

# command -> Debian package providing it (slapd lives in /usr/sbin).
declare -A PKG=([slapd]=slapd [slapadd]=slapd [slappasswd]=slapd [ldapwhoami]=ldap-utils
    [ldapsearch]=ldap-utils [glewlwyd]=glewlwyd [rnbyc]=rnbyc [sqlite3]=sqlite3 [jq]=jq [curl]=curl)
SCHEMA=/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

missing() {
    local c
    for c in "${!PKG[@]}"; do command -v "$c" >/dev/null || echo "${PKG[$c]}"; done
    [ -f "$SCHEMA" ] || echo glewlwyd
}

versions() {
    echo "identity-servers: ready: slapd $(dpkg-query -W -f='${Version}' slapd 2>/dev/null)," \
        "glewlwyd $(dpkg-query -W -f='${Version}' glewlwyd 2>/dev/null)," \
        "rnbyc $(dpkg-query -W -f='${Version}' rnbyc 2>/dev/null)"
}

# Parallel test processes may call this at once: one installer at a time.
# (No lock when target/ is not writable: then there is nothing to install either.)
if mkdir -p "$ROOT/target" 2>/dev/null && { exec 9>"$ROOT/target/.identity-servers.lock"; } 2>/dev/null; then
    flock 9
fi

need=$(missing | sort -u | xargs)
if [ -z "$need" ]; then
    versions
    exit 0
fi

command -v apt-get >/dev/null || die "missing packages ($need) and no apt-get to install them"
[ "$(id -u)" = 0 ] || die "missing packages ($need); installing them needs root: sudo apt-get install -y $need"

echo "identity-servers: installing from Debian: $need"
# The tests start their own servers in temp dirs. Keep the packages' system
# services (slapd on :389, glewlwyd on :4593) from being started by the
# install, unless the machine already has a policy of its own.
cleanup_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# identity-servers.sh: no service starts during its install\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    cleanup_policy=1
fi
drop_policy() { if [ -n "$cleanup_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap drop_policy EXIT

start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086 # $need is a list of package names
apt-get update -qq || die "apt-get update failed (is the Debian mirror reachable?)"
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $need >/dev/null ||
    die "apt-get install $need failed"

still=$(missing | sort -u | xargs)
[ -z "$still" ] || die "still missing after install: $still"
echo "identity-servers: installed $need in $((SECONDS - start))s"
versions
