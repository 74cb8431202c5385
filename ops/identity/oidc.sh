#!/usr/bin/env bash
# A real OpenID Connect provider (Debian's glewlwyd, a standalone C server) for
# the identity tests, confined to one directory: config, sqlite database,
# signing keys and log all live in DIR; nothing global is read or written.
#
#   oidc.sh run    DIR PORT           # prepare DIR once, then exec glewlwyd in the
#                                     # foreground: the caller's child IS the
#                                     # provider, and killing it stops it
#   oidc.sh wait   DIR PORT [SECS]    # until discovery answers with our key (20s);
#                                     # on failure prints the log, exits 1
#   oidc.sh start  DIR PORT           # run in the background + wait (by hand)
#   oidc.sh stop   DIR
#   oidc.sh token  PORT USER PASSWORD [PLUGIN]   # password grant, prints the JSON
#   oidc.sh approve PORT USER PASSWORD USER_CODE [PLUGIN]  # device flow: the user's "browser"
#   oidc.sh adduser PORT USER PASSWORD [GROUP...] # one more user, with these groups
#   oidc.sh rotate DIR PORT [--drop-old]         # new signing key; prints its kid
#   oidc.sh decode JWT                # header and claims, for eyes and shell tests
#
# Issuer http://127.0.0.1:PORT/api/oidc (discovery under it). Plugin
# "oidc-short" has the same issuer and keys but tokens living OIDC_SHORT_TTL
# seconds (default 1): the way to get an expired token. Users alice, bob,
# carol (disabled) with password <name>-pass; clients vpn-test (secret
# vpn-test-secret) and vpn-cli (public). See README.md.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SCHEMA=/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3
CLIENT_ID=vpn-test
CLIENT_SECRET=vpn-test-secret

die() { echo "oidc.sh: $*" >&2; exit 1; }
usage() { sed -n '2,25p' "$0" >&2; exit 2; }

need_tools() {
    for t in glewlwyd rnbyc sqlite3 jq curl; do
        command -v "$t" >/dev/null || die "$t not found: run ops/scripts/identity-servers.sh first"
    done
    [ -f "$SCHEMA" ] || die "$SCHEMA missing: run ops/scripts/identity-servers.sh first"
}

# A fresh RSA-2048 key as a private JWKS (RS256), with a kid unique enough
# that two providers (or two rotations) never share one.
new_key() {
    local out=$1 n=$2
    rnbyc -j -g RSA2048 -k "key-$n-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')" -a RS256 \
        -o "$out" -p /dev/null -n 0 >/dev/null
}

# The OIDC plugin parameters (glewlwyd's names; see its OIDC.md).
plugin_params() {
    local iss=$1 ttl=$2 jwks=$3
    jq -n --arg iss "$iss" --argjson ttl "$ttl" --rawfile jwks "$jwks" '{
        iss: $iss, "jwt-type": "rsa", "jwt-key-size": "256",
        "jwks-private": $jwks, "default-kid": "", "jwks-show": true,
        "access-token-duration": $ttl, "refresh-token-duration": 1209600,
        "refresh-token-rolling": false, "code-duration": 600,
        "allow-non-oidc": true, "subject-type": "public",
        "auth-type-code-enabled": true, "auth-type-token-enabled": true,
        "auth-type-id-token-enabled": true, "auth-type-none-enabled": true,
        "auth-type-password-enabled": true, "auth-type-client-enabled": true,
        "auth-type-refresh-enabled": true, "auth-type-device-enabled": true,
        "device-authorization-expiration": 600, "device-authorization-interval": 1,
        "pkce-allowed": true, "pkce-method-plain-allowed": false,
        "name-claim": "mandatory", "email-claim": "mandatory", "scope-claim": "no",
        "address-claim": {type: "no"},
        claims: [
            {name: "groups", "user-property": "groups", type: "string", mandatory: true, "on-demand": false},
            {name: "preferred_username", "user-property": "username", type: "string", mandatory: true, "on-demand": false}
        ],
        "introspection-revocation-allowed": true, "introspection-revocation-auth-scope": [],
        "register-client-allowed": false, "session-management-allowed": false
    }'
}

