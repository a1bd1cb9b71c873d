"""Real POP/IMAP daemons log real logins; the shipped patterns must read them.

Dovecot is installed as a Debian package on the test host (tests/daemons.py)
and is tested through syslog and through its own log file.
Cyrus and Courier conflict with it as packages (all three "Provide:
imap-server"), so they are never installed: their .debs are fetched with
``apt-get download`` into a cache directory, unpacked there with ``dpkg -x``,
and run from there on loopback only (127.0.0.1, clients from distinct
127.0.0.x sources) under the private rsyslogd of tests/daemons.py, in a
private mount namespace whose /dev/log is that rsyslogd's socket.

Every test logs in for real (see ``exercise``: four mechanisms in the clear,
STARTTLS, STLS, implicit TLS, a session reset after login, ::1; then a wrong
password, an unknown user, clients that leave before authenticating, user
names that imitate a success line), then runs every line the daemon logged
through ``match_login`` with all shipped patterns, and runs pbsmtp-batch
itself on the log into a real hash map: each successful client address must
be found and land in the map, no failed one, and never the address an
injected user name carries.

Cache directory: $PBSMTP_DEB_CACHE, default /var/cache/pbsmtp-test. Needs root
(unshare --mount, mount, daemons dropping privileges), rsyslogd and network
access to a Debian mirror once (or a pre-filled cache). When CI=true anything
missing is a failure, otherwise a skip.
"""

import concurrent.futures
import http.server
import os
import random
import socketserver
import subprocess
import sys
import threading
import urllib.parse

import pytest

import daemons
import debs
import upstreams
from conftest import require_harness, unavailable
from cyrus_imapd import Cyrus
from logins import (ATTACKER, TLS, Client, check, imap_authenticate_plain,
                    imap_login, leave_before_auth, logins_found, plain, pop3_auth_plain,
                    pop3_user_pass, run_and_list, tool_argv, wait_until_listening)

pytestmark = pytest.mark.live


def exercise(server, maillog, net, crafted_imap, crafted_pop3, unknown_over_pop3, logged):
    """The same sessions against any IMAP+POP3 server, each from its own
    address in 127.0.0.<net>x:
    - nine good logins: LOGIN, AUTHENTICATE PLAIN, USER/PASS and AUTH PLAIN in
      the clear; LOGIN after STARTTLS, USER/PASS after STLS, AUTHENTICATE
      PLAIN on imaps and AUTH PLAIN on pop3s; a LOGIN whose session ends in a
      TCP reset instead of LOGOUT; and one more LOGIN from ::1 (when loopback
      has IPv6: *server*.ipv6);
    - then wrong passwords, an unknown user, two sessions that leave before
      auth, and two crafted user names.
    *server* has imap_port, pop3_port, imaps_port, pop3s_port (::1 listens
    on imap_port too) and cert. Returns the good addresses with their users
    and the bad addresses."""
    imap, pop3 = server.imap_port, server.pop3_port
    starttls, implicit = TLS("starttls", server.cert), TLS("implicit", server.cert)
    ip = lambda n: f"127.0.0.{net}{n}"
    good = {ip(1): "alice", ip(2): "bob", ip(3): "alice", ip(4): "bob",
            ip(5): "alice", ip(6): "bob", ip(7): "alice", ip(8): "bob", ip(9): "alice"}
    assert imap_login(imap, ip(1), "alice", "secret")
    assert imap_authenticate_plain(imap, ip(2), "bob", "hunter2")
    assert pop3_user_pass(pop3, ip(3), "alice", "secret")
    assert pop3_auth_plain(pop3, ip(4), "bob", "hunter2")
    assert imap_login(imap, ip(5), "alice", "secret", tls=starttls)
    assert pop3_user_pass(pop3, ip(6), "bob", "hunter2", tls=starttls)
    assert imap_authenticate_plain(server.imaps_port, ip(7), "alice", "secret", tls=implicit)
    assert pop3_auth_plain(server.pop3s_port, ip(8), "bob", "hunter2", tls=implicit)
    assert imap_login(imap, ip(9), "alice", "secret", reset=True)
    if server.ipv6:
        good["::1"] = "bob"
        assert imap_login(imap, "::1", "bob", "hunter2", host="::1")
    bad = [f"127.0.0.{net + 1}{n}" for n in range(1, 8)]
    unknown = pop3_auth_plain if unknown_over_pop3 else imap_login
    failures = [(imap_login, imap, bad[0], "alice", "wrong"),
                (unknown, pop3 if unknown_over_pop3 else imap, bad[1], "nobody", "secret"),
                (pop3_user_pass, pop3, bad[2], "alice", "wrong"),
                (imap_login, imap, bad[5], crafted_imap, "x"),
                (pop3_user_pass, pop3, bad[6], crafted_pop3, "x")]
    # Servers answer a failed login only after a delay (Courier's and Cyrus's
    # are seconds long): the failing clients run side by side.
    with concurrent.futures.ThreadPoolExecutor(len(failures)) as pool:
        answers = list(pool.map(lambda f: f[0](*f[1:]), failures))
    assert answers == [False] * len(failures)
    leave_before_auth(imap, bad[3], "a1 LOGOUT")
    leave_before_auth(pop3, bad[4], "QUIT")
    # Each failure is logged once its (delayed) answer is out.
    for _, _, address, _, _ in failures:
        daemons.wait_for_log(maillog, logged(address))
    return good, bad


