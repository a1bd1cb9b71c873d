"""End to end: an IMAP client that stays connected keeps relaying.

Real daemons from Debian's packages (daemons.MailLab): rsyslogd writes the
maillog, Dovecot logs through syslog(3) into it, Postfix's smtpd asks the map
that pbsmtp-batch writes. A client logs in over IMAP and stays connected past
the grace window: smtpd still answers 250 to a relay recipient from its
address, because its session is open. After it logs out and the grace window
has passed from the logout, a run makes smtpd answer 554.

Real time throughout, with a 2-second grace window: every wait is "at least
this long", so a slow machine only makes the windows more clearly passed.
"""

import contextlib
import os
import subprocess
import sys
import time

import pytest

import daemons
from conftest import require

pytestmark = pytest.mark.live

USERS = {"alice": "wonderland"}
RELAY_RCPT = "someone@example.net"       # not a local domain: a relay recipient
GRACE = 2                                # --grace: short, so the test takes seconds
TZ = "UTC"
SOURCE = "127.0.0.41"                    # this module's client address


def tool(lab, *extra):
    """Run pbsmtp-batch against the lab's log, map and Postfix config."""
    argv = [sys.executable, "-m", "pbsmtp_batch",
            f"--logfile={lab.maillog}", f"--dbfile={lab.dbfile}",
            f"--map-type={lab.map_type}", f"--state-dir={lab.state_dir}",
            f"--grace={GRACE}", f"--postfix-config={lab.postfix_config}", *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, TZ=TZ),
                          timeout=60)


def quiet_run(lab, *extra):
    r = tool(lab, *extra)
    assert (r.returncode, r.stderr) == (0, ""), r
    return r


def first_run(lab):
    """Before Postfix starts: the first run creates the (empty) map."""
    quiet_run(lab)


def lookup(lab, key):
    r = subprocess.run([daemons.which("postmap"), "-c", lab.postfix_config, "-q", key,
                        lab.postfix.map_spec], capture_output=True, text=True)
    assert r.returncode in (0, 1), r
    return r.stdout.strip() if r.returncode == 0 else None


def rcpt(lab):
    return daemons.smtp_rcpt("127.0.0.1", lab.postfix.port, RELAY_RCPT, SOURCE)


def wait_past(epoch):
    """Sleep until the clock is past *epoch* (a lower bound only)."""
    while time.time() <= epoch:
        time.sleep(max(0.05, epoch - time.time() + 0.05))


@pytest.fixture
def lab():
    for program, package in (("postfix", "postfix"), ("dovecot", "dovecot-imapd"),
                             ("rsyslogd", "rsyslog")):
        require(program, package)
    if os.geteuid() != 0:
        message = "the daemons must be started as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with daemons.MailLab("hash", users=USERS, make_map=first_run, tz=TZ, ipv6=False) as lab:
        yield lab


def test_open_imap_session_relays_past_the_grace_window_until_logout(lab):
    code, text = rcpt(lab)
    assert code == 554 and "Relay access denied" in text, (code, text)

    start = daemons.file_size(lab.maillog)
    client = daemons._IMAP4("127.0.0.1", lab.dovecot.imap_port, SOURCE, 10)
    try:
        client.login("alice", USERS["alice"])
        client.select("INBOX")
        line = daemons.wait_for_log(lab.maillog, f"imap-login: {lab.dovecot.login_text}",
                                    f"rip={SOURCE},", "session=<", start=start)
        logged_in = time.time()
        quiet_run(lab)
        login_value = lookup(lab, SOURCE)
        assert login_value is not None and login_value.isdigit(), (login_value, line)
        assert rcpt(lab)[0] == 250

        # Still connected, and the grace window since the login has passed.
        wait_past(logged_in + GRACE + 1)
        client.noop()
        # Without sessions this run would drop the address (the control)...
        control = quiet_run(lab, "--dry-run", "--max-session=0")
        assert f"would expire {SOURCE} " in control.stdout, control
        # ...with them, the open session keeps it, refreshed.
        quiet_run(lab)
        refreshed = lookup(lab, SOURCE)
        assert refreshed is not None and int(refreshed) > int(login_value) + GRACE, refreshed
        code, text = rcpt(lab)
        assert code == 250, (code, text)
        shown = quiet_run(lab, "--list").stdout
        assert SOURCE in shown and "  session " in shown and "user=alice" in shown, shown

        start = daemons.file_size(lab.maillog)
        client.logout()
    finally:
        with contextlib.suppress(Exception):
            client.shutdown()
    end = daemons.wait_for_log(lab.maillog, "imap(alice)<", ": Disconnected: Logged out",
                               start=start)
    logged_out = time.time()
    assert line.rsplit("session=<", 1)[1].split(">")[0] in end, (line, end)

    # The grace window since the logout has passed: refused.
    wait_past(logged_out + GRACE + 1)
    quiet_run(lab)
    assert lookup(lab, SOURCE) is None
    code, text = rcpt(lab)
    assert code == 554 and "Relay access denied" in text, (code, text)
    assert "  session " not in quiet_run(lab, "--list").stdout
