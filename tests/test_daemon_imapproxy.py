"""up-imapproxy (Debian 12 ``imapproxy``) logs real logins; patterns/imapproxy.toml
must read them.

The package is not installed: its .deb is fetched with ``apt-get download``
and unpacked with ``dpkg -x`` into the cache of tests/debs.py
(``tree()``), then imapproxyd runs from there in the foreground on
127.0.0.1 only, in a private mount namespace whose /dev/log is the test's
rsyslogd (``daemons.start_with_devlog``), under each maillog format of the
``harness`` fixture. Its libraries (libssl3, libwrap0, libnsl2) come from the
host, as for the other unpacked daemons.

imapproxy checks no password itself: it forwards LOGIN to its upstream IMAP
server and logs what that server answered. The upstream here is a small IMAP
server in this process that does check them (the permissive fake of
test_daemon_logins would let a wrong password succeed). It speaks what
imapproxy needs: CAPABILITY at start-up, LOGIN with atoms, quoted strings
and synchronising literals (imapproxy sends the password of AUTHENTICATE
LOGIN as a literal), UNSELECT at the client's LOGOUT, LOGOUT.

Sessions: LOGIN (atom, then a quoted user name), a second LOGIN of the same
user after its logout (imapproxy reuses the cached server connection and
logs "on existing sd"), AUTHENTICATE LOGIN; a wrong password, an unknown
user, two clients that leave before authenticating, and crafted user names
(AUTHENTICATE LOGIN and a LOGIN literal carry any bytes) that imitate a
success line with the address 203.0.113.9.
"""

import base64
import os

import pytest

import daemons
import debs
import logins
import upstreams

pytestmark = pytest.mark.live

BINARY = debs.TREES["imapproxy"].marker
USERS = {"alice": "secret", "bob": "hunter2", "carol": "letmein"}
# A whole success clause with the attacker's address, as a user name.
CRAFTED = f"x' ({logins.ATTACKER}:4242) on new sd [7]"


# imapproxyd ###################################################################

class Imapproxy:
    """imapproxyd in the foreground on 127.0.0.1, proxying to *upstream_port*."""

    def __init__(self, root, workdir, devlog, upstream_port):
        self.root = root
        self.workdir = workdir
        self.devlog = devlog
        self.upstream_port = upstream_port
        self.port = daemons.free_port()
        self.proc = None

    def configure(self):
        conf = os.path.join(self.workdir, "imapproxy.conf")
        with open(conf, "w") as f:
            f.write(f"""\
server_hostname 127.0.0.1
server_port {self.upstream_port}
listen_address 127.0.0.1
listen_port {self.port}
connect_retries 1
connect_delay 1
cache_size 16
cache_expiration_time 300
proc_username nobody
proc_groupname nogroup
stat_filename {self.workdir}/pimpstats
protocol_log_filename {self.workdir}/imapproxy_protocol.log
syslog_facility LOG_MAIL
send_tcp_keepalives no
enable_select_cache no
foreground_mode yes
force_tls no
enable_admin_commands no
""")
        return conf

    def start(self):
        conf = self.configure()
        argv = [os.path.join(self.root, BINARY), "-f", conf,
                "-p", os.path.join(self.workdir, "imapproxy.pid")]
        self.output = os.path.join(self.workdir, "imapproxy.out")
        self.proc = daemons.start_with_devlog(self.workdir, self.devlog, argv, self.output)
        daemons.wait_for_port("127.0.0.1", self.port, self.proc.pid)

    def stop(self):
        daemons.stop_process(self.proc)
        self.proc = None


def b64(text):
    return base64.b64encode(text.encode()).decode()


def imap_login_atoms(port, source, user, password):
    """LOGIN with unquoted user name and password (logins.imap_login quotes them)."""
    with logins.imap_session(port, source) as c:
        return logins.imap_command(c, "a1", f"LOGIN {user} {password}").startswith("a1 OK")


def imap_authenticate_login(port, source, user, password):
    """AUTHENTICATE LOGIN, the one SASL mechanism imapproxy takes itself."""
    with logins.imap_session(port, source) as c:
        for line in ("a1 AUTHENTICATE LOGIN", b64(user)):
            c.send(line)
            if not c.line().startswith("+"):
                return False
        c.send(b64(password))
        return logins.imap_tagged(c, "a1").startswith("a1 OK")


def test_imapproxy_logins(harness):
    workdir, rsyslog = harness
    root = debs.runnable("imapproxy")
    upstream = upstreams.imap_upstream(USERS)
    proxy = Imapproxy(root, workdir, rsyslog.socket, upstream.server_address[1])
    port = proxy.port
    try:
        proxy.start()
        good = {"127.0.0.161": "alice", "127.0.0.162": "bob", "127.0.0.163": "alice",
                "127.0.0.164": "carol"}
        assert imap_login_atoms(port, "127.0.0.161", "alice", "secret")
        # imap_login quotes: imapproxy logs the user name as sent, '"bob"'.
        assert logins.imap_login(port, "127.0.0.162", "bob", "hunter2")
        daemons.wait_for_log(rsyslog.maillog, "LOGOUT: 'alice'")
        # alice's server connection is cached since her logout: reused.
        assert imap_login_atoms(port, "127.0.0.163", "alice", "secret")
        daemons.wait_for_log(rsyslog.maillog, "127.0.0.163:", "on existing sd")
        assert imap_authenticate_login(port, "127.0.0.164", "carol", "letmein")
        bad = [f"127.0.0.17{n}" for n in range(1, 7)]
        # alice is cached: imapproxy first refuses the cached connection
        # ("password doesn't match"), then asks the upstream, which says NO.
        assert not imap_login_atoms(port, bad[0], "alice", "wrong")
        assert not logins.imap_login(port, bad[1], "nobody", "secret")
        logins.leave_before_auth(port, bad[2], "a1 LOGOUT")
        logins.leave_before_auth(port, bad[3], None)
        assert not imap_authenticate_login(port, bad[4], CRAFTED, "x")
        assert not logins.imap_login_literal(port, bad[5], CRAFTED, "x")
        daemons.wait_for_log(rsyslog.maillog, f"({bad[5]}:", "failed")
    finally:
        proxy.stop()
        upstream.shutdown()
        upstream.server_close()
    logins.check(rsyslog.maillog, good, bad, "imapproxy")