def test_cyrus_logins(harness):
    workdir, rsyslog = harness
    root = debs.tree("cyrus")
    cyrus = Cyrus(root, workdir, rsyslog.socket, {"alice": "secret", "bob": "hunter2"})
    try:
        cyrus.start()
        good, bad = exercise(cyrus, rsyslog.maillog, 3,
                             f"login: [{ATTACKER}] alice plaintext User logged in",
                             f"x [{ATTACKER}] alice", False, lambda a: f"[{a}]")
    finally:
        cyrus.stop()
    check(rsyslog.maillog, good, bad, "cyrus")


# Courier-IMAP 5.0 / courier-pop 1.0 (with courier-authlib's authdaemond) ######

# Courier's paths are compiled in (/etc/courier, /usr/lib/courier,
# /run/courier/authdaemon/socket). In its private mount namespace the unpacked
# tree is laid over /usr and /etc (read-only lower layers, writes go to a
# tmpfs), /run gets a tmpfs upper layer, and /dev/log is switched as for
# Dovecot. Then authdaemond (authuserdb) and couriertcpd listeners run under
# courierlogger, as Debian's init scripts start them: imapd and pop3d in the
# clear (with STARTTLS/STLS), imapd-ssl and pop3d-ssl (couriertls -server in
# front, IMAP_TLS/POP3_TLS=1 as courier's imapd-ssl.rc sets them), and imapd
# on ::1 when IPv6 is given ($8 = 1). couriertcpd gets the package's own
# TCPDOPTS from /etc/courier/imapd and pop3d (Debian 12: "-nodnslookup
# -noidentlookup"; Debian 13's Courier 1.4 has no ident lookup and refuses
# -noidentlookup). TLS_CERTFILE (key and certificate in one file) and
# TLS_DHPARAMS are the test's own.
COURIER_SCRIPT = r"""set -e
W="$1"; C="$2"; DEVLOG="$3"; IMAP="$4"; POP="$5"; IMAPS="$6"; POPS="$7"; IPV6="$8"
mount -t tmpfs -o mode=0700,size=8m pbsmtp-ns "$W/ns"
for d in dev run etc; do mkdir "$W/ns/$d-upper" "$W/ns/$d-work"; done
mount -t overlay -o "lowerdir=/dev,upperdir=$W/ns/dev-upper,workdir=$W/ns/dev-work" pbsmtp-dev /dev
ln -sfn "$DEVLOG" /dev/log
mount -t overlay -o "lowerdir=$C/usr:/usr" pbsmtp-usr /usr
mount -t overlay -o "lowerdir=$W/etc:$C/etc:/etc,upperdir=$W/ns/etc-upper,workdir=$W/ns/etc-work" pbsmtp-etc /etc
mount -t overlay -o "lowerdir=/run,upperdir=$W/ns/run-upper,workdir=$W/ns/run-work" pbsmtp-run /run
mkdir -p /run/courier/authdaemon
/usr/sbin/makeuserdb
/usr/sbin/courierlogger -name=authdaemond /usr/lib/courier/courier-authlib/authdaemond &
# No listener before authdaemond answers: a login would fail meanwhile.
i=0
while [ ! -S /run/courier/authdaemon/socket ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
set -a
tls() {
    TLS_CERTFILE="$W/courier.pem"; TLS_DHPARAMS="$W/dhparams.pem"; TLS_CACHEFILE=""
}
. /etc/courier/imapd
. /etc/courier/imapd-ssl
tls
IMAP_STARTTLS=YES
/usr/sbin/courierlogger -name=imapd /usr/sbin/couriertcpd -address=127.0.0.1 \
    $TCPDOPTS "$IMAP" \
    /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir &
if [ "$IPV6" = 1 ]; then
    /usr/sbin/courierlogger -name=imapd /usr/sbin/couriertcpd -address=::1 \
        $TCPDOPTS "$IMAP" \
        /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir &
fi
IMAP_TLS=1 /usr/sbin/courierlogger -name=imapd-ssl /usr/sbin/couriertcpd -address=127.0.0.1 \
    $TCPDOPTS "$IMAPS" /usr/bin/couriertls -server -tcpd \
    /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir &
. /etc/courier/pop3d
. /etc/courier/pop3d-ssl
tls
/usr/sbin/courierlogger -name=pop3d /usr/sbin/couriertcpd -address=127.0.0.1 \
    $TCPDOPTS "$POP" \
    /usr/lib/courier/courier/courierpop3login /usr/lib/courier/courier/courierpop3d Maildir &
POP3_TLS=1 /usr/sbin/courierlogger -name=pop3d-ssl /usr/sbin/couriertcpd -address=127.0.0.1 \
    $TCPDOPTS "$POPS" /usr/bin/couriertls -server -tcpd \
    /usr/lib/courier/courier/courierpop3login /usr/lib/courier/courier/courierpop3d Maildir &
wait
"""


