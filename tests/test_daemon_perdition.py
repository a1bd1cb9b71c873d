"""Perdition 2.2 (Debian 12 ``perdition``) logs real logins;
patterns/perdition.toml must read them.

The package is not installed: its .deb and those of its libvanessa libraries
(which the host lacks: libvanessa-adt1, -logger0, -socket2; they install
into /usr/lib, so LD_LIBRARY_PATH names it) are fetched with ``apt-get
download`` and unpacked with ``dpkg -x`` into the cache of
tests/debs.py (``tree()``). Perdition runs from there under
its Debian names (the init script starts perdition.pop3, perdition.imap4,
perdition.imaps and perdition.managesieve: the name is the syslog tag and the
protocol) in the foreground (--no_daemon), on 127.0.0.1 only (-b; and ::1
when loopback has IPv6), without a popmap (-M "") but with one back-end for
every user (-s 127.0.0.1:PORT), in a private mount namespace whose /dev/log
is the test's rsyslogd (``daemons.start_with_devlog``), under each maillog
format of the ``harness`` fixture. It drops to nobody/nogroup itself.

Perdition checks no password: it passes the credentials on to the back-end
and logs what that answered. The back-ends here are small servers in this
process that do check them (tests/upstreams.py): POP3 (USER/PASS), IMAP
(LOGIN) and ManageSieve (AUTHENTICATE "PLAIN").

Sessions, each from its own source 127.0.0.121-139 (and ::1):
- good: POP3 USER/PASS, IMAP LOGIN, POP3 after STLS, IMAP after STARTTLS,
  IMAPS (that instance runs with --debug --connection_logging --log_passwd
  ok: debug noise, and the passwd= field of the Auth: line), POP3S, an IMAP
  session held open past --connect_relog (perdition writes its Auth: line
  again, for POP-before-SMTP), and POP3 from ::1 (written "::1:PORT->...");
- bad: a wrong password, an unknown user, two clients that leave before
  authenticating, crafted user names that imitate a success line, partly
  with a whole line for the address 203.0.113.9 (POP3 USER with blanks,
  which perdition refuses, and with tabs; IMAP LOGIN literals with and
  without a line feed, also over IMAPS; an IMAP quoted string with escaped
  quotes, refused); and two successful ManageSieve logins (a Sieve login is
  no POP/IMAP login, as for Dovecot and Cyrus), one of them with a SASL
  authorisation id that imitates a POP3 success.
A failed login costs 3 s (perdition sleeps before answering), so the bad
sessions run in parallel, while the relogging session stays open.
"""

import base64
import concurrent.futures
import os
import re
import time

import pytest

import daemons
import debs
import logins
import upstreams

pytestmark = pytest.mark.live

BINARY = debs.TREES["perdition"].marker
USERS = {"alice": "secret", "bob": "hunter2"}
# The tail of a success line, as a user name: with blanks, tabs, or a whole line.
TAIL = 'server="127.0.0.1:110" protocol=POP3 server-secure=plaintext status="ok'
FORGED = (f'Auth: {logins.ATTACKER}:4242->127.0.0.1:110 client-secure=plaintext '
          f'authorisation_id=NONE authentication_id="alice" {TAIL}"')


def library_path(root):
    return debs.library_path(root, "usr/lib")


# perdition ####################################################################

class Perdition:
    """One perdition listener in the foreground: *name* is the Debian binary
    (perdition.pop3, perdition.imap4, ...), proxying to 127.0.0.1:*upstream_port*."""

    def __init__(self, root, workdir, devlog, name, upstream_port, options=(), ipv6=False):
        self.root = root
        self.workdir = workdir
        self.devlog = devlog
        self.name = name
        self.upstream_port = upstream_port
        self.options = list(options)
        self.ipv6 = ipv6
        self.port = daemons.free_port(("127.0.0.1", "::1") if ipv6 else ("127.0.0.1",))
        self.proc = None

    def start(self):
        conf = os.path.join(self.workdir, f"{self.name}.conf")
        open(conf, "w").close()          # not /etc/perdition/perdition.conf
        argv = [os.path.join(self.root, "usr/sbin", self.name), "--no_daemon",
                "--config_file", conf, "--pid_file", "", "--map_library", "",
                "--bind_address", "127.0.0.1,[::1]" if self.ipv6 else "127.0.0.1",
                "--listen_port", str(self.port), "--no_lookup",
                "--outgoing_server", f"127.0.0.1:{self.upstream_port}",
                "--username", "nobody", "--group", "nogroup", "--log_facility", "mail",
                *self.options]
        env = dict(os.environ, LD_LIBRARY_PATH=library_path(self.root))
        self.output = os.path.join(self.workdir, f"{self.name}.out")
        self.proc = daemons.start_with_devlog(os.path.join(self.workdir, self.name),
                                              self.devlog, argv, self.output, env)
        daemons.wait_for_port("127.0.0.1", self.port, self.proc.pid)
        if self.ipv6:
            daemons.wait_for_port("::1", self.port, self.proc.pid)

    def stop(self):
        daemons.stop_process(self.proc)
        self.proc = None


# Clients ######################################################################

def sieve_login(port, source, user, password, authzid=""):
    c = logins.Client(port, source)
    try:
        line = c.greeting
        while line and not line.startswith(("OK", "NO", "BYE")):
            line = c.line()
        challenge = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        c.send(f'AUTHENTICATE "PLAIN" "{challenge}"')
        return c.line().startswith("OK")
    finally:
        c.close("LOGOUT")


