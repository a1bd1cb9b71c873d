#!/bin/bash
# POP-before-SMTP, shown with real daemons: log in over POP3 or IMAP, run
# pbsmtp-batch, and Postfix relays for you; don't log in, and it refuses.
#
# Run as root on a throw-away Debian machine:
#
#     examples/demo.sh [hash|lmdb]
#
# It starts its own rsyslogd, Dovecot (POP3 + IMAP) and Postfix, each with a
# private config under a temporary directory, listening on loopback only
# (127.0.0.1 and ::1) on free ports. It never reads or changes /etc/postfix,
# /etc/dovecot or the host's /dev/log, and stops every daemon by PID on exit.
# No mail is sent: the SMTP client QUITs after RCPT TO, and Postfix's
# transports are "discard" besides.
#
# Environment: PBSMTP_BATCH=command to run the tool (default: pbsmtp-batch on
# PATH, else this checkout's pbsmtp_batch.py); KEEP=1 keeps the work directory.

set -euo pipefail

MAP_TYPE=${1:-hash}
GRACE=20          # seconds a login allows relaying (the real default is 1800)
USER_NAME=alice
PASSWORD=wonderland
RCPT=someone@example.net
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
DAEMONS="$REPO/tests/daemons.py"
PACKAGES="postfix postfix-lmdb dovecot-pop3d dovecot-imapd rsyslog python3"

say()  { printf '    %s\n' "$*"; }
step() { printf '\n==> %s\n' "$*"; }
die()  { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

###############################################################################
# Refuse to run where it does not belong #######################################
###############################################################################

case $MAP_TYPE in hash|lmdb) ;; *) die "usage: $0 [hash|lmdb]" ;; esac
[ "$(id -u)" -eq 0 ] || die "run me as root (I start Postfix and Dovecot)."
[ -r /etc/debian_version ] || die "this demo is for Debian (it uses Debian's packages)."
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" ||
        missing="$missing $pkg"
done
[ -z "$missing" ] || die "missing packages:$missing
    install them with:  apt-get install $PACKAGES"
[ -r "$DAEMONS" ] || die "$DAEMONS not found: run me from a pbsmtp-batch checkout."

if [ -n "${PBSMTP_BATCH:-}" ]; then
    read -r -a TOOL <<<"$PBSMTP_BATCH"
elif command -v pbsmtp-batch >/dev/null; then
    TOOL=(pbsmtp-batch)
elif python3 -c 'import click, pygtail' 2>/dev/null; then
    TOOL=(python3 "$REPO/pbsmtp_batch.py")
else
    die "pbsmtp-batch is not installed: pip install '$REPO' (or set PBSMTP_BATCH)."
fi

###############################################################################
# Bring the daemons up, and always take them down ##############################
###############################################################################

DIR=$(mktemp -d /tmp/pbsmtp-demo.XXXXXX)
chmod 755 "$DIR"            # postfix and dovecot's users must reach inside

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    step "Tearing down"
    if [ -r "$DIR/lab.json" ]; then
        say "stopping Postfix (postfix -c $DIR/postfix/etc stop), Dovecot and rsyslogd, by PID"
    fi
    python3 "$DAEMONS" down "$DIR" || say "(some daemon would not stop: see $DIR)"
    if [ "${KEEP:-0}" = 1 ]; then
        say "kept $DIR (logs: maillog, postfix/postfix.log)"
    else
        rm -rf "$DIR"
        say "removed $DIR"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

MAILLOG=$DIR/maillog
DBFILE=$DIR/map/pop-before-smtp
PFCONF=$DIR/postfix/etc
# --nosyslog: the run line would go to the host's /dev/log, which the demo never touches.
run_tool() {
    "${TOOL[@]}" --logfile="$MAILLOG" --dbfile="$DBFILE" --map-type="$MAP_TYPE" \
        --state-dir="$DIR/state" --grace="$GRACE" --postfix-config="$PFCONF" --nosyslog "$@"
}

step "Starting rsyslogd, Dovecot (POP3, IMAP) and Postfix on loopback, map type $MAP_TYPE"
say "work directory: $DIR"
# The first pbsmtp-batch run, before Postfix starts, creates the (empty) map.
python3 "$DAEMONS" up "$DIR" --map-type "$MAP_TYPE" --user "$USER_NAME:$PASSWORD" \
    -- "${TOOL[@]}" --logfile="$MAILLOG" --dbfile="$DBFILE" --map-type="$MAP_TYPE" \
       --state-dir="$DIR/state" --grace="$GRACE" --postfix-config="$PFCONF" >/dev/null