class Courier:
    """Courier imapd and pop3d on 127.0.0.1; users in a userdb with crypt
    passwords and Maildirs owned by nobody."""

    def __init__(self, root, workdir, devlog, users):
        self.root = root
        self.workdir = workdir
        self.devlog = devlog
        self.users = users
        self.ipv6 = daemons.ipv6_loopback()
        self.imap_port = daemons.free_port(("127.0.0.1", "::1") if self.ipv6 else ("127.0.0.1",))
        self.pop3_port = daemons.free_port()
        self.imaps_port = daemons.free_port()
        self.pop3s_port = daemons.free_port()
        self.cert = os.path.join(workdir, "cert.pem")
        self.proc = None

    # imapd and pop3d run couriertls for STARTTLS as the user "courier" (seen
    # with strace: without it, "getpwnam: Success" and "500 Error starting
    # couriertls"), so the private /etc/passwd has one, and it owns the key.
    COURIER_UID = 42430

    def configure(self):
        os.makedirs(os.path.join(self.workdir, "etc"))
        for name, entry in (("passwd", f"courier:x:{self.COURIER_UID}:{self.COURIER_UID}:"
                                       f":/nonexistent:/usr/sbin/nologin\n"),
                            ("group", f"courier:x:{self.COURIER_UID}:\n")):
            with open(os.path.join(self.workdir, "etc", name), "w") as f:
                f.write(daemons.read_text(f"/etc/{name}") + entry)
        key = os.path.join(self.workdir, "key.pem")
        daemons.make_cert(self.cert, key)
        pem = os.path.join(self.workdir, "courier.pem")
        with open(pem, "w") as f:
            f.write(daemons.read_text(key) + daemons.read_text(self.cert))
        os.chmod(pem, 0o600)
        os.chown(pem, self.COURIER_UID, self.COURIER_UID)
        # RFC 7919's ffdhe2048: a standard group, nothing to generate.
        subprocess.run([daemons.which("openssl"), "genpkey", "-genparam", "-algorithm", "DH",
                        "-pkeyopt", "group:ffdhe2048",
                        "-out", os.path.join(self.workdir, "dhparams.pem")],
                       check=True, capture_output=True)
        etc = os.path.join(self.workdir, "etc", "courier")
        os.makedirs(etc)
        os.makedirs(os.path.join(self.workdir, "ns"))
        entries = []
        for user, password in self.users.items():
            crypted = subprocess.run([daemons.which("openssl"), "passwd", "-6", password],
                                     capture_output=True, text=True, check=True).stdout.strip()
            home = os.path.join(self.workdir, "home", user)
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(home, "Maildir", sub))
            entries.append(f"{user}\tuid=65534|gid=65534|home={home}|mail={home}/Maildir"
                           f"|systempw={crypted}\n")
        subprocess.run(["chown", "-R", "nobody:nogroup", os.path.join(self.workdir, "home")],
                       check=True)
        with open(os.path.join(etc, "userdb"), "w") as f:
            f.writelines(entries)
        os.chmod(os.path.join(etc, "userdb"), 0o600)
        with open(os.path.join(etc, "authdaemonrc"), "w") as f:
            f.write('authmodulelist="authuserdb"\ndaemons=1\n'
                    'authdaemonvar=/run/courier/authdaemon\nDEBUG_LOGIN=0\n'
                    'DEFAULTOPTIONS=""\nLOGGEROPTS=""\n')

    def start(self):
        self.configure()
        self.output = os.path.join(self.workdir, "courier.out")
        argv = [daemons.which("unshare"), "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", COURIER_SCRIPT, "sh", self.workdir, self.root, self.devlog,
                str(self.imap_port), str(self.pop3_port), str(self.imaps_port),
                str(self.pop3s_port), "1" if self.ipv6 else "0"]
        self.proc = daemons.start_process(argv, self.output)
        wait_until_listening(self)

    def stop(self):
        daemons.stop_process(self.proc)
        self.proc = None