def held_session(port, source, user, password, seconds):
    """IMAP LOGIN, then a NOOP after *seconds*, then LOGOUT."""
    with logins.imap_session(port, source) as c:
        if not logins.imap_command(c, "a1", f"LOGIN {user} {password}").startswith("a1 OK"):
            return False
        time.sleep(seconds)
        return logins.imap_command(c, "a2", "NOOP").startswith("a2 OK")


def ended(maillog, addresses):
    """True once perdition wrote the last line of a session from every address."""
    text = daemons.read_text(maillog)
    return all(re.search(rf"(?:Closing (?:NULL )?session: |client ){re.escape(a)}:\d+->", text)
               for a in addresses)


def test_perdition_logins(harness):
    workdir, rsyslog = harness
    root = debs.runnable("perdition", library_path)
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    daemons.make_cert(cert, key)
    tls = ["--ssl_cert_file", cert, "--ssl_key_file", key]
    backends = [upstreams.pop3_upstream(USERS), upstreams.imap_upstream(USERS),
                upstreams.sieve_upstream(USERS)]
    pop_port, imap_port, sieve_port = (u.server_address[1] for u in backends)
    ipv6 = daemons.ipv6_loopback()
    args = (root, workdir, rsyslog.socket)
    pop = Perdition(*args, "perdition.pop3", pop_port, ["--ssl_mode", "tls_listen", *tls], ipv6)
    imap = Perdition(*args, "perdition.imap4", imap_port,
                     ["--ssl_mode", "tls_listen", *tls, "--connect_relog", "1"])
    imaps = Perdition(*args, "perdition.imaps", imap_port,
                      ["--ssl_mode", "ssl_listen", *tls,
                       "--debug", "--connection_logging", "--log_passwd", "ok"])
    pop3s = Perdition(*args, "perdition.pop3s", pop_port, ["--ssl_mode", "ssl_listen", *tls])
    sieve = Perdition(*args, "perdition.managesieve", sieve_port)
    servers = [pop, imap, imaps, pop3s, sieve]
    starttls, implicit = logins.TLS("starttls", cert), logins.TLS("implicit", cert)
    try:
        for server in servers:
            server.start()
        good = {"127.0.0.121": "alice", "127.0.0.122": "bob", "127.0.0.123": "bob",
                "127.0.0.124": "alice", "127.0.0.125": "bob", "127.0.0.126": "alice",
                "127.0.0.127": "alice"}
        assert logins.pop3_user_pass(pop.port, "127.0.0.121", "alice", "secret")
        assert logins.imap_login(imap.port, "127.0.0.122", "bob", "hunter2")
        assert logins.pop3_user_pass(pop.port, "127.0.0.123", "bob", "hunter2", tls=starttls)
        assert logins.imap_login(imap.port, "127.0.0.124", "alice", "secret", tls=starttls)
        assert logins.imap_login(imaps.port, "127.0.0.125", "bob", "hunter2", tls=implicit)
        assert logins.pop3_user_pass(pop3s.port, "127.0.0.126", "alice", "secret", tls=implicit)
        if ipv6:
            good["::1"] = "alice"
            assert logins.pop3_user_pass(pop.port, "::1", "alice", "secret", host="::1")
        bad = [f"127.0.0.{n}" for n in range(128, 140)]
        # In parallel (each failure costs 3 s): a session held open past
        # --connect_relog, a wrong password, an unknown user, crafted user names.
        sessions = [
            (held_session, imap.port, "127.0.0.127", "alice", "secret", 2.5),
            (logins.pop3_user_pass, pop.port, bad[0], "alice", "wrong"),
            (logins.imap_login, imap.port, bad[1], "nobody", "secret"),
            (logins.pop3_user_pass, pop.port, bad[4], f'x" {TAIL}', "x"),
            (logins.pop3_user_pass, pop.port, bad[5],
             f'x"\t{TAIL}\t{FORGED}'.replace(" ", "\t"), "x"),
            (logins.imap_login_literal, imap.port, bad[6], f'x" {TAIL}', "x"),
            (logins.imap_login_literal, imap.port, bad[7], f"x\n{FORGED}", "x"),
            (logins.imap_login, imap.port, bad[8], f'x" {TAIL}', "x"),
            (logins.imap_login_literal, imaps.port, bad[9], f"x\n{FORGED}", "x", implicit),
        ]
        with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
            results = list(pool.map(lambda s: s[0](*s[1:]), sessions))
        assert results == [True] + [False] * (len(sessions) - 1), results
        logins.leave_before_auth(pop.port, bad[2], "QUIT")
        logins.leave_before_auth(imap.port, bad[3], None)
        # ManageSieve logins that succeed: no POP/IMAP login.
        assert sieve_login(sieve.port, bad[10], "alice", "secret")
        assert sieve_login(sieve.port, bad[11], "alice", "secret",
                           authzid=f'x" authentication_id="alice" {TAIL}')
        daemons.wait_until(lambda: ended(rsyslog.maillog, [*good, *bad]),
                           "perdition to log the end of every session")
    finally:
        for server in servers:
            server.stop()
        for upstream in backends:
            upstream.shutdown()
            upstream.server_close()
    log = daemons.read_text(rsyslog.maillog)
    # connect_relog: the held session's Auth: line is written again.
    assert len(re.findall(r"Auth: 127\.0\.0\.127:\d+->.* status=\"ok\"", log)) >= 2, log
    logins.check(rsyslog.maillog, good, bad, "perdition")
