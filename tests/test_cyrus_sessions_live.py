"""Live: a Cyrus IMAP client that stays connected keeps relaying.

Debian's Cyrus 3.6 (.debs unpacked by tests/debs.py, run by
tests/cyrus_imapd.py on loopback) logs through syslog(3) into a private
rsyslogd's maillog; pbsmtp-batch reads it into a real hash map. Cyrus names
no session on its end lines, so a session is the login line's process
(patterns/cyrus.toml, [logout] key = "process"). The imap service has
maxchild=1: one process serves every IMAP client, one at a time, as a
prefork process does, so the test knows which process serves the next.

- A client logs in and stays connected past the grace window: its address
  stays in the map, refreshed, and ``--list --json`` shows its open session,
  keyed by the process's PID.
- It logs out (Cyrus: "USAGE alice ..."); the same process serves a second
  client that logs in and drops the connection without LOGOUT (Cyrus logs
  nothing), then a third whose login fails ("badlogin: ...", the process's
  next client): both sessions are over. A grace window later both addresses
  are gone from the map, and no session is open.

Real time with a 2-second grace window: every wait is "at least this long".
The map check is postmap -q; tests/test_e2e_sessions.py proves the map to
smtpd part with Dovecot.
"""

import json
import os
import re
import subprocess
import time

import pytest

import daemons
import debs
from conftest import require_harness
from cyrus_imapd import Cyrus
from logins import Client, imap_command, tool_argv

pytestmark = pytest.mark.live

GRACE = 2
USERS = {"alice": "secret", "bob": "hunter2"}
STAYS, DROPS, FAILS = "127.0.0.71", "127.0.0.72", "127.0.0.73"


@pytest.fixture
def cyrus():
    require_harness()
    workdir = daemons.make_workdir("pbsmtp-cyrus-sessions-")
    rsyslog = daemons.Rsyslog(workdir)
    server = None
    try:
        rsyslog.start()
        server = Cyrus(debs.tree("cyrus"), workdir, rsyslog.socket, USERS,
                       imap_options="maxchild=1")
        server.start()
        yield server, rsyslog.maillog
    finally:
        if server is not None and server.proc is not None:
            server.stop()
        rsyslog.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)


def run(argv, *extra):
    r = subprocess.run([*argv, f"--grace={GRACE}", *extra], capture_output=True, text=True,
                       timeout=60)
    assert (r.returncode, r.stderr) == (0, ""), r
    return r.stdout


def listed(argv):
    return {row["ip"]: row for row in json.loads(run(argv, "--list", "--json"))}


def lookup(argv, ip):
    dbfile = next(a for a in argv if a.startswith("--dbfile=")).split("=", 1)[1]
    conf = next(a for a in argv if a.startswith("--postfix-config=")).split("=", 1)[1]
    r = subprocess.run([daemons.which("postmap"), "-c", conf, "-q", ip, f"hash:{dbfile}"],
                       capture_output=True, text=True)
    assert r.returncode in (0, 1), r
    return r.stdout.strip() if r.returncode == 0 else None


def login(port, source, user):
    c = Client(port, source)
    answer = imap_command(c, "a1", f"LOGIN {user} {USERS[user]}")
    assert answer.startswith("a1 OK"), answer
    return c


def pid_of(line):
    return re.search(r" cyrus/imap\[(\d+)\]: ", line)[1]


def wait_past(epoch):
    while time.time() <= epoch:
        time.sleep(max(0.05, epoch - time.time() + 0.05))


def test_cyrus_session_stays_open_until_logout_and_the_process_next_client(cyrus):
    server, maillog = cyrus
    argv = tool_argv(maillog)
    port = server.imap_port

    stays = login(port, STAYS, "alice")
    try:
        imap_command(stays, "a2", "SELECT INBOX")
        line = daemons.wait_for_log(maillog, f"login: [{STAYS}] alice ", "SESSIONID=<")
        pid = pid_of(line)
        logged_in = time.time()
        run(argv)
        first = lookup(argv, STAYS)
        assert first is not None and first.isdigit(), (first, line)

        # Still connected, and the grace window since the login has passed.
        wait_past(logged_in + GRACE + 1)
        assert imap_command(stays, "a3", "NOOP").startswith("a3 OK")
        # Without sessions the address would go (the control)...
        control = run(argv, "--dry-run", "--max-session=0")
        assert f"would expire {STAYS} " in control, control
        # ...with them, the open session keeps it, refreshed.
        run(argv)
        refreshed = lookup(argv, STAYS)
        assert refreshed is not None and int(refreshed) > int(first) + GRACE, refreshed
        (session,) = listed(argv)[STAYS]["sessions"]
        assert (session["id"], session["pattern"], session["program"], session["user"]) == (
            f"pid={pid}", "cyrus", "cyrus/imap", "alice"), session

        start = daemons.file_size(maillog)
        stays.close("a9 LOGOUT")
    finally:
        stays.close()
    usage = daemons.wait_for_log(maillog, f"cyrus/imap[{pid}]: USAGE alice ", start=start)
    run(argv)
    assert not listed(argv).get(STAYS, {}).get("sessions"), usage

    # The same process serves the next client, who drops the connection
    # without LOGOUT: Cyrus logs nothing, the session stays open...
    drops = login(port, DROPS, "bob")
    daemons.wait_for_log(maillog, f"cyrus/imap[{pid}]: login: [{DROPS}] bob ", start=start)
    drops.close()
    run(argv)
    (session,) = listed(argv)[DROPS]["sessions"]
    assert session["id"] == f"pid={pid}", session
    # ...until the process's next client (here one whose login fails).
    failed = Client(port, FAILS)
    assert imap_command(failed, "a1", "LOGIN alice wrong").startswith("a1 NO")
    failed.close("a9 LOGOUT")
    badlogin = daemons.wait_for_log(maillog, f"cyrus/imap[{pid}]: badlogin: [{FAILS}] ",
                                    start=start)
    ended = time.time()
    run(argv)
    rows = listed(argv)
    assert not any(row["sessions"] for row in rows.values()), (rows, badlogin)
    assert FAILS not in rows

    # A grace window after the ends: gone.
    wait_past(ended + GRACE + 1)
    run(argv)
    assert lookup(argv, STAYS) is None and lookup(argv, DROPS) is None
    assert listed(argv) == {}