def test_courier_logins(harness):
    workdir, rsyslog = harness
    root = debs.tree("courier")
    courier = Courier(root, workdir, rsyslog.socket, {"alice": "secret", "bob": "hunter2"})
    # Courier copies the user name verbatim into the failure line (seen live
    # with Debian 12's Courier 5.0; this test reproduces it).
    crafted = f"x LOGIN, user=alice, ip=[::ffff:{ATTACKER}], port=[4242]"
    try:
        courier.start()
        good, bad = exercise(courier, rsyslog.maillog, 5, crafted, crafted, True,
                             lambda a: f"ip=[::ffff:{a}]")
    finally:
        courier.stop()
    check(rsyslog.maillog, good, bad, "courier")


# Dovecot 2.3 (Debian 12's dovecot-imapd and dovecot-pop3d, installed) #########

# Dovecot copies a failed user name verbatim into "Disconnected (auth failed
# ...): user=<NAME>, method=PLAIN, rip=A, ..." (seen live with Debian 12's
# Dovecot 2.3.19; the tests below reproduce it).
DOVECOT_CRAFTED_IMAP = f"x Login: user=<alice>, method=PLAIN, rip={ATTACKER}, lip=127.0.0.1"
DOVECOT_CRAFTED_POP3 = f"alice>, method=PLAIN, rip={ATTACKER}, lip=127.0.0.1, mpid=1, TLS, session=<x"


def require_dovecot():
    missing = daemons.missing_binaries({"dovecot": "dovecot-core"})
    for protocol in ("imap", "pop3"):
        if not os.path.exists(f"/usr/lib/dovecot/{protocol}-login"):
            missing.append(f"dovecot-{protocol}d")
    if missing:
        unavailable(f"missing: {', '.join(missing)} (apt-get install dovecot-imapd dovecot-pop3d)")


def dovecot_exercise(workdir, devlog, maillog, family, **options):
    """exercise() against a private Dovecot (daemons.Dovecot), then check
    *maillog* for *family*."""
    dovecot = daemons.Dovecot(workdir, {"alice": "secret", "bob": "hunter2"}, devlog,
                              ipv6=daemons.ipv6_loopback(), **options)
    try:
        dovecot.start()
        good, bad = exercise(dovecot, maillog, 7, DOVECOT_CRAFTED_IMAP, DOVECOT_CRAFTED_POP3,
                             True, lambda a: f"rip={a},")
    finally:
        dovecot.stop()
    check(maillog, good, bad, family)


def test_dovecot_logins(harness):
    """Through syslog(3) and the test's rsyslogd, in each output format."""
    require_dovecot()
    workdir, rsyslog = harness
    dovecot_exercise(workdir, rsyslog.socket, rsyslog.maillog, "dovecot")