# Config, database and first key, once per DIR (a restart keeps them).
prepare() {
    local dir=$1 port=$2 iss="http://127.0.0.1:$2/api/oidc"
    [ -f "$dir/glewlwyd.db" ] && return 0
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" "$HERE/glewlwyd.conf.in" >"$dir/glewlwyd.conf"
    new_key "$dir/keys.jwks" 1
    echo 1 >"$dir/key-counter"
    plugin_params "$iss" "${OIDC_TTL:-3600}" "$dir/keys.jwks" >"$dir/plugin-oidc.json"
    plugin_params "$iss" "${OIDC_SHORT_TTL:-1}" "$dir/keys.jwks" >"$dir/plugin-oidc-short.json"
    # One transaction (a second, not one fsync per statement), built under
    # another name and renamed, so a half-made database is never reused.
    rm -f "$dir/glewlwyd.db.tmp"
    sqlite3 -bail "$dir/glewlwyd.db.tmp" >"$dir/sqlite.log" 2>&1 <<SQL || { cat "$dir/sqlite.log" >&2; die "database setup failed"; }
PRAGMA synchronous = OFF;
BEGIN;
.read $SCHEMA
.read $HERE/glewlwyd-seed.sql
INSERT INTO g_plugin_module_instance (gpmi_module, gpmi_name, gpmi_display_name, gpmi_parameters, gpmi_enabled)
  VALUES ('oidc', 'oidc', 'OpenID Connect', CAST(readfile('$dir/plugin-oidc.json') AS TEXT), 1),
         ('oidc', 'oidc-short', 'OpenID Connect, short-lived tokens', CAST(readfile('$dir/plugin-oidc-short.json') AS TEXT), 1);
COMMIT;
SQL
    mv "$dir/glewlwyd.db.tmp" "$dir/glewlwyd.db"
}

wait_ready() {
    local dir=$1 port=$2 secs=${3:-20} pid kid dead=0
    local deadline=$((SECONDS + secs))
    while :; do
        pid=$(cat "$dir/run.pid" 2>/dev/null || true)
        kid=$(jq -r '.keys[0].kid' "$dir/keys.jwks" 2>/dev/null || true)
        # Ready = discovery answers and the JWKS it names holds OUR newest
        # key (so the answer is from this provider, not another port holder).
        if [ -n "$kid" ] && curl -sf -m 2 "http://127.0.0.1:$port/api/oidc/jwks" 2>/dev/null |
            jq -e --arg kid "$kid" 'any(.keys[]; .kid == $kid)' >/dev/null 2>&1 &&
            curl -sf -m 2 -o /dev/null "http://127.0.0.1:$port/api/oidc/.well-known/openid-configuration"; then
            return 0
        fi
        # Fail fast (after 1s of grace, as run.pid may still name the previous run).
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then dead=$((dead + 1)); else dead=0; fi
        if [ "$dead" -ge 10 ]; then
            echo "oidc.sh: glewlwyd (pid $pid) exited; its log:" >&2
            cat "$dir/glewlwyd.log" "$dir/run.log" >&2 2>/dev/null || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "oidc.sh: no answer on 127.0.0.1:$port after ${secs}s; log:" >&2
            cat "$dir/glewlwyd.log" "$dir/run.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
}

# Logs in through glewlwyd's login API (a cookie session, as its web pages do).
login() {
    local port=$1 user=$2 pass=$3 jar=$4
    jq -n --arg u "$user" --arg p "$pass" '{username: $u, password: $p}' |
        curl -sf -m 10 -c "$jar" -b "$jar" -H 'Content-Type: application/json' --data-binary @- \
            "http://127.0.0.1:$port/api/auth/" >/dev/null
}

