"""End to end: log in over POP3/IMAP, run pbsmtp-batch, relay through Postfix.

Real daemons from Debian's packages (see daemons.py): rsyslogd writes the
maillog, Dovecot logs through syslog(3) into it, and Postfix's smtpd asks the
map that pbsmtp-batch writes:

    smtpd_relay_restrictions = permit_mynetworks,
        check_client_access <type>:<map>, reject_unauth_destination

mynetworks is 127.0.0.1/32 only, so each test plays an outside client from its
own loopback address (127.0.0.x, ::1). The SMTP client stops after RCPT TO and
QUITs: no mail is ever queued, and the transports are `discard` besides.

Needs root and the packages postfix, postfix-lmdb, dovecot-pop3d,
dovecot-imapd and rsyslog. Without them the tests skip, and fail under CI.
"""

import os
import re
import subprocess
import sys
import time

import pytest

import daemons

pytestmark = pytest.mark.live

USERS = {"alice": "wonderland", "bob": "builder-42"}
RELAY_RCPT = "someone@example.net"       # not a local domain: a relay recipient
GRACE = 300                              # --grace for every run
TZ = "UTC"                               # rsyslogd and the tool agree on local time
MAP_TYPES = ["hash", "lmdb"]


###############################################################################
# Fixtures ####################################################################
###############################################################################

def require_daemons(map_type):
    """Skip (fail under CI) when this machine cannot run the daemons."""
    missing = daemons.missing_binaries()
    problems = [f"{b} is not installed" for b in missing]
    packages = [daemons.REQUIRED_BINARIES[b] for b in missing]
    if os.geteuid() != 0:
        problems.append("the daemons must be started as root")
    if not missing and map_type not in daemons.supported_map_types():
        problems.append(f"Postfix has no {map_type} map support")
        packages.append(daemons.map_package(map_type))
    if problems:
        message = "; ".join(problems)
        if packages:
            message += f" (Debian: apt-get install {' '.join(dict.fromkeys(packages))})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def tool(lab, *extra):
    """Run pbsmtp-batch against the lab's log, map and Postfix config."""
    argv = [sys.executable, "-m", "pbsmtp_batch",
            f"--logfile={lab.maillog}", f"--dbfile={lab.dbfile}",
            f"--map-type={lab.map_type}", f"--state-dir={lab.state_dir}",
            f"--grace={GRACE}", f"--postfix-config={lab.postfix_config}", *extra]
    env = dict(os.environ, TZ=TZ)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def first_run(lab):
    """Before Postfix starts: the tool's first run must create an empty map
    (smtpd answers 451 for a missing one)."""
    r = tool(lab)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    assert os.path.exists(lab.postfix.map_file()), "the first run wrote no map"


class Relay:
    """One lab and the client moves a test makes."""

    def __init__(self, lab):
        self.lab = lab

    @staticmethod
    def host(source):
        return "::1" if ":" in source else "127.0.0.1"

    def rcpt(self, source):
        return daemons.smtp_rcpt(self.host(source), self.lab.postfix.port, RELAY_RCPT, source)

    def login(self, proto, source, user="alice", password=None, tls=False):
        """Log in (after STARTTLS if *tls*) and wait until the server's line
        is in the maillog."""
        password = USERS[user] if password is None else password
        start = daemons.file_size(self.lab.maillog)
        ca = self.lab.dovecot.cert if tls else None
        if proto == "pop3":
            ok, reply = daemons.pop3_login(self.host(source), self.lab.dovecot.pop3_port,
                                           user, password, source, tls_ca=ca)
        else:
            ok, reply = daemons.imap_login(self.host(source), self.lab.dovecot.imap_port,
                                           user, password, source, tls_ca=ca)
        dovecot = self.lab.dovecot
        if ok:
            line = daemons.wait_for_log(self.lab.maillog,
                                        f"{proto}-login: {dovecot.login_text}user=<{user}>",
                                        f"rip={source},", start=start)
        else:
            line = daemons.wait_for_log(self.lab.maillog, f"{proto}-login: {dovecot.failure_text}",
                                        "auth failed", f"rip={source},", start=start)
        return ok, reply, line

    def run(self, *extra):
        r = tool(self.lab, *extra)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), (r, self.logs())
        return r

    def logs(self, lines=12):
        """The ends of the maillog and the Postfix log, for failure messages."""
        tail = lambda path: daemons.read_text(path).splitlines()[-lines:]
        return {"maillog": tail(self.lab.maillog), "postfix": tail(self.lab.postfix.maillog)}

    def lookup(self, key):
        """The map's value for *key* as Postfix's postmap sees it, or None."""
        r = subprocess.run([daemons.which("postmap"), "-c", self.lab.postfix_config, "-q", key,
                            self.lab.postfix.map_spec], capture_output=True, text=True)
        assert r.returncode in (0, 1), r
        return r.stdout.strip() if r.returncode == 0 else None

    def assert_refused(self, source):
        code, text = self.rcpt(source)
        assert code == 554 and "Relay access denied" in text, (source, code, text, self.logs())

    def assert_accepted(self, source):
        code, text = self.rcpt(source)
        assert code == 250, (source, code, text, self.logs())


def _lab(map_type, **kwargs):
    require_daemons(map_type)
    return daemons.MailLab(map_type, users=USERS, make_map=first_run, tz=TZ, **kwargs)


