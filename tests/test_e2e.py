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

import re
import time

import pytest

import daemons
from relay import GRACE, Relay, relay_lab

pytestmark = pytest.mark.live

MAP_TYPES = ["hash", "lmdb"]


###############################################################################
# Fixtures ####################################################################
###############################################################################

@pytest.fixture(scope="module", params=MAP_TYPES)
def mail_lab(request):
    """rsyslogd + Dovecot + Postfix for one map type, shared by the tests of
    this module (each test uses its own client addresses)."""
    with relay_lab(request.param) as lab:
        yield lab


@pytest.fixture
def relay(mail_lab):
    pids = mail_lab.pids()
    yield Relay(mail_lab)
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
    with relay_lab("hash", template=daemons.TRADITIONAL, pid_from_system=False) as lab:
        relay = Relay(lab)
        ok, reply, line = relay.login("pop3", "127.0.0.10")
        assert ok, reply
        assert re.match(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ dovecot: pop3-login: "
                        + lab.dovecot.login_text, line), line
        relay.run()
        relay.assert_accepted("127.0.0.10")
        relay.assert_refused("127.0.0.11")
