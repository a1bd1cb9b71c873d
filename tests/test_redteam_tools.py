"""Attacks on the promises of the README's "Guarantees", acted out through
whole runs with the real postmap: a state directory someone else can write,
a stuck run, bad settings, control characters on the terminal, poison lines.

Each test plays what an attacker (any local account that can write to
syslog, or a POP/IMAP client that chooses every byte of its user name)
would do, and checks that no false entry appears and that no run stalls.
The attacks on the patterns alone are in test_redteam.py.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login, syslog_time, two_line_attack
from runs import invoke, query

pytestmark = pytest.mark.tools


###############################################################################
# Two-line servers: a stale address never passes to a later session ##########
###############################################################################

@pytest.mark.parametrize("split", [1, 2])
def test_stale_address_across_runs(site, split):
    """The same attack with a run between the lines: the waiting address is
    in the state directory's pending file, and the next run's first line of
    that session ends it. Thousands of such PIDs add nothing either."""
    attack = []
    for pid in range(1000, 1300):
        attack.append(two_line_attack("popa3d", "Session from {ip}",
                                      "connect from alice-pc.example.net",
                                      "Authentication passed for alice", pid))
    site.append(*(lines[0] for lines in attack))
    if split == 2:
        site.append(*(lines[1] for lines in attack))
    assert invoke(*site.args()).exit_code == 0
    site.append(*(line for lines in attack for line in lines[split:]))
    result = invoke(*site.args("--debug"))
    assert result.exit_code == 0
    assert "203.0.113.66" not in result.output.replace("Session from 203.0.113.66", "")
    assert query(site, "203.0.113.66") is None


###############################################################################
# A state directory that someone else can write is refused ###################
###############################################################################

def as_nobody(*cmd):
    subprocess.run(list(cmd), user="nobody", group="nogroup", check=True)


@pytest.fixture
def shared_tmp():
    """A directory like /tmp: world-writable and sticky, where the user
    nobody acts as the attacker."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as a second user (nobody)")
    import shutil
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="pbs-redteam-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


def refused(site, state, *extra):
    result = CliRunner().invoke(pb.cli, [*site.args(*extra), f"--state-dir={state}"])
    assert result.exit_code == 1, result.output
    assert result.output.count("Error:") == 1 and "Traceback" not in result.output
    assert "not trusted" in result.output
    return result.output


@pytest.mark.parametrize("dry_run", [False, True])
def test_state_dir_made_by_another_user_is_refused(site, shared_tmp, dry_run):
    """The README's old quick start used /tmp/pbs-demo: another user makes it
    first, with a lock that is a symbolic link to a file root would create."""
    state, target = shared_tmp / "pbs-demo", shared_tmp / "owned-by-root-now"
    as_nobody("mkdir", "-m", "700", str(state))
    as_nobody("ln", "-s", str(target), str(state / "lock"))
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    out = refused(site, state, *(["--dry-run"] if dry_run else []))
    assert f"state directory {state} belongs to uid 65534" in out
    assert not target.exists() and not os.path.lexists(f"{site.map}.db")


def test_world_writable_state_dir_is_refused(site, shared_tmp):
    state = shared_tmp / "state"
    state.mkdir()
    state.chmod(0o777)
    assert "is group- or world-writable (mode 0777)" in refused(site, state)