@pytest.fixture(scope="module", params=MAP_TYPES)
def lab(request):
    """rsyslogd + Dovecot + Postfix for one map type, shared by the tests of
    this module (each test uses its own client addresses)."""
    with _lab(request.param) as lab:
        yield lab


@pytest.fixture
def relay(lab):
    pids = lab.pids()
    yield Relay(lab)
    # A test must leave every daemon running, the same processes as before.
    for name, pid in pids.items():
        assert daemons.pid_alive(pid), f"{name} (pid {pid}) died during the test"


###############################################################################
# End to end: no login is refused; a POP3/IMAP login (also after STARTTLS) ####
# then a run allows relay; a failed login and an expired grace stay refused; ##
# smtpd sees the new map without reload; mynetworks is never written; IPv6 ####
# loopback; traditional timestamps without a PID ##############################
###############################################################################

def test_no_login_is_refused(relay):
    relay.assert_refused("127.0.0.2")
    relay.run()
    relay.assert_refused("127.0.0.2")
    assert relay.lookup("127.0.0.2") is None


@pytest.mark.parametrize("proto, source", [("pop3", "127.0.0.3"), ("imap", "127.0.0.4")])
def test_login_then_run_allows_relay(relay, proto, source):
    relay.assert_refused(source)
    ok, reply, line = relay.login(proto, source)
    assert ok, reply
    relay.assert_refused(source)          # the login alone changes nothing
    before = int(time.time())
    relay.run()
    value = relay.lookup(source)
    assert value is not None and value.isdigit(), value
    assert before - 5 <= int(value) <= int(time.time()), (value, line)
    relay.assert_accepted(source)


@pytest.mark.parametrize("proto, source", [("pop3", "127.0.0.12"), ("imap", "127.0.0.13")])
def test_starttls_login_allows_relay(relay, proto, source):
    ok, reply, line = relay.login(proto, source, tls=True)
    assert ok, reply
    assert ", TLS, " in line, line        # Dovecot marks the session
    relay.run()
    relay.assert_accepted(source)


def test_failed_login_stays_refused(relay):
    for proto, source in (("pop3", "127.0.0.5"), ("imap", "127.0.0.6")):
        ok, reply, _ = relay.login(proto, source, password="wrong")
        assert not ok, reply
    # A good login in the same run: proves that this run did write the map.
    assert relay.login("imap", "127.0.0.7", user="bob")[0]
    relay.run()
    relay.assert_accepted("127.0.0.7")
    for source in ("127.0.0.5", "127.0.0.6"):
        assert relay.lookup(source) is None
        relay.assert_refused(source)


def test_grace_expired_is_refused_again(relay):
    source = "127.0.0.8"
    assert relay.login("pop3", source)[0]
    relay.run()
    relay.assert_accepted(source)
    # A later run, past the grace window (--now instead of sleeping), purges it.
    relay.run(f"--now={int(time.time()) + GRACE + 5}")
    assert relay.lookup(source) is None
    relay.assert_refused(source)


def test_smtpd_sees_new_map_without_reload(relay):
    lab, source = relay.lab, "127.0.0.9"
    master = lab.postfix.pid
    relay.assert_refused(source)          # leaves an idle smtpd with the old map open
    idle = lab.postfix.smtpd_pids()
    assert idle, "no idle smtpd after a connection"
    log_start = daemons.file_size(lab.postfix.maillog)
    assert relay.login("imap", source)[0]
    relay.run()
    relay.assert_accepted(source)         # a connection made after the run
    assert lab.postfix.pid == master and daemons.pid_alive(master)
    # The idle smtpd noticed the renamed map before its next client and exited.
    line = daemons.wait_for_log(lab.postfix.maillog, "postfix/smtpd[",
                                f"table {lab.postfix.map_spec}", "has changed -- restarting",
                                start=log_start)
    pid = int(re.search(r"smtpd\[(\d+)\]", line).group(1))
    assert pid in idle, (line, idle)
    new_log = daemons.read_text(lab.postfix.maillog)[log_start:]
    assert "reload" not in new_log, new_log


def test_login_from_mynetworks_is_not_written(relay):
    assert relay.login("pop3", "127.0.0.1")[0]
    relay.run()
    assert relay.lookup("127.0.0.1") is None
    relay.assert_accepted("127.0.0.1")    # by permit_mynetworks, not by the map


def test_ipv6_loopback(relay):
    if not relay.lab.ipv6:
        pytest.skip("no IPv6 on loopback")
    relay.assert_refused("::1")
    ok, reply, _ = relay.login("pop3", "::1")
    assert ok, reply
    relay.run()
    assert relay.lookup("::1") is not None
    relay.assert_accepted("::1")
    relay.run(f"--now={int(time.time()) + GRACE + 5}")
    relay.assert_refused("::1")


def test_traditional_timestamps_without_pid():
    """The other maillog shape: RFC 3164 time and "dovecot:" without [pid], as
    rsyslogd writes when it owns /dev/log (no journald in between)."""
    with _lab("hash", template=daemons.TRADITIONAL, pid_from_system=False) as lab:
        relay = Relay(lab)
        ok, reply, line = relay.login("pop3", "127.0.0.10")
        assert ok, reply
        assert re.match(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ dovecot: pop3-login: "
                        + lab.dovecot.login_text, line), line
        relay.run()
        relay.assert_accepted("127.0.0.10")
        relay.assert_refused("127.0.0.11")