def test_dovecot_as_a_proxy(harness):
    """Dovecot as a proxy (passdb proxy=y) in front of password-checking
    upstreams. 2.3 logs "proxy(u,HOST:PORT): Started proxying to <HOST> (N
    secs): user=<u>, ..., rip=A" once the upstream accepted the login (2.4:
    "Started proxying to remote host"); a password that Dovecot accepts but
    the upstream refuses writes no such line, and neither does a wrong one."""
    require_dovecot()
    workdir, rsyslog = harness
    upstream_users = {"alice": "secret", "bob": "hunter2"}
    imap_up, pop3_up = upstreams.imap_upstream(upstream_users), upstreams.pop3_upstream(upstream_users)
    dovecot = daemons.Dovecot(workdir, {**upstream_users, "carol": "secret"}, rsyslog.socket,
                              proxy_ports=(imap_up.server_address[1], pop3_up.server_address[1]))
    good = {"127.0.0.141": "alice", "127.0.0.142": "bob", "127.0.0.143": "alice",
            "127.0.0.144": "bob"}
    bad = ["127.0.0.151", "127.0.0.152", "127.0.0.153"]
    try:
        dovecot.start()
        starttls, implicit = TLS("starttls", dovecot.cert), TLS("implicit", dovecot.cert)
        assert imap_login(dovecot.imap_port, "127.0.0.141", "alice", "secret")
        assert pop3_user_pass(dovecot.pop3_port, "127.0.0.142", "bob", "hunter2")
        assert imap_login(dovecot.imap_port, "127.0.0.143", "alice", "secret", tls=starttls)
        assert pop3_auth_plain(dovecot.pop3s_port, "127.0.0.144", "bob", "hunter2", tls=implicit)
        assert not imap_login(dovecot.imap_port, bad[0], "alice", "wrong")
        assert not imap_login(dovecot.imap_port, bad[1], "carol", "secret")  # upstream: NO
        assert not pop3_user_pass(dovecot.pop3_port, bad[2], DOVECOT_CRAFTED_POP3, "x")
        for address in bad:
            daemons.wait_for_log(rsyslog.maillog, f"rip={address},")
    finally:
        dovecot.stop()
        for server in (imap_up, pop3_up):
            server.shutdown()
            server.server_close()
    started = ("Started proxying to remote host" if dovecot.version >= (2, 4)
               else "Started proxying to <127.0.0.1>")
    assert started in daemons.read_text(rsyslog.maillog)
    check(rsyslog.maillog, good, bad, "dovecot")


@pytest.mark.parametrize("log_timestamp, elements", [
    (None, None),
    # The elements in another order, as sites change them; the date as ISO.
    ("%Y-%m-%d %H:%M:%S ", "rip=%r user=<%u> lip=%l method=%m mpid=%e %c session=<%{session}>"),
], ids=["defaults", "custom"])
def test_dovecot_own_log_file(log_timestamp, elements):
    """Dovecot's own log file (log_path): no syslog, no host name, no tag."""
    require_harness()
    require_dovecot()
    workdir = daemons.make_workdir("pbsmtp-logins-")
    log = os.path.join(workdir, "dovecot.log")
    try:
        # Nothing may go through syslog: /dev/log points nowhere.
        dovecot_exercise(workdir, os.path.join(workdir, "no-syslog"), log, "dovecot-log",
                         log_file=log, log_timestamp=log_timestamp,
                         login_log_format_elements=elements)
        assert "dovecot:" not in daemons.read_text(log)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)


# solid-pop3d and popa3d (Debian 12), run from inetd ###########################

# Both log with a facility other than mail (seen live: they are missing from a
# mail.* file), so this rsyslogd writes every facility to its "maillog".
class AllFacilities(daemons.Rsyslog):
    def config(self):
        text = super().config()
        assert "mail.* action(" in text
        return text.replace("mail.* action(", "*.* action(")


# A minimal inetd: one accept loop per port, the daemon gets the connection as
# stdin/stdout, as from inetd(8). Arguments: port, program, argv[0] (tcpd
# finds the real daemon, and its syslog tag, through argv[0]).
INETD = """\
import socket, subprocess, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    subprocess.Popen([sys.argv[3]], executable=sys.argv[2], stdin=c, stdout=c,
                     stderr=subprocess.DEVNULL)
    c.close()
"""

# The unpacked tree over /usr and /etc; the test's users in /etc/passwd and
# /etc/shadow (lower layer), which pam_unix reads; a writable /var.
INETD_SCRIPT = r"""set -e
W="$1"; C="$2"; DEVLOG="$3"; PY="$4"
mount -t tmpfs -o mode=0700,size=8m pbsmtp-ns "$W/ns"
for d in dev var etc; do mkdir "$W/ns/$d-upper" "$W/ns/$d-work"; done
mount -t overlay -o "lowerdir=/dev,upperdir=$W/ns/dev-upper,workdir=$W/ns/dev-work" pbsmtp-dev /dev
ln -sfn "$DEVLOG" /dev/log
mount -t overlay -o "lowerdir=$C/usr:/usr" pbsmtp-usr /usr
mount -t overlay -o "lowerdir=$W/etc:$C/etc:/etc,upperdir=$W/ns/etc-upper,workdir=$W/ns/etc-work" pbsmtp-etc /etc
mount -t overlay -o "lowerdir=/var,upperdir=$W/ns/var-upper,workdir=$W/ns/var-work" pbsmtp-var /var
mkdir -p /var/lib/popa3d /var/mail
shift 4
while [ $# -ge 3 ]; do
    "$PY" "$W/inetd.py" "$1" "$2" "$3" &
    shift 3
done
wait
"""


