"""A real systemd-journald files pbsmtp-batch's Error: and warning lines at
their priorities (the stream protocol of sd_journal_stream_fd). The other
tests of the journal stream are in test_journal_stream.py.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import NOW, dovecot_login, require
from journal import MODULE

pytestmark = pytest.mark.live


# Inside a private mount namespace: a tmpfs over /run, a real systemd-journald
# on it, and each command run the way systemd runs a service's ExecStart=,
# stdout and stderr on a stream connection to journald's stdout socket and
# JOURNAL_STREAM naming it. Prints the journal as JSON, one entry a line.
JOURNAL_DRIVER = r"""
import json, os, signal, socket, subprocess, sys, time
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
if os.path.isdir("/var/log/journal"):
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/var/log/journal"], check=True)
os.makedirs("/run/systemd/journal"); os.makedirs("/run/log/journal")
journald = subprocess.Popen([sys.argv[1]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(600):
        if os.path.exists("/run/systemd/journal/stdout"):
            break
        time.sleep(0.05)
    for argv in json.loads(sys.argv[3]):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("/run/systemd/journal/stdout")
        s.shutdown(socket.SHUT_RD)
        # sd_journal_stream_fd's header: identifier, unit, priority (info),
        # level prefix on, no forwarding to syslog, kmsg or console.
        s.sendall(b"pbsmtp-batch\n\n6\n1\n0\n0\n0\n")
        st = os.fstat(s.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", TZ="UTC")
        subprocess.run(argv, stdout=s.fileno(), stderr=s.fileno(), env=env)
        s.close()
finally:
    journald.send_signal(signal.SIGTERM)
    journald.wait()
out = subprocess.run([sys.argv[2], "-D", "/run/log/journal", "-o", "json",
                      "SYSLOG_IDENTIFIER=pbsmtp-batch"], capture_output=True, text=True)
sys.stdout.write(out.stdout)
"""


def test_real_journald_files_errors_and_warnings_at_their_priority(site):
    journald = next((p for p in ("/usr/lib/systemd/systemd-journald",
                                 "/lib/systemd/systemd-journald") if os.path.exists(p)),
                    None) or require("systemd-journald", "systemd")
    journalctl = require("journalctl", "systemd")
    require("unshare", "util-linux")
    if os.geteuid() != 0:
        pytest.skip("a private journald needs root (unshare --mount)")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    program = [sys.executable, str(MODULE)]
    runs = [program + ["--grace=soon"],                 # an error
            program + site.args(),                      # success: nothing logged
            ["sh", "-c", f": > {site.log}"],            # the log truncated under the offset
            program + site.args()]                      # a warning
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                           sys.executable, "-c", JOURNAL_DRIVER, journald, journalctl,
                           json.dumps(runs)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    entries = [(e["PRIORITY"], e["MESSAGE"]) for e in map(json.loads, done.stdout.splitlines())]
    assert entries[0] == ("3", "Error: --grace must be a whole number of seconds above 0, "
                               "not 'soon'")
    assert len(entries) == 2, entries
    assert entries[1][0] == "4" and entries[1][1].startswith("pbsmtp-batch: warning: ")
