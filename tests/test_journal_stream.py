"""Under systemd, with stderr connected to the journal, the Error: and
warning lines carry sd-daemon(3) priorities; under cron nothing changes.

The program runs as a real process whose stderr is a real file; systemd's
JOURNAL_STREAM names a stream by "device:inode", and here it names that file
(or, for cron, another one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOW, dovecot_login, require

MODULE = Path(__file__).resolve().parent.parent / "pbsmtp_batch.py"


def run(args, stderr_file: Path, journal: str | None):
    """Run pbsmtp-batch with stderr into stderr_file; JOURNAL_STREAM is
    stderr's own "dev:inode" when journal == "same", another file's when it
    is a path, and unset when None."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["TZ"] = "UTC"
    stderr_file.touch()
    if journal == "same":
        st = os.stat(stderr_file)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    elif journal is not None:
        st = os.stat(journal)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    with open(stderr_file, "w") as err:
        done = subprocess.run([sys.executable, str(MODULE), *args], stdout=subprocess.PIPE,
                              stderr=err, text=True, env=env)
    return done.returncode, done.stdout, stderr_file.read_text()


@pytest.mark.unit
def test_error_line_is_tagged_as_an_error_in_the_journal(tmp_path):
    code, out, err = run(["--grace=soon"], tmp_path / "err", "same")
    assert (code, out) == (1, "")
    assert err == "<3>Error: --grace must be a whole number of seconds above 0, not 'soon'\n"


@pytest.mark.unit
def test_usage_error_keeps_its_usage_lines_and_exit_status(tmp_path):
    code, _, err = run(["--no-such-option"], tmp_path / "err", "same")
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith("Usage: ")
    assert lines[-1].startswith("<3>Error: No such option")
    assert [line for line in lines if line.startswith("<")] == [lines[-1]]


@pytest.mark.tools
def test_warning_is_tagged_as_a_warning(site, tmp_path):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    code, _, err = run(site.args(), tmp_path / "err1", "same")
    assert (code, err) == (0, "")                       # success stays silent
    site.log.write_text("")                             # truncated under the saved offset
    code, _, err = run(site.args(), tmp_path / "err2", "same")
    assert code == 0
    assert err.startswith("<4>pbsmtp-batch: warning: ")
    assert all(line.startswith("<4>") for line in err.splitlines())


@pytest.mark.tools
def test_cron_output_is_unchanged(site, tmp_path):
    """No JOURNAL_STREAM, or one inherited from elsewhere: plain lines."""
    for journal in (None, str(tmp_path / "elsewhere")):
        Path(tmp_path / "elsewhere").touch()
        code, _, err = run(["--grace=soon"], tmp_path / "err", journal)
        assert (code, err) == (1, "Error: --grace must be a whole number of seconds above 0, "
                                  "not 'soon'\n")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    code, out, err = run(site.args(), tmp_path / "err", str(tmp_path / "elsewhere"))
    assert (code, out, err) == (0, "", "")
    site.log.write_text("")
    code, _, err = run(site.args(), tmp_path / "err", None)
    assert err.startswith("pbsmtp-batch: warning: ")


@pytest.mark.tools
def test_version_and_success_exit_zero_in_the_journal(site, tmp_path):
    code, out, err = run(["--version"], tmp_path / "err", "same")
    assert (code, err) == (0, "") and out.startswith("pbsmtp-batch, version ")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    code, out, err = run(site.args(), tmp_path / "err", "same")
    assert (code, out, err) == (0, "", "")
    code, out, err = run(site.args("--list"), tmp_path / "err", "same")
    assert code == 0 and out.startswith("192.0.2.10 ") and err == ""


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


@pytest.mark.live
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