class Inetd:
    """*services* ({name: program path, or (program, argv[0])}) each on its own
    127.0.0.1 port. Host names come from /etc/hosts only (tcpd looks up every
    client), so no test waits for DNS."""

    SERVICE_USERS = ("popa3d", "spop3d")
    # Client addresses with a host name, which some daemons log as "NAME (ADDR)".
    HOSTS = {"127.0.0.86": "client86.example.net"}

    def __init__(self, root, workdir, devlog, users, services):
        self.root = root
        self.workdir = workdir
        self.devlog = devlog
        self.users = users
        self.ports = {name: daemons.free_port() for name in services}
        self.services = services
        self.proc = None

    def configure(self):
        etc = os.path.join(self.workdir, "etc")
        os.makedirs(etc)
        os.makedirs(os.path.join(self.workdir, "ns"))
        with open(os.path.join(self.workdir, "inetd.py"), "w") as f:
            f.write(INETD)
        passwd, shadow, group = (open(f"/etc/{n}").read() for n in ("passwd", "shadow", "group"))
        for uid, name in enumerate([*self.users, *self.SERVICE_USERS], start=42420):
            passwd += f"{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
            group += f"{name}:x:{uid}:\n"
            crypted = "*"
            if name in self.users:
                crypted = subprocess.run(
                    [daemons.which("openssl"), "passwd", "-6", self.users[name]],
                    capture_output=True, text=True, check=True).stdout.strip()
            shadow += f"{name}:{crypted}:19000:0:99999:7:::\n"
        for name, text, mode in (("passwd", passwd, 0o644), ("group", group, 0o644),
                                 ("shadow", shadow, 0o640),
                                 ("nsswitch.conf", "hosts: files\n", 0o644),
                                 ("hosts", daemons.read_text("/etc/hosts")
                                  + "".join(f"{a} {n}\n" for a, n in self.HOSTS.items()),
                                  0o644)):
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(etc, name), mode)

    def start(self):
        self.configure()
        argv = [daemons.which("unshare"), "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", INETD_SCRIPT, "sh", self.workdir, self.root, self.devlog,
                sys.executable]
        for name, program in self.services.items():
            program, argv0 = (program, program) if isinstance(program, str) else program
            argv += [str(self.ports[name]), program, argv0]
        self.proc = daemons.start_process(argv, os.path.join(self.workdir, "inetd.out"))
        for port in self.ports.values():
            daemons.wait_for_port("127.0.0.1", port, self.proc.pid)

    def stop(self):
        daemons.stop_process(self.proc)
        self.proc = None


@pytest.fixture
def inetd_harness():
    require_harness()
    workdir = daemons.make_workdir("pbsmtp-logins-")
    rsyslog = AllFacilities(workdir, template=daemons.RFC3339)
    try:
        rsyslog.start()
        root = debs.tree("solid-pop3d+popa3d")
        tcpd = os.path.join(debs.tree("tcpd"), debs.TREES["tcpd"].marker)
        inetd = Inetd(root, workdir, rsyslog.socket, {"alice": "secret"},
                      {"solid-pop3d": "/usr/sbin/solid-pop3d", "popa3d": "/usr/sbin/popa3d",
                       # as inetd.conf's "... /usr/sbin/tcpd /usr/sbin/popa3d"
                       "popa3d-tcpd": (tcpd, "/usr/sbin/popa3d")})
        try:
            inetd.start()
            yield inetd, rsyslog
        finally:
            inetd.stop()
    finally:
        rsyslog.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)


