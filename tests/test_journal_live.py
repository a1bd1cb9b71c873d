"""A real systemd-journald in a private mount namespace records who wrote a
line (root's logger, nobody's logger), and only the senders a pattern trusts
become logins. The journal source's other tests are in test_journal.py.
"""

import os
import pwd
import shutil
import subprocess
import time

import pytest

from conftest import require
from journal import JOURNALD_PATHS, Site, require_file
from runs import invoke

pytestmark = pytest.mark.live


@pytest.fixture
def site(tmp_path, postmap):
    return Site(tmp_path)


# A real journald: logger writes as root and as nobody ###################

JOURNALD_SCRIPT = """\
set -e
# A private /run: journald's sockets, its volatile store (bound to $1) and a
# drop-in that keeps it off the kernel log and the host's syslog.
mount -t tmpfs -o mode=0755 pbsmtp-run /run
mkdir -p /run/systemd/journal /run/log/journal /run/systemd/journald.conf.d
mount --bind "$1" /run/log/journal
printf '[Journal]\\nStorage=volatile\\nReadKMSG=no\\nForwardToSyslog=no\\nForwardToWall=no\\nForwardToConsole=no\\nForwardToKMsg=no\\n' > /run/systemd/journald.conf.d/pbsmtp.conf
"$3" &
journald=$!
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && [ -S /run/systemd/journal/dev-log ] && break; sleep 0.1; done
# Each logger keeps running for a second after its line (it waits for more
# input): journald reads _EXE from /proc/PID/exe, which a sender that has
# already exited no longer has.
DEVLOG=/run/systemd/journal/dev-log
NOBODY="setpriv --reuid=nobody --regid=nogroup --clear-groups"
{ echo "imap-login: Login: user=<r>, method=PLAIN, rip=192.0.2.50, lip=192.0.2.1"; sleep 1; } | logger -u $DEVLOG -t dovecot & p1=$!
{ echo "imap-login: Login: user=<r>, method=PLAIN, rip=192.0.2.51, lip=192.0.2.1"; sleep 1; } | logger -u $DEVLOG -t dovecot --id=4242 & p2=$!
{ echo "imap-login: Login: user=<x>, method=PLAIN, rip=203.0.113.66, lip=192.0.2.1"; sleep 1; } | $NOBODY logger -u $DEVLOG -t dovecot & p3=$!
{ echo "Session from 203.0.113.67"; sleep 1; } | $NOBODY logger -u $DEVLOG -t popa3d --id=31337 & p4=$!
wait $p1 $p2 $p3 $p4
sleep 0.5
journalctl --sync || true
kill -TERM $journald
wait $journald || true
"""


def test_a_real_journald_records_who_wrote_a_line(site, tmp_path):
    for tool, package in (("unshare", "util-linux"), ("setpriv", "util-linux"),
                          ("logger", "bsdutils"), ("mount", "mount")):
        require(tool, package)
    journald = require_file(JOURNALD_PATHS, "systemd")
    if os.geteuid() != 0:
        pytest.skip("a private journald needs root (mount namespace)")
    store = tmp_path / "journald"
    store.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh",
                           "-c", JOURNALD_SCRIPT, "sh", str(store), str(work), journald],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    written = subprocess.run([require("journalctl", "systemd"), "-D", str(store), "-o", "export",
                              "--output-fields=SYSLOG_IDENTIFIER,_EXE,_UID,MESSAGE"],
                             capture_output=True)
    nobody = str(pwd.getpwnam("nobody").pw_uid).encode()
    assert b"_UID=" + nobody in written.stdout and b"_EXE=/usr/bin/logger" in written.stdout
    # A pattern that trusts root's logger, as a stand-in for a daemon's own binary.
    patterns = tmp_path / "trusting"
    patterns.mkdir()
    dovecot = (site.patterns / "dovecot.toml").read_text()
    (patterns / "dovecot.toml").write_text(dovecot.replace(
        "journal_exe = ['/usr/lib/dovecot/log',", "journal_exe = ['/usr/bin/logger',"))
    shutil.copy(site.patterns / "popa3d.toml", patterns)
    args = [a for a in site.args("--debug") if not a.startswith(("--journal-directory",
                                                                 "--patterns-dir", "--now"))]
    shipped = invoke(*args, f"--journal-directory={store}", f"--patterns-dir={site.patterns}",
                     f"--now={time.time()}", "--dry-run")
    assert shipped.exit_code == 0, shipped.output
    assert "would add" not in shipped.output        # logger is never Dovecot
    assert shipped.output.count("refused journal entry") == 4
    trusting = invoke(*args, f"--journal-directory={store}", f"--patterns-dir={patterns}",
                      f"--now={time.time()}", "--dry-run")
    assert trusting.exit_code == 0, trusting.output
    added = sorted(l.split()[2] for l in trusting.output.splitlines()
                   if l.startswith("would add"))
    assert added == ["192.0.2.50", "192.0.2.51"]    # root's lines; never nobody's
    assert f"_UID={nobody.decode()} is not one of dovecot's journal_users" in trusting.output
