#!/usr/bin/env bash
# A real OpenLDAP server (Debian's slapd) for the identity tests, confined to
# one directory: config, database, pid and log all live in DIR, so nothing
# global (/etc/ldap, /var/lib/ldap, a system service) is touched.
#
#   slapd.sh run   DIR PORT          # load DIR once, then exec slapd in the
#                                    # foreground: the caller's child IS slapd,
#                                    # and killing it stops the server
#   slapd.sh wait  DIR PORT [SECS]   # until a service bind answers (default 20s);
#                                    # on failure prints the slapd log, exits 1
#   slapd.sh start DIR PORT          # run in the background + wait (by hand)
#   slapd.sh stop  DIR               # kill what run/start started in DIR
#   slapd.sh adduser PORT USER PASSWORD [GROUP...]  # one more user, in these groups
#   slapd.sh lock  PORT USER         # lock a user the way carol is locked
#
# With DIR/tls/{ca.crt,server.crt,server.key} present at `run`, slapd also
# offers StartTLS with that certificate.
#
# Directory (see README.md): base dc=vpn,dc=test; users uid=alice|bob|carol,
# ou=people; groups cn=vpn-admins|vpn-operators,ou=groups (groupOfNames);
# carol is locked by ppolicy. Passwords: <name>-pass, service: service-pass,
# rootdn cn=admin,dc=vpn,dc=test: admin-pass.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"   # slapd, slapadd, slappasswd are in sbin
SERVICE_DN="cn=vpn-service,ou=services,dc=vpn,dc=test"
SERVICE_PW="service-pass"
ROOT_DN="cn=admin,dc=vpn,dc=test"
ROOT_PW="admin-pass"

die() { echo "slapd.sh: $*" >&2; exit 1; }
usage() { sed -n '2,22p' "$0" >&2; exit 2; }

need_tools() {
    for t in slapd slapadd slappasswd ldapwhoami; do
        command -v "$t" >/dev/null || die "$t not found: run ops/scripts/identity-servers.sh first"
    done
}

# Writes DIR/slapd.conf and loads the directory with slapadd (offline, before
# the server starts, so there is no window where the server is up but empty).
# Skipped when DIR already holds a database: a restart keeps the data.
prepare() {
    local dir=$1
    # StartTLS with DIR/tls/{ca.crt,server.crt,server.key} when the caller left them.
    if [ -f "$dir/tls/server.crt" ]; then
        printf 'TLSCACertificateFile %s\nTLSCertificateFile %s\nTLSCertificateKeyFile %s\n' \
            "$dir/tls/ca.crt" "$dir/tls/server.crt" "$dir/tls/server.key" >"$dir/tls.conf"
    else
        : >"$dir/tls.conf"
    fi
    [ -f "$dir/data/data.mdb" ] && return 0
    mkdir -p "$dir/data"
    sed -e "s|@DIR@|$dir|g" -e "s|@ROOTPW@|$(slappasswd -h '{SSHA}' -s admin-pass)|" \
        "$HERE/slapd.conf.in" >"$dir/slapd.conf"
    sed -e "s|@SERVICE_HASH@|$(slappasswd -h '{SSHA}' -s "$SERVICE_PW")|" \
        -e "s|@ALICE_HASH@|$(slappasswd -h '{SSHA}' -s alice-pass)|" \
        -e "s|@BOB_HASH@|$(slappasswd -h '{SSHA}' -s bob-pass)|" \
        -e "s|@CAROL_HASH@|$(slappasswd -h '{SSHA}' -s carol-pass)|" \
        "$HERE/directory.ldif.in" >"$dir/directory.ldif"
    if ! slapadd -f "$dir/slapd.conf" -l "$dir/directory.ldif" >"$dir/slapadd.log" 2>&1; then
        cat "$dir/slapadd.log" >&2
        rm -rf "$dir/data"
        die "slapadd failed (log above)"
    fi
}