field() {   # field NAME: a value from the lab's description
    python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
print(", ".join(f"{k} {p}" for k, p in v.items()) if isinstance(v, dict) else v)' \
        "$DIR/lab.json" "$1"
}
SMTP=$(field smtp_port); POP3=$(field pop3_port); IMAP=$(field imap_port); IPV6=$(field ipv6)
PIDS=$(field pids)
say "rsyslogd writes facility mail to $MAILLOG"
say "Dovecot: POP3 on port $POP3, IMAP on port $IMAP; logs through syslog(3)"
say "Postfix: smtpd on port $SMTP, log $DIR/postfix/postfix.log"
say "PIDs: $PIDS (postfix: the master)"
say "Postfix relay settings (postconf -c $PFCONF -n):"
postconf -c "$PFCONF" -n mynetworks smtpd_relay_restrictions | sed 's/^/        /'

relay() {   # relay SOURCE EXPECT(accepted|refused)
    local out
    out=$(python3 "$DAEMONS" smtp --source "$1" --port "$SMTP" --rcpt "$RCPT") || true
    case $out in
        250*) say "relay now: $out  -> accepted" ;;
        *)    say "relay now: $out  -> refused" ;;
    esac
    case "$2:$out" in
        accepted:250*|refused:5*"Relay access denied"*) ;;
        *) die "expected the relay to be $2 for $1" ;;
    esac
}
login() {   # login pop3|imap SOURCE PASSWORD
    local out port=$IMAP rc=0
    [ "$1" = pop3 ] && port=$POP3
    out=$(python3 "$DAEMONS" "$1" --source "$2" --port "$port" \
          --user "$USER_NAME" --password "$3") || rc=$?
    say "server said: $out"
    return $rc
}
wait_log() {   # wait_log TEXT: until the maillog holds TEXT, then show that line
    local _
    for _ in $(seq 50); do
        if grep -F -- "$1" "$MAILLOG" >/dev/null; then
            say "maillog: $(grep -F -- "$1" "$MAILLOG" | tail -n 1)"
            return 0
        fi
        sleep 0.1
    done
    die "no line with '$1' in $MAILLOG"
}
batch() {
    local list
    say "running: pbsmtp-batch --grace=$GRACE --map-type=$MAP_TYPE ... -v"
    run_tool -v | sed 's/^/        /'
    list=$(run_tool --list)
    say "who may relay now (pbsmtp-batch --list):"
    printf '%s\n' "${list:-(nobody)}" | sed 's/^/        /'
}

###############################################################################
# The story ###################################################################
###############################################################################

step "1. 127.0.0.5 has not logged in; it tries to relay to <$RCPT>"
relay 127.0.0.5 refused

step "2. logging in as $USER_NAME over POP3 from 127.0.0.5"
login pop3 127.0.0.5 "$PASSWORD" || die "POP3 login failed"
wait_log "rip=127.0.0.5,"
say "before pbsmtp-batch runs, Postfix knows nothing of it:"
relay 127.0.0.5 refused
step "   running pbsmtp-batch (cron would, every minute)"
log_start=$(stat -c %s "$DIR/postfix/postfix.log")
batch
say "127.0.0.5 tries again:"
relay 127.0.0.5 accepted
say "Postfix was not reloaded; smtpd noticed the new map by itself:"
changed=$(tail -c +"$((log_start + 1))" "$DIR/postfix/postfix.log" |
          grep -F "has changed -- restarting" | tail -n 1 || true)
say "postfix.log: ${changed:-(no idle smtpd had the old map open this time)}"

step "3. logging in as $USER_NAME with a WRONG password over IMAP from 127.0.0.6"
if login imap 127.0.0.6 not-the-password; then die "a wrong password was accepted"; fi
wait_log "rip=127.0.0.6,"
batch
say "127.0.0.6 tries to relay:"
relay 127.0.0.6 refused

step "4. logging in as $USER_NAME over IMAP from 127.0.0.7"
login imap 127.0.0.7 "$PASSWORD" || die "IMAP login failed"
# Dovecot 2.3 writes "imap-login: Login: user=<...>", 2.4 "imap-login: Logged in: ...".
wait_log "user=<$USER_NAME>, method=PLAIN, rip=127.0.0.7,"
batch
relay 127.0.0.7 accepted

if [ "$IPV6" = True ]; then
    step "5. IPv6: logging in over POP3 from ::1"
    relay ::1 refused
    login pop3 ::1 "$PASSWORD" || die "POP3 login over IPv6 failed"
    wait_log "rip=::1,"
    batch
    relay ::1 accepted
else
    step "5. IPv6: skipped, loopback has no ::1 here"
fi

step "6. waiting $((GRACE + 2)) s for the $GRACE s grace window to pass"
sleep "$((GRACE + 2))"
batch
say "127.0.0.7 (logged in over IMAP in step 4) tries again:"
relay 127.0.0.7 refused

step "Done: relaying followed the logins, and only the successful ones."