def test_solid_pop3d_logins(inetd_harness):
    """Debian's solid-pop3d is built with logextend: one line with the
    address, "ADDR" or, for a client with a host name, "NAME (ADDR)"."""
    inetd, rsyslog = inetd_harness
    port = inetd.ports["solid-pop3d"]
    # The mailbox cannot be locked here, so the session ends in -ERR, but the
    # success line is written once the password was checked: that is the
    # login that counts.
    pop3_user_pass(port, "127.0.0.81", "alice", "secret")
    pop3_user_pass(port, "127.0.0.86", "alice", "secret")
    daemons.wait_for_log(rsyslog.maillog, "authenticated - client86.example.net (127.0.0.86)")
    bad = ["127.0.0.82", "127.0.0.83", "127.0.0.84", "127.0.0.85"]
    assert not pop3_user_pass(port, "127.0.0.82", "alice", "wrong")
    assert not pop3_user_pass(port, "127.0.0.83", "nobody", "secret")
    leave_before_auth(port, "127.0.0.84", "QUIT")
    assert not pop3_user_pass(port, "127.0.0.85", f"alice authenticated - {ATTACKER}", "x")
    daemons.wait_for_log(rsyslog.maillog, "- 127.0.0.85")
    check(rsyslog.maillog, {"127.0.0.81": "alice", "127.0.0.86": "alice"}, bad, "solid-pop3d")


def test_popa3d_stock_logs_no_address(inetd_harness):
    """Stock popa3d run from inetd logs "Authentication passed for USER" and
    never the client address (only its standalone mode logs "Session from
    ADDR"), so no pattern can find its logins; the patched one-line form in
    popa3d.toml must not misread the stock lines either."""
    inetd, rsyslog = inetd_harness
    port = inetd.ports["popa3d"]
    pop3_user_pass(port, "127.0.0.91", "alice", "secret")
    assert not pop3_user_pass(port, "127.0.0.92", "alice", "wrong")
    daemons.wait_for_log(rsyslog.maillog, "Authentication failed for alice")
    assert "Authentication passed for alice" in daemons.read_text(rsyslog.maillog)
    assert logins_found(rsyslog.maillog) == []


def test_popa3d_under_tcpd_pairs_two_lines_by_pid(inetd_harness):
    """Under Debian's tcpd, "popa3d[PID]: connect from ADDR (ADDR)" comes
    first, then popa3d (tcpd execs it: the same PID) logs "Authentication
    passed for U". The two lines are paired by PID, also when a run falls
    between them (the address waits in the state directory)."""
    inetd, rsyslog = inetd_harness
    port = inetd.ports["popa3d-tcpd"]
    argv = tool_argv(rsyslog.maillog)
    c = Client(port, "127.0.0.95")
    c.send("USER alice")
    assert c.line().startswith("+OK")
    daemons.wait_for_log(rsyslog.maillog, "popa3d[", "connect from ", "(127.0.0.95)")
    assert run_and_list(argv) == set()           # an address line alone adds nothing
    c.send("PASS secret")
    assert c.line().startswith("+OK")
    c.close("QUIT")
    daemons.wait_for_log(rsyslog.maillog, "Authentication passed for alice")
    assert run_and_list(argv) == {"127.0.0.95"}
    # In one run: another good login, a crafted user name (popa3d refuses a
    # USER with blanks before any auth), a wrong password.
    assert pop3_user_pass(port, "127.0.0.97", "alice", "secret")
    bad = ["127.0.0.98", "127.0.0.99"]
    assert not pop3_user_pass(port, bad[1], f"alice -- [{ATTACKER}]", "x")
    assert not pop3_user_pass(port, bad[0], "alice", "wrong")
    daemons.wait_for_log(rsyslog.maillog, "Authentication failed for alice")
    assert run_and_list(argv) == {"127.0.0.95", "127.0.0.97"}
    check(rsyslog.maillog, {"127.0.0.95": "alice", "127.0.0.97": "alice"}, bad, "popa3d")


# nginx mail proxy (Debian 12 nginx 1.22.1 + libnginx-mod-mail) ################
#
# nginx and its mail module are real; the auth_http server and the upstream
# IMAP/POP3/SMTP servers are small stand-ins in this process (nginx only needs
# "Auth-Status: OK" and an upstream that answers OK).