def test_state_dir_symlink_of_another_user_is_refused(site, shared_tmp, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    as_nobody("ln", "-s", str(mine), str(shared_tmp / "link"))
    assert "state directory link" in refused(site, shared_tmp / "link")


@pytest.mark.parametrize("name", ["lock", "mail.log.pending", "x.offset", "x.map"])
def test_planted_or_symlinked_state_files_are_refused(site, name):
    """A file of the state directory that another user owns (left from a
    time the directory was open), or any symbolic link in it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as a second user (nobody)")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    site.state.mkdir()
    planted = site.state / name
    planted.write_text("[]\n")
    os.chown(planted, 65534, 65534)
    assert f"state file {planted} belongs to uid 65534" in refused(site, site.state)
    planted.unlink()
    planted.symlink_to(site.root / "elsewhere")
    assert f"state file {planted} is a symbolic link" in refused(site, site.state)
    assert not (site.root / "elsewhere").exists()
    planted.unlink()
    planted.write_text("[]\n")
    planted.chmod(0o664)
    assert "group- or world-writable (mode 0664)" in refused(site, site.state)


def test_real_pending_file_is_opened_without_following_links(site, tmp_path):
    """Even a link that appears after the directory check (a race) is not
    followed: the state files are opened with O_NOFOLLOW."""
    link = tmp_path / "pending-link"
    link.symlink_to(tmp_path / "planted")
    (tmp_path / "planted").write_text('[["mail", "popa3d", "7", "203.0.113.66", 1795563000]]')
    with pytest.raises(pb.PbsmtpError, match="is a symbolic link"):
        pb.load_pending(str(link), NOW)
    with pytest.raises(pb.PbsmtpError, match="is a symbolic link"):
        pb.load_offset(str(link))


###############################################################################
# A stuck run is reported, and expiry goes on without it #####################
###############################################################################

def hold_lock(state, pid, since):
    """Hold the state directory's lock as a run with this PID that started
    at ``since`` (flock locks belong to the open file: a second open in this
    process is another holder)."""
    import fcntl
    state.mkdir(exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, f"{pid} {int(since)}\n".encode())
    return fd


def test_a_run_writes_its_pid_and_start_into_the_lock(site):
    assert invoke(*site.args()).exit_code == 0
    pid, since = (site.state / "lock").read_text().split()
    assert int(pid) == os.getpid() and abs(int(since) - time.time()) < 600


def test_stuck_run_is_an_error_and_expiry_goes_on(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 30, "192.0.2.11"))
    assert invoke(*site.args()).exit_code == 0
    offset = pb.offset_path(str(site.state), str(site.log))
    before = Path(offset).read_text()
    site.append(dovecot_login(NOW + 1000, "192.0.2.12"))
    fd = hold_lock(site.state, 4242, time.time() - 1000)
    try:
        # Within the bound: an overlapping run, silent as before.
        quiet = invoke(*site.args("--lock-timeout=5000", now=NOW + 1750))
        assert (quiet.exit_code, quiet.output) == (0, "")
        stuck = CliRunner().invoke(pb.cli, site.args(now=NOW + 1750))
    finally:
        os.close(fd)
    assert stuck.exit_code == 1
    assert re.fullmatch(r"Error: another run \(PID 4242\) has held the lock for 10\d\d s, "
                        r"longer than --lock-timeout=300: it is stuck or far too slow; no log "
                        r"line was read, 1 expired entries purged\n", stuck.output), stuck.output
    assert query(site, "192.0.2.10") is None                  # expired, purged
    assert query(site, "192.0.2.11") == str(NOW - 30)         # still valid
    assert query(site, "192.0.2.12") is None                  # the log is the stuck run's
    assert Path(offset).read_text() == before
    # The stuck run goes on (here: the next run) and reads its lines.
    assert invoke(*site.args(now=NOW + 1750)).exit_code == 0
    assert query(site, "192.0.2.12") == str(NOW + 1000)


def test_lock_timeout_from_the_environment(site):
    fd = hold_lock(site.state, 4242, time.time() - 1000)
    try:
        result = invoke(*site.args(), env={"PBSMTP_LOCK_TIMEOUT": "900"})
        assert result.exit_code == 1 and "--lock-timeout=900" in result.output
        result = invoke(*site.args(), env={"PBSMTP_LOCK_TIMEOUT": "2000"})
        assert (result.exit_code, result.output) == (0, "")
    finally:
        os.close(fd)


def test_poison_lines_do_not_stop_the_lines_after_them(site):
    """Forged lines built to make a regex backtrack (many user=<a>, and no
    rip=), of every length up to and beyond the line bound, then a real
    login: one run reads past them all."""
    stamp = syslog_time(NOW - 100)
    forged = [f"{stamp} mail dovecot: imap-login: Login: " + "user=<a>, " * n + "\n"
              for n in (10, 100, 800, 819, 820, 5000, 100000)]
    site.append(*forged, *forged, dovecot_login(NOW - 50, "192.0.2.10"))
    assert invoke(*site.args()).exit_code == 0
    assert query(site, "192.0.2.10") == str(NOW - 50)


###############################################################################
# Settings: one Error: line for every bad one ################################
###############################################################################

def one_error(result, *expected):
    assert result.exit_code in (1, 2), result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output, result.output


@pytest.mark.parametrize("text,expected", [
    ('nowrite = "false"\n', "'nowrite' must be true or false (no quotes), not 'false'"),
    ('write = 1\n', "'write' must be true or false"),
    ('grace = "900"\n', "'grace' must be a whole number of seconds (no quotes), not '900'"),
    ('grace = true\n', "'grace' must be a whole number of seconds"),
    ('lock-timeout = 1.5\n', "'lock-timeout' must be a whole number of seconds"),
    ('ignore-net = "10.0.0.0/8"\n', "'ignore-net' must be a list of strings"),
    ('ignore-net = [10]\n', "'ignore-net' must be a list of strings"),
    ('logfile = 5\n', "'logfile' must be a string in quotes, not 5"),
    ('gracee = 900\n', "unknown setting 'gracee' (did you mean 'grace'?)"),
    ('no-write = true\n', "unknown setting 'no-write' (did you mean 'nowrite'?)"),
])
def test_config_file_values_are_type_checked(site, tmp_path, text, expected):
    config = tmp_path / "pbsmtp.conf"
    config.write_text(text)
    result = CliRunner().invoke(pb.cli, [f"--config={config}", *site.args()])
    one_error(result, f"config file {config}: ", expected)
    assert not os.path.exists(f"{site.map}.db")


def test_config_file_that_is_not_utf8(site, tmp_path):
    config = tmp_path / "pbsmtp.conf"
    config.write_bytes(b'logfile = "/var/log/m\xe4il.log"\n')
    result = CliRunner().invoke(pb.cli, [f"--config={config}", *site.args()])
    one_error(result, f"config file {config} is not UTF-8 text")


@pytest.mark.parametrize("digits", [11, 400, 5000])
def test_huge_grace_is_one_error_line(site, digits):
    result = CliRunner().invoke(pb.cli, [*site.args(), f"--grace={'9' * digits}"])
    one_error(result, "--grace must be at most 3162240000 seconds (a hundred years)")


def test_now_is_not_taken_from_the_environment(site):
    """--now is a test hook: a PBSMTP_NOW in a cron job's environment must not
    move the clock (here it would make a fresh login look expired)."""
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    args = [a for a in site.args() if not a.startswith("--now=")]
    result = invoke(*args, "--grace=31622400", env={"PBSMTP_NOW": str(NOW + 10 ** 8)})
    assert result.exit_code == 0
    assert query(site, "192.0.2.10") == str(NOW - 60)


def test_unreadable_map_is_rebuilt_by_reprocess(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    assert invoke(*site.args()).exit_code == 0
    Path(f"{site.map}.db").write_bytes(b"this is not a Berkeley DB file\n" * 100)
    result = CliRunner().invoke(pb.cli, site.args())
    one_error(result, f"{site.map}.db", "run pbsmtp-batch --reprocess to rebuild the map")
    result = CliRunner().invoke(pb.cli, site.args("--reprocess"))
    assert result.exit_code == 0, result.output
    assert "copied it to" in result.stderr and "rebuilt the map from the logs" in result.stderr
    assert query(site, "192.0.2.10") == str(NOW - 60)
    aside = [p for p in site.map.parent.iterdir() if ".unreadable-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert invoke(*site.args()).exit_code == 0


###############################################################################
# Terminal output: a line's control characters are escaped ###################
###############################################################################

HOSTILE = "x\x1b]0;owned\x07\x1b[2J\u009b31m\x7f\x85y"


def test_debug_escapes_control_characters(site):
    site.append(f"{syslog_time(NOW - 60)} mail dovecot: imap-login: Login: user=<{HOSTILE}>, "
                f"method=PLAIN, rip=192.0.2.10, lip=192.0.2.1, mpid=1, session=<a>\n")
    result = invoke(*site.args("--dry-run", "--debug"))
    assert result.exit_code == 0
    assert "user=x\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x7f\\x85y" in result.output
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.output)


def test_check_patterns_escapes_control_characters(site):
    site.append(f"{syslog_time(NOW - 60)} mail newpop[7]: user {HOSTILE} logged in from "
                f"198.51.100.9\n",
                f"{syslog_time(NOW - 60)} mail dovecot: imap-login: Login: user=<a, rip=203.0.113.9"
                f"{HOSTILE}>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.1\n")
    result = CliRunner().invoke(pb.cli, ["--check-patterns", f"--logfile={site.log}",
                                         f"--now={NOW}"])
    assert "1 look like logins but matched no pattern" in result.output
    assert "1 refused as unsafe" in result.output
    assert result.output.count("\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x7f\\x85y") == 2
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.output)


@pytest.mark.parametrize("text,expected", [
    ('ignore-net = ["10.0.0.0/8", "garbage"]\n',
     "'ignore-net': --ignore-net 'garbage' is not a network"),
    ('grace = 0\n', "'grace': --grace must be a whole number of seconds above 0"),
    ('map-type = "dbm"\n', "'map-type': --map-type 'dbm' is not supported"),
])
def test_config_file_value_errors_name_the_file_and_key(site, tmp_path, text, expected):
    config = tmp_path / "pbsmtp.conf"
    config.write_text(text)
    result = CliRunner().invoke(pb.cli, [f"--config={config}", *site.args()[:1]])
    one_error(result, f"config file {config}: {expected}")