b64url_decode() {
    local s
    s=$(printf '%s' "$1" | tr '_-' '/+')
    case $((${#s} % 4)) in 2) s="$s==" ;; 3) s="$s=" ;; esac
    printf '%s' "$s" | base64 -d
}

cmd=${1:-}; shift || true
case "$cmd" in
    run)
        [ $# -eq 2 ] || usage
        need_tools
        dir=$(mkdir -p "$1" && cd "$1" && pwd); port=$2
        prepare "$dir" "$port"
        echo $$ >"$dir/run.pid"    # exec keeps the pid: this is glewlwyd's pid
        # glewlwyd stays in the foreground; its own log goes to glewlwyd.log
        # (log_mode=file), anything printed before that to run.log.
        exec glewlwyd --config-file="$dir/glewlwyd.conf" >>"$dir/run.log" 2>&1
        ;;
    wait)
        [ $# -ge 2 ] || usage
        wait_ready "$1" "$2" "${3:-20}"
        ;;
    start)
        [ $# -eq 2 ] || usage
        dir=$(mkdir -p "$1" && cd "$1" && pwd)
        setsid bash "$0" run "$dir" "$2" </dev/null >>"$dir/run.log" 2>&1 &
        echo $! >"$dir/run.pid"
        if ! wait_ready "$dir" "$2" 20; then
            kill "$(cat "$dir/run.pid")" 2>/dev/null || true
            exit 1
        fi
        echo "glewlwyd up: issuer http://127.0.0.1:$2/api/oidc (pid $(cat "$dir/run.pid"), dir $dir)"
        ;;
    stop)
        [ $# -eq 1 ] || usage
        [ -f "$1/run.pid" ] || die "no $1/run.pid"
        pid=$(cat "$1/run.pid"); rm -f "$1/run.pid"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        ;;
    token)
        [ $# -ge 3 ] || usage
        curl -sS -m 10 -u "$CLIENT_ID:$CLIENT_SECRET" -d grant_type=password \
            --data-urlencode "username=$2" --data-urlencode "password=$3" -d scope=openid \
            "http://127.0.0.1:$1/api/${4:-oidc}/token"
        echo
        ;;
    approve)
        # What a person does in the browser for the device flow: log in, open
        # the verification URI with the user code. Consent was seeded.
        [ $# -ge 4 ] || usage
        port=$1; jar=$(mktemp); trap 'rm -f "$jar"' EXIT
        login "$port" "$2" "$3" "$jar" || die "login of $2 refused"
        loc=$(curl -s -m 10 -b "$jar" -o /dev/null -w '%{redirect_url}' \
            "http://127.0.0.1:$port/api/${5:-oidc}/device?code=$4&g_continue")
        case "$loc" in
            *prompt=deviceComplete*) echo "approved $4 for $2" ;;
            *) die "device code $4 not approved; redirected to: $loc" ;;
        esac
        ;;
    adduser)
        # Through the admin API (glewlwyd hashes the password), then the new
        # user grants openid to both clients, as alice/bob/carol have by seed.
        # Its sub is drawn by glewlwyd, separately for oidc and oidc-short.
        [ $# -ge 3 ] || usage
        port=$1 user=$2 pass=$3; shift 3
        work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
        login "$port" admin password "$work/admin" || die "admin login refused"
        jq -n --arg u "$user" --arg p "$pass" '{username: $u, password: $p, name: $u,
                email: ($u + "@vpn.test"), enabled: true, scope: ["openid", "g_profile"],
                groups: $ARGS.positional}' --args "$@" |
            curl -sf -m 10 -b "$work/admin" -H 'Content-Type: application/json' --data-binary @- \
                "http://127.0.0.1:$port/api/user/" >/dev/null || die "cannot add user $user"
        login "$port" "$user" "$pass" "$work/user" || die "login of new user $user refused"
        for c in "$CLIENT_ID" vpn-cli; do
            curl -sf -m 10 -b "$work/user" -X PUT -H 'Content-Type: application/json' -d '{"scope":"openid"}' \
                "http://127.0.0.1:$port/api/auth/grant/$c" >/dev/null || die "grant of openid to $c failed"
        done
        echo "added $user (groups: ${*:-none})"
        ;;
    rotate)
        # New RS256 key, first in the JWKS, so it signs from now on; the old
        # keys stay published (tokens already out still verify) unless
        # --drop-old. Applied through the admin API and a plugin reset: the
        # provider keeps running, its issuer and sessions unchanged.
        [ $# -ge 2 ] || usage
        dir=$(cd "$1" && pwd); port=$2; drop=${3:-}
        work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
        n=$(($(cat "$dir/key-counter") + 1))
        new_key "$work/new.jwks" "$n"
        if [ "$drop" = --drop-old ]; then
            cp "$work/new.jwks" "$work/all.jwks"
        else
            jq -c -s '{keys: (.[0].keys + .[1].keys)}' "$work/new.jwks" "$dir/keys.jwks" >"$work/all.jwks"
        fi
        login "$port" admin password "$work/jar" || die "admin login refused"
        for p in oidc oidc-short; do
            curl -sf -m 10 -b "$work/jar" "http://127.0.0.1:$port/api/mod/plugin/$p" >"$work/$p.json" ||
                die "cannot read plugin $p"
            jq --rawfile k "$work/all.jwks" '.parameters."jwks-private" = $k' "$work/$p.json" |
                curl -sf -m 10 -b "$work/jar" -X PUT -H 'Content-Type: application/json' --data-binary @- \
                    "http://127.0.0.1:$port/api/mod/plugin/$p" >/dev/null || die "cannot update plugin $p"
            curl -sf -m 10 -b "$work/jar" -X PUT "http://127.0.0.1:$port/api/mod/plugin/$p/reset" >/dev/null ||
                die "cannot reset plugin $p"
        done
        cp "$work/all.jwks" "$dir/keys.jwks"
        echo "$n" >"$dir/key-counter"
        jq -r '.keys[0].kid' "$dir/keys.jwks"
        ;;
    decode)
        [ $# -eq 1 ] || usage
        IFS=. read -r h c _ <<<"$1"
        b64url_decode "$h" | jq -c .
        b64url_decode "$c" | jq .
        ;;
    *) usage ;;
esac