def fake_upstream(kind):
    """An upstream that accepts any login nginx proxies to it."""
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write({"imap": b"* OK ready\r\n", "pop3": b"+OK ready\r\n",
                              "smtp": b"220 ready\r\n"}[kind])
            tag = None
            for raw in self.rfile:
                line = raw.decode(errors="replace").rstrip("\r\n")
                words = line.split() or [""]
                if kind == "imap":
                    if line.endswith("}"):           # nginx sends LOGIN with literals
                        tag = tag or words[0]
                        self.wfile.write(b"+ go ahead\r\n")
                        continue
                    self.wfile.write(f"{tag or words[0]} OK done\r\n".encode())
                    tag = None
                elif kind == "pop3":
                    self.wfile.write(b"+OK\r\n")
                else:
                    self.wfile.write(b"250 ok\r\n")
                if words[-1].upper() in ("QUIT", "LOGOUT"):
                    return
    server = upstreams.ThreadingServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def fake_auth_http(users, upstreams):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            user, password = self.headers.get("Auth-User"), self.headers.get("Auth-Pass")
            upstream = upstreams[self.headers.get("Auth-Protocol")]
            self.send_response(200)
            if users.get(urllib.parse.unquote(user or "")) == urllib.parse.unquote(password or ""):
                self.send_header("Auth-Status", "OK")
                self.send_header("Auth-Server", "127.0.0.1")
                self.send_header("Auth-Port", str(upstream.server_address[1]))
            else:
                self.send_header("Auth-Status", "Invalid login or password")
                self.send_header("Auth-Wait", "0")
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def smtp_auth_plain(port, source, user, password, host="127.0.0.1"):
    c = Client(port, source, host)
    try:
        c.send("EHLO client.example.org")
        while c.line().startswith("250-"):
            pass
        c.send(f"AUTH PLAIN {plain(user, password)}")
        return c.line().startswith("235")
    finally:
        c.close("QUIT")


def test_nginx_mail_logins(harness):
    """POP3/IMAP listeners on their standard ports count; SMTP ones never,
    even with a login that carries an IMAP upstream of its own."""
    workdir, rsyslog = harness
    root = debs.tree("nginx")
    crafted = 'x", upstream: 10.0.0.1:143'
    users = {"alice": "secret", crafted: "secret"}
    upstreams = {k: fake_upstream(k) for k in ("imap", "pop3", "smtp")}
    auth = fake_auth_http(users, upstreams)
    # Standard ports, on a loopback address of their own (the test runs as root).
    listen = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.1"
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""\
load_module {root}/usr/lib/nginx/modules/ngx_mail_module.so;
daemon off;
user nobody nogroup;
pid {workdir}/nginx.pid;
# nohostname: nginx would otherwise put its host name into the message that
# it sends to a local socket, and the maillog tag would read "HOST nginx:".
error_log syslog:server=unix:{rsyslog.socket},facility=mail,tag=nginx,nohostname info;
events {{ worker_connections 64; }}
mail {{
    auth_http 127.0.0.1:{auth.server_address[1]}/auth;
    proxy on;
    smtp_auth login plain;
    xclient off;
    server {{ listen {listen}:143; protocol imap; }}
    server {{ listen {listen}:110; protocol pop3; }}
    server {{ listen {listen}:25; protocol smtp; }}
    server {{ listen {listen}:587; protocol smtp; }}
}}
""")
    proc = daemons.start_process([os.path.join(root, "usr/sbin/nginx"), "-p", workdir,
                           "-e", os.path.join(workdir, "error.log"), "-c", conf],
                          os.path.join(workdir, "nginx.out"))
    try:
        for port in (143, 110, 25, 587):
            daemons.wait_for_port(listen, port, proc.pid)
        good = {"127.0.0.111": "alice", "127.0.0.112": "alice"}
        assert imap_login(143, "127.0.0.111", "alice", "secret", listen)
        assert pop3_user_pass(110, "127.0.0.112", "alice", "secret", listen)
        bad = ["127.0.0.113", "127.0.0.114", "127.0.0.115", "127.0.0.116", "127.0.0.117"]
        assert not imap_login(143, "127.0.0.113", "alice", "wrong", listen)
        assert not pop3_user_pass(110, "127.0.0.114", "nobody", "secret", listen)
        # Successful SMTP AUTH through nginx: "client logged in" too, not POP/IMAP.
        assert smtp_auth_plain(25, "127.0.0.115", "alice", "secret", listen)
        assert smtp_auth_plain(587, "127.0.0.116", "alice", "secret", listen)
        assert smtp_auth_plain(587, "127.0.0.117", crafted, "secret", listen)
        daemons.wait_for_log(rsyslog.maillog, "client: 127.0.0.117")
    finally:
        daemons.stop_process(proc)
        auth.shutdown()
        for server in upstreams.values():
            server.shutdown()
    check(rsyslog.maillog, good, bad, "nginx-mail")