wait_ready() {
    local dir=$1 port=$2 secs=${3:-20} pid dead=0
    local deadline=$((SECONDS + secs))
    while :; do
        # run.pid is re-read each round: right after a restart it may still
        # name the previous (dead) server for a moment.
        pid=$(cat "$dir/run.pid" 2>/dev/null || true)
        # slapd writes its pidfile only once its listener is bound, so a
        # matching pid proves that the answer comes from THIS server and not
        # from another process that holds the port.
        if [ -n "$pid" ] && [ "$(cat "$dir/slapd.pid" 2>/dev/null)" = "$pid" ] &&
            ldapwhoami -x -o nettimeout=2 -H "ldap://127.0.0.1:$port/" -D "$SERVICE_DN" -w "$SERVICE_PW" >/dev/null 2>&1; then
            return 0
        fi
        # Fail fast (after 1s of grace) when the server died: port taken, bad config.
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then dead=$((dead + 1)); else dead=0; fi
        if [ "$dead" -ge 10 ]; then
            echo "slapd.sh: slapd (pid $pid) exited; its log:" >&2
            cat "$dir/slapd.log" >&2 2>/dev/null || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "slapd.sh: no answer on 127.0.0.1:$port after ${secs}s; slapd log:" >&2
            cat "$dir/slapd.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
}

cmd=${1:-}; shift || true
case "$cmd" in
    run)
        [ $# -eq 2 ] || usage
        need_tools
        dir=$(mkdir -p "$1" && cd "$1" && pwd); port=$2
        prepare "$dir"
        rm -f "$dir/slapd.pid"
        echo $$ >"$dir/run.pid"     # exec keeps the pid: this is slapd's pid
        # -d keeps slapd in the foreground (no fork); 'stats' logs one line
        # per connection/operation, enough to see why a bind was refused.
        exec slapd -d "${SLAPD_DEBUG:-stats}" -f "$dir/slapd.conf" \
            -h "ldap://127.0.0.1:$port/" >>"$dir/slapd.log" 2>&1
        ;;
    wait)
        [ $# -ge 2 ] || usage
        wait_ready "$1" "$2" "${3:-20}"
        ;;
    start)
        [ $# -eq 2 ] || usage
        dir=$(mkdir -p "$1" && cd "$1" && pwd)
        setsid bash "$0" run "$dir" "$2" </dev/null >>"$dir/slapd.log" 2>&1 &
        echo $! >"$dir/run.pid"     # written before wait reads it (run rewrites the same pid)
        if ! wait_ready "$dir" "$2" 20; then
            kill "$(cat "$dir/run.pid")" 2>/dev/null || true
            exit 1
        fi
        echo "slapd up on ldap://127.0.0.1:$2/ (pid $(cat "$dir/run.pid"), dir $dir)"
        ;;
    stop)
        [ $# -eq 1 ] || usage
        [ -f "$1/run.pid" ] || die "no $1/run.pid"
        pid=$(cat "$1/run.pid")
        rm -f "$1/run.pid"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        ;;
    adduser)
        # Online, as the rootdn; a group that does not exist yet is created.
        [ $# -ge 3 ] || usage
        url="ldap://127.0.0.1:$1/" user=$2 pass=$3; shift 3
        udn="uid=$user,ou=people,dc=vpn,dc=test"
        ldapadd -x -H "$url" -D "$ROOT_DN" -w "$ROOT_PW" >/dev/null <<LDIF || die "cannot add $udn"
dn: $udn
objectClass: inetOrgPerson
uid: $user
cn: $user
sn: $user
mail: $user@vpn.test
userPassword: $(slappasswd -h '{SSHA}' -s "$pass")
LDIF
        for g in "$@"; do
            gdn="cn=$g,ou=groups,dc=vpn,dc=test"
            printf 'dn: %s
changetype: modify
add: member
member: %s
' "$gdn" "$udn" |
                ldapmodify -x -H "$url" -D "$ROOT_DN" -w "$ROOT_PW" >/dev/null 2>&1 ||
            printf 'dn: %s
objectClass: groupOfNames
cn: %s
member: %s
' "$gdn" "$g" "$udn" |
                ldapadd -x -H "$url" -D "$ROOT_DN" -w "$ROOT_PW" >/dev/null || die "cannot add $udn to $gdn"
        done
        echo "added $udn (groups: ${*:-none})"
        ;;
    lock)
        [ $# -eq 2 ] || usage
        printf 'dn: uid=%s,ou=people,dc=vpn,dc=test\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n' "$2" |
            ldapmodify -x -H "ldap://127.0.0.1:$1/" -D "$ROOT_DN" -w "$ROOT_PW" >/dev/null || die "cannot lock $2"
        echo "locked uid=$2,ou=people,dc=vpn,dc=test"
        ;;
    *) usage ;;
esac
