"""The CLI's tests that need nothing but Python: --help, a missing log, and
the bounds of the pending two-line logins (trim_pending). The others,
which run Postfix's tools, are in test_cli.py.
"""

import time

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import NOW
from runs import invoke

pytestmark = pytest.mark.unit


def test_help_documents_every_option():
    text = invoke("--help").output
    for param in pb.cli.params:
        if not param.hidden and isinstance(param, __import__("click").Option):
            for opt in param.opts:
                assert opt in text, opt
    assert "--nowrite" in text and "--noflock" in text and "--nodebug" in text
    assert invoke("--version").output == f"pbsmtp-batch, version {pb.__version__}\n"


def test_check_patterns_on_a_missing_log_is_one_error_line(tmp_path):
    result = CliRunner().invoke(pb.cli, ["--check-patterns", f"--logfile={tmp_path}/absent",
                                         f"--now={NOW}"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (f"Error: cannot read log file {tmp_path}/absent: "
                             "No such file or directory\n")


def test_pending_addresses_are_bounded():
    pending = {("h", "popa3d", str(pid)): ("192.0.2.1", NOW - pid % 700)
               for pid in range(pb.PENDING_MAX + 500)}
    kept = pb.trim_pending(pending, NOW)
    assert len(kept) == min(pb.PENDING_MAX, sum(1 for _, w in pending.values()
                                                 if w >= NOW - pb.PENDING_SECONDS))
    assert min(w for _, w in kept.values()) >= NOW - pb.PENDING_SECONDS


def test_pending_addresses_stay_bounded_within_one_run():
    """A scanner's connections to popa3d (address lines that never see a
    success) must not grow memory without bound in a big --reprocess."""
    pending, patterns = {}, pb.load_patterns(pb.shipped_patterns_dir(), ("popa3d",))
    stamp = lambda s: time.strftime("%b %d %H:%M:%S", time.gmtime(s))
    for pid in range(3 * pb.PENDING_MAX):
        line = f"{stamp(NOW - 3600 + pid // 10)} mail popa3d[{pid}]: Session from 203.0.113.9"
        assert pb.match_login(line, patterns, NOW, pending) == (None, None)
        assert len(pending) <= 2 * pb.PENDING_MAX + 1
    last = 3 * pb.PENDING_MAX - 1
    ok = f"{stamp(NOW - 3600 + last // 10)} mail popa3d[{last}]: Authentication passed for eve"
    login, _ = pb.match_login(ok, patterns, NOW, pending)
    assert login is not None and login.ip == "203.0.113.9"
