"""The command line, through click's CliRunner, against the real postmap."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import (NOW, dovecot_failure, dovecot_login, noise, require_map_type, run_as_nobody,
                      write_main_cf)
from runs import invoke, query, snapshot

pytestmark = pytest.mark.tools


@pytest.mark.parametrize("map_type", ["hash", "btree", "lmdb", "cdb"])
def test_a_login_lands_in_the_map(site, map_type):
    require_map_type(map_type)
    site.append(noise(NOW - 70), dovecot_login(NOW - 60, "192.0.2.10"),
                dovecot_login(NOW - 50, "2001:db8::10", proto="pop3"),
                dovecot_failure(NOW - 40, "203.0.113.66"))
    result = invoke(*site.args(map_type=map_type))
    assert (result.exit_code, result.output) == (0, "")       # silent under cron
    assert query(site, "192.0.2.10", map_type) == str(NOW - 60)
    assert query(site, "2001:db8::10", map_type) == str(NOW - 50)
    assert query(site, "203.0.113.66", map_type) is None
    suffix = pb.MAP_SUFFIXES[map_type]
    assert sorted(p.name for p in site.map.parent.iterdir()) == [f"pop-before-smtp{suffix}"]
    assert oct(os.stat(f"{site.map}{suffix}").st_mode & 0o777) == "0o644"


def test_second_run_without_new_lines_changes_nothing(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    assert invoke(*site.args()).exit_code == 0
    before = snapshot(site)
    inode = os.stat(f"{site.map}.db").st_ino
    result = invoke(*site.args("-v", now=NOW + 30))
    assert result.output == ("pbsmtp-batch: 0 lines read, 0 logins, 0 added, 0 refreshed, "
                             "0 expired, 1 active\n")
    assert snapshot(site) == before
    assert os.stat(f"{site.map}.db").st_ino == inode   # not even rewritten


def test_new_lines_are_read_once(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    invoke(*site.args())
    site.append(noise(NOW - 5), dovecot_login(NOW - 4, "192.0.2.11"),
                dovecot_login(NOW - 3, "192.0.2.10"))
    result = invoke(*site.args("-v"))
    assert result.output == ("pbsmtp-batch: 3 lines read, 2 logins, 1 added, 1 refreshed, "
                             "0 expired, 2 active\n")
    assert query(site, "192.0.2.10") == str(NOW - 3)


def test_dry_run_changes_nothing_and_says_what_it_would_do(site):
    site.append(dovecot_login(NOW - 3000, "192.0.2.9"))
    assert invoke(*site.args(now=NOW - 2000)).exit_code == 0    # 192.0.2.9 in the map
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    before = snapshot(site)
    result = invoke(*site.args("--dry-run"))
    assert result.exit_code == 0
    assert result.output == (f"would add 192.0.2.10 {NOW - 60} login "
                             "2026-11-24T23:29:00+00:00 (age 1m00s, left 29m00s)\n"
                             f"would expire 192.0.2.9 {NOW - 3000} login "
                             "2026-11-24T22:40:00+00:00 (age 50m00s, left -20m00s)\n"
                             "pbsmtp-batch: 1 lines read, 1 logins, 1 added, 0 refreshed, "
                             "1 expired, 1 active\n")
    assert snapshot(site) == before
    # The lines were not consumed: a real run still sees them.
    invoke(*site.args())
    assert query(site, "192.0.2.10") == str(NOW - 60)


def test_classic_flags_work_verbatim(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    before = snapshot(site)
    result = invoke("--nowrite", "--debug", "--noflock", f"--logfile={site.log}",
                    f"--dbfile={site.map}", "--grace=1800", f"--state-dir={site.state}",
                    f"--postfix-config={site.conf}", f"--now={NOW}")
    assert result.exit_code == 0
    assert ("debug: login 192.0.2.10 user=alice at 2026-11-24T23:29:00+00:00 "
            "(age 1m00s, left 29m00s) (dovecot)") in result.output
    assert snapshot(site) == before
    result = invoke("--write", "--nodebug", "--flock", f"--logfile={site.log}",
                    f"--dbfile={site.map}", "--grace=1800", f"--state-dir={site.state}",
                    f"--postfix-config={site.conf}", f"--now={NOW}")
    assert (result.exit_code, result.output) == (0, "")
    assert query(site, "192.0.2.10") == str(NOW - 60)


def test_entries_expire_after_the_grace_window(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 10, "192.0.2.11"))
    invoke(*site.args("--grace=100"))
    assert query(site, "192.0.2.10") == str(NOW - 60)
    result = invoke(*site.args("--grace=100", "-v", now=NOW + 41))
    assert "1 expired, 1 active" in result.output
    assert query(site, "192.0.2.10") is None
    assert query(site, "192.0.2.11") == str(NOW - 10)
    invoke(*site.args("--grace=100", now=NOW + 91))
    assert query(site, "192.0.2.11") is None


def test_old_logins_are_not_added(site):
    site.append(dovecot_login(NOW - 1801, "192.0.2.10"), dovecot_login(NOW - 1799, "192.0.2.11"))
    invoke(*site.args())
    assert query(site, "192.0.2.10") is None
    assert query(site, "192.0.2.11") == str(NOW - 1799)


def test_mynetworks_and_ignore_net_are_left_out(site):
    (site.conf / "nets").write_text("198.51.100.0/24\n")
    write_main_cf(site.conf, f"office = 203.0.113.0/25\n"
                             f"mynetworks = 127.0.0.0/8 $office {site.conf}/nets\n")
    site.append(*(dovecot_login(NOW - 9, ip) for ip in
                  ("127.0.0.5", "203.0.113.5", "203.0.113.200", "198.51.100.7", "192.0.2.10",
                   "2001:db8:1::5", "2001:db8:2::5")))
    result = invoke(*site.args("--ignore-net=192.0.2.0/24", "--ignore-net", "2001:db8:1::/48",
                               "--debug"))
    assert result.exit_code == 0
    assert {ip for ip in ("127.0.0.5", "203.0.113.5", "203.0.113.200", "198.51.100.7",
                          "192.0.2.10", "2001:db8:1::5", "2001:db8:2::5")
            if query(site, ip)} == {"203.0.113.200", "2001:db8:2::5"}
    assert "skipped 203.0.113.5 (dovecot): in mynetworks (relays anyway)" in result.output
    assert "skipped 192.0.2.10 (dovecot): in --ignore-net" in result.output


def test_injected_user_name_adds_nothing(site):
    site.append(dovecot_failure(NOW - 9, "192.0.2.12", user="x>, method=PLAIN, rip=203.0.113.9, lip=1.2.3.4"),
                dovecot_login(NOW - 8, "192.0.2.13", user="x>, method=PLAIN, rip=203.0.113.9, lip=1.2.3.4"))
    result = invoke(*site.args("--debug"))
    assert query(site, "203.0.113.9") is None and query(site, "192.0.2.12") is None
    assert "'rip=' occurs more than once" in result.output


def test_half_written_line_is_read_once_complete(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    invoke(*site.args())
    whole = dovecot_login(NOW - 5, "192.0.2.11")
    site.append(whole[:40])
    invoke(*site.args())
    assert query(site, "192.0.2.11") is None
    site.append(whole[40:])
    invoke(*site.args())
    assert query(site, "192.0.2.11") == str(NOW - 5)


def test_invalid_bytes_do_not_crash_or_hide_the_next_line(site):
    with open(site.log, "ab") as f:
        f.write(b"\xff\xfe\x00 garbage \xc3\x28\n" + b"x" * 100000 + b"\n")
    site.append(dovecot_login(NOW - 5, "192.0.2.11"))
    invoke(*site.args())                              # first run: whole-file path
    with open(site.log, "ab") as f:
        f.write(b"\xff\xfe\x00 more garbage\n")
    site.append(dovecot_login(NOW - 4, "192.0.2.12"))
    result = invoke(*site.args())                     # incremental path
    assert result.exit_code == 0
    assert query(site, "192.0.2.11") == str(NOW - 5)
    assert query(site, "192.0.2.12") == str(NOW - 4)


def test_map_mode_is_kept(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    invoke(*site.args())
    os.chmod(f"{site.map}.db", 0o640)
    os.chown(f"{site.map}.db", 0, 4)
    site.append(dovecot_login(NOW - 5, "192.0.2.11"))
    invoke(*site.args())
    st = os.stat(f"{site.map}.db")
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, 4)


def test_foreign_entries_in_the_map_are_dropped_with_a_warning(site):
    src = site.map.parent / "src"
    src.write_text(f"192.0.2.1 {NOW - 5}\n192.0.2.2 OK\n192.0.2 {NOW}\n")
    subprocess.run([pb.find_tool("postmap"), "-c", str(site.conf), f"hash:{src}"], check=True)
    os.rename(f"{src}.db", f"{site.map}.db")
    src.unlink()
    result = CliRunner().invoke(pb.cli, site.args())
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.count("warning") == 1 and "dropped 2 map entries" in result.stderr
    assert query(site, "192.0.2.1") == str(NOW - 5)
    assert query(site, "192.0.2.2") is None and query(site, "192.0.2") is None


def test_corrupt_offset_warns_and_rereads_the_grace_window(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    invoke(*site.args())
    offset_file = pb.offset_path(str(site.state), str(site.log))
    with open(offset_file, "w") as f:
        f.write("garbage\x00")
    site.append(dovecot_login(NOW - 5, "192.0.2.11"))
    result = CliRunner().invoke(pb.cli, site.args())
    assert result.exit_code == 0
    assert "offset file" in result.stderr and "corrupt" in result.stderr
    assert query(site, "192.0.2.11") == str(NOW - 5)
    assert json.loads(open(offset_file).read())["offset"] == site.log.stat().st_size


def test_lock_held_by_another_run_exits_zero(site):
    import fcntl
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    site.state.mkdir()
    with open(site.state / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        quiet = invoke(*site.args())
        loud = invoke(*site.args("-v"))
        nolock = invoke(*site.args("--noflock", "--nowrite", "-v"))
    assert (quiet.exit_code, quiet.output) == (0, "")
    assert (loud.exit_code, loud.output) == (0, "pbsmtp-batch: another run holds the lock; "
                                                "nothing done\n")
    assert "1 logins" in nolock.output
    assert query(site, "192.0.2.10") is None


def test_list_and_json(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 30, "2001:db8::10"))
    invoke(*site.args())
    args = [f"--dbfile={site.map}", "--map-type=hash", f"--postfix-config={site.conf}",
            f"--now={NOW}", "--list"]
    text = invoke(*args)
    assert text.output.splitlines() == [
        "192.0.2.10                               2026-11-24T23:29:00+00:00  age     1m00s"
        "  left    29m00s",
        "2001:db8::10                             2026-11-24T23:29:30+00:00  age     0m30s"
        "  left    29m30s"]
    data = json.loads(invoke(*args, "--json").output)
    assert data == [{"ip": "192.0.2.10", "login": NOW - 60, "age": 60, "left": 1740,
                     "login_iso": "2026-11-24T23:29:00+00:00",
                     "expires_iso": "2026-11-24T23:59:00+00:00", "sessions": []},
                    {"ip": "2001:db8::10", "login": NOW - 30, "age": 30, "left": 1770,
                     "login_iso": "2026-11-24T23:29:30+00:00",
                     "expires_iso": "2026-11-24T23:59:30+00:00", "sessions": []}]


@pytest.mark.parametrize("args, message", [
    (["--grace=abc"], "Error: --grace must be a whole number of seconds above 0, not 'abc'"),
    (["--grace=-5"], "Error: --grace must be a whole number of seconds above 0, not '-5'"),
    (["--ignore-net=10.0.0.0/33"], "Error: --ignore-net '10.0.0.0/33' is not a network"),
    (["--map-type=pcre"], "Error: --map-type 'pcre' is not supported"),
    (["--pattern=nosuch"], "Error: no pattern 'nosuch' in"),
    (["--now=soon"], "Error: --now 'soon' is not an epoch time"),
])
def test_bad_option_values_are_one_line_errors(site, args, message):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = CliRunner().invoke(pb.cli, site.args(*args))
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert snapshot(site) == {}


def test_missing_log_is_an_error_and_changes_nothing(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    invoke(*site.args())
    before = snapshot(site)
    site.log.unlink()
    result = CliRunner().invoke(pb.cli, site.args())
    assert (result.exit_code, result.stderr) == (1, f"Error: log {site.log} does not exist\n")
    assert snapshot(site) == before


def test_broken_pattern_file_names_file_and_line(site, tmp_path):
    patterns = tmp_path / "patterns"
    patterns.mkdir()
    (patterns / "good.toml").write_text(open(pb.shipped_patterns_dir() + "/dovecot.toml").read())
    (patterns / "bad.toml").write_text('description = "x"\nversion = "1"\nprogram = oops\n')
    result = CliRunner().invoke(pb.cli, site.args(f"--patterns-dir={patterns}"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: pattern file {patterns}/bad.toml: ")
    assert "(at line 3, column 11)" in result.stderr and result.stderr.count("\n") == 1


def test_loose_pattern_is_refused(site, tmp_path):
    patterns = tmp_path / "patterns"
    patterns.mkdir()
    (patterns / "loose.toml").write_text(
        "description = 'x'\nversion = '1'\nprogram = 'dovecot'\ncontains = ['Login']\n"
        "regex = ['^.*Login: .*rip=(?P<ip>\\S+)']\n")
    result = CliRunner().invoke(pb.cli, site.args(f"--patterns-dir={patterns}"))
    assert result.exit_code == 1 and "greedy" in result.stderr


def test_missing_postmap_names_the_package(site, monkeypatch, tmp_path):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    monkeypatch.setattr(pb, "SBIN_DIRS", ())
    result = CliRunner().invoke(pb.cli, site.args(),
                                                env={"PATH": str(tmp_path)})
    assert result.exit_code == 1
    assert result.stderr == ("Error: postconf not found in PATH or : "
                             "install the Debian package 'postfix'\n")
    assert snapshot(site) == {}


def test_missing_map_directory_is_an_error(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = CliRunner().invoke(
        pb.cli, site.args(f"--dbfile={site.root}/nodir/map"))
    assert result.exit_code == 1
    assert result.stderr == f"Error: map directory {site.root}/nodir does not exist\n"


def test_unwritable_map_directory_and_unreadable_log(nobody_site):
    site = nobody_site
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    assert invoke(*site.args()).exit_code == 0
    os.chmod(site.state, 0o777)
    site.append(dovecot_login(NOW - 5, "192.0.2.11"))
    before = snapshot(site)
    assert run_as_nobody(site, *site.args()) == (
        1, f"Error: cannot write map directory {site.map.parent}\n")
    os.chmod(site.map.parent, 0o777)
    os.chmod(site.log, 0o600)
    assert run_as_nobody(site, *site.args()) == (1, f"Error: log {site.log} cannot be read\n")
    assert snapshot(site) == before


def test_config_file_then_environment_then_command_line(site, tmp_path):
    site.append(dovecot_login(NOW - 100, "192.0.2.10"))
    config = tmp_path / "pbsmtp.conf"
    config.write_text(f'grace = 50\nlogfile = "{site.log}"\ndbfile = "{site.map}"\n'
                      f'state-dir = "{site.state}"\nignore-net = ["198.51.100.0/24"]\n')
    base = [f"--config={config}", f"--postfix-config={site.conf}", f"--now={NOW}", "--dry-run"]
    assert "0 logins" in invoke(*base).output                         # grace 50 from the file
    assert "1 logins" in invoke(*base, env={"PBSMTP_GRACE": "200"}).output
    assert "0 logins" in invoke(*base, "--grace=60", env={"PBSMTP_GRACE": "200"}).output
    config.write_text("graze = 5\n")
    result = CliRunner().invoke(pb.cli, [f"--config={config}"])
    assert (result.exit_code, result.stderr) == (
        1, f"Error: config file {config}: unknown setting 'graze' (did you mean 'grace'?)\n")


def test_mail_config_names_the_postfix_instance(site):
    write_main_cf(site.conf, "mynetworks = 192.0.2.0/24\n")
    site.append(dovecot_login(NOW - 9, "192.0.2.10"), dovecot_login(NOW - 9, "198.51.100.10"))
    args = [a for a in site.args() if not a.startswith("--postfix-config")]
    assert invoke(*args, env={"MAIL_CONFIG": str(site.conf)}).exit_code == 0
    assert query(site, "192.0.2.10") is None               # that instance's mynetworks
    assert query(site, "198.51.100.10") == str(NOW - 9)


def test_check_patterns_reports_hits_and_near_misses(site, tmp_path):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "192.0.2.10"),
                dovecot_failure(NOW - 40, "203.0.113.66"),
                "Nov 24 23:00:00 mail newpop[7]: user carol logged in from 198.51.100.9\n")
    result = CliRunner().invoke(pb.cli, ["--check-patterns", f"--logfile={site.log}",
                                         f"--now={NOW}"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "dovecot                     2          1" in lines
    assert "4 lines, 2 logins from 1 distinct addresses" in lines
    assert "1 look like logins but matched no pattern:" in lines
    assert "  Nov 24 23:00:00 mail newpop[7]: user carol logged in from 198.51.100.9" in lines
    assert "0 sample failures" in lines
    assert snapshot(site) == {}                            # changes nothing


def test_check_patterns_fails_on_a_wrong_sample(site, tmp_path):
    patterns = tmp_path / "patterns"
    patterns.mkdir()
    text = open(pb.shipped_patterns_dir() + "/dovecot.toml").read()
    (patterns / "dovecot.toml").write_text(text.replace("ip = '", "ip = '10.", 1))
    result = CliRunner().invoke(pb.cli, ["--check-patterns", f"--logfile={site.log}",
                                         f"--patterns-dir={patterns}", f"--now={NOW}"])
    assert result.exit_code == 1
    assert "1 sample failures:" in result.stdout
    assert result.stderr == "Error: 1 pattern samples failed\n"


def test_other_backends_run_without_postfix(site, monkeypatch, tmp_path):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    monkeypatch.setattr(pb, "SBIN_DIRS", ())
    exim_list = site.root / "exim-relay"
    result = CliRunner().invoke(pb.cli, [f"--logfile={site.log}", f"--dbfile={exim_list}",
                                         f"--state-dir={site.state}", "--backend=exim",
                                         f"--postfix-config={site.conf}", f"--now={NOW}",
                                         "--debug"],
                                env={"PATH": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "mynetworks is unknown, so it is not left out (postconf not found" in result.stdout
    assert f"192.0.2.10: {NOW - 60}" in exim_list.read_text()


def test_two_line_login_split_across_runs(site):
    """popa3d logs the address and the success on two lines of one PID; when
    a run ends between them, the address waits in the state directory."""
    site.append("Nov 24 23:28:00 mail popa3d[2001]: Session from 192.0.2.33\n",
                "Nov 24 23:28:01 mail popa3d[2002]: Session from 192.0.2.34\n")
    assert invoke(*site.args()).exit_code == 0
    assert query(site, "192.0.2.33") is None
    pending = Path(pb.offset_path(str(site.state), str(site.log))).with_suffix(".pending")
    assert json.loads(pending.read_text()) == [
        ["mail", "popa3d", "2001", "192.0.2.33", NOW - 120],
        ["mail", "popa3d", "2002", "192.0.2.34", NOW - 119]]
    site.append("Nov 24 23:28:30 mail popa3d[2001]: Authentication passed for carol\n",
                "Nov 24 23:28:31 mail popa3d[2003]: Authentication passed for mallory\n")
    result = invoke(*site.args("--debug"))
    assert query(site, "192.0.2.33") == str(NOW - 90)          # the success line's time
    assert query(site, "192.0.2.34") is None                   # never logged in
    assert "no address line seen for popa3d[2003]" in result.output
    assert json.loads(pending.read_text()) == [
        ["mail", "popa3d", "2002", "192.0.2.34", NOW - 119]]
    # Address lines wait ten minutes at most.
    site.append(noise(NOW + 600))
    invoke(*site.args(now=NOW + 600))
    assert json.loads(pending.read_text()) == []


def test_check_patterns_pairs_two_line_logins(site):
    site.append("Nov 24 23:28:00 mail popa3d[2001]: Session from 192.0.2.33\n",
                "Nov 24 23:28:01 mail popa3d[2001]: Authentication passed for carol\n")
    result = CliRunner().invoke(pb.cli, ["--check-patterns", f"--logfile={site.log}",
                                         f"--now={NOW}"])
    assert result.exit_code == 0, result.output
    assert "2 lines, 1 logins from 1 distinct addresses" in result.stdout.splitlines()


def test_a_run_without_logins_reads_the_map_only_when_it_must(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    invoke(*site.args("--grace=100"))
    site.append(noise(NOW + 10))
    skipped = "debug: no logins, and the map is as left with nothing due to expire: not read"
    quiet = invoke(*site.args("--grace=100", "--debug", "-v", now=NOW + 10))
    assert skipped in quiet.output and "1 lines read, 0 logins" in quiet.output
    assert "1 active" in quiet.output
    # Someone else rewrote the map: it is read.
    src = site.map.parent / "src"
    src.write_text(f"192.0.2.77 {NOW}\n")
    subprocess.run([pb.find_tool("postmap"), "-c", str(site.conf), f"hash:{src}"], check=True)
    os.rename(f"{src}.db", f"{site.map}.db")
    src.unlink()
    changed = invoke(*site.args("--grace=100", "--debug", "-v", now=NOW + 20))
    assert skipped not in changed.output and "0 added, 0 refreshed, 0 expired, 1 active" in changed.output
    # An entry falls due: the map is read and purged.
    due = invoke(*site.args("--grace=100", "--debug", "-v", now=NOW + 101))
    assert skipped not in due.output and "1 expired, 0 active" in due.output
    assert query(site, "192.0.2.77") is None


def test_lines_written_during_a_run_are_read_before_it_exits(site):
    """systemd's path unit drops the triggers of writes made while the
    service runs; the run itself takes one more pass instead."""
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    opts = pb.Options(logfile=str(site.log), dbfile=str(site.map), map_type="hash",
                      state_dir=str(site.state), postfix_config=str(site.conf))
    written = []

    def during_the_run(message):
        if not written:                      # the first pass is matching lines
            site.append(dovecot_login(NOW - 5, "192.0.2.11"))
            written.append(message)

    summary, _ = pb.run_caught_up(opts, now=NOW, say=during_the_run)
    assert written and (summary.lines, summary.logins, summary.active) == (2, 2, 2)
    assert query(site, "192.0.2.11") == str(NOW - 5)
    # A half-written line is no reason for another pass.
    with open(site.log, "a") as f:
        f.write("Nov 24 23:29:59 mail dovecot: imap-login: Lo")
    assert not pb.unread_lines(opts)


def big_log(site, lines_per_minute=40, minutes=24 * 60):
    """A day of noise ending at NOW (about 4 MB), as a list of lines."""
    out = []
    for minute in range(minutes, 0, -1):
        for _ in range(lines_per_minute):
            out.append(noise(NOW - minute * 60))
    return out


def test_reprocess_enters_a_big_log_where_the_grace_window_begins(site):
    lines = big_log(site)
    # Inside the window, at its edge, one in the window but written among
    # lines 40 minutes older (within the hour's margin), one just outside.
    lines.insert(len(lines) - 20 * 40, dovecot_login(NOW - 20 * 60, "192.0.2.10"))
    lines.insert(len(lines) - 30 * 40, dovecot_login(NOW - 1799, "192.0.2.11"))
    lines.insert(len(lines) - 70 * 40, dovecot_login(NOW - 1700, "192.0.2.12"))
    lines.insert(len(lines) - 31 * 40, dovecot_login(NOW - 1801, "192.0.2.13"))
    lines.insert(100, dovecot_login(NOW - 1000, "192.0.2.14"))   # far out of order: lost
    site.append(*lines)
    result = invoke(*site.args("--reprocess", "-v"))
    read = int(result.output.split()[1])
    assert read < len(lines) / 4                      # most of the day was skipped
    assert {ip for ip in ("192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13",
                          "192.0.2.14") if query(site, ip)} == {
        "192.0.2.10", "192.0.2.11", "192.0.2.12"}


def test_window_search_stops_where_lines_carry_no_time(site):
    lines = big_log(site)
    # The last 3 hours lose their time stamps (say a changed syslog template);
    # the search cannot place the window and reads from earlier on instead.
    untimed = [line.split(" mail ", 1)[1] for line in lines[-180 * 40:]]
    site.append(*lines[:-180 * 40], *untimed, dovecot_login(NOW - 10, "192.0.2.20"))
    with open(site.log, "rb") as f:
        start = pb.window_start(f, NOW - 1800 - 3600, NOW)
        assert f.tell() == 0
    timed_end = sum(len(line) for line in lines[:-180 * 40])
    assert 0 < start < timed_end
    invoke(*site.args("--reprocess"))
    assert query(site, "192.0.2.20") == str(NOW - 10)


###############################################################################
# Before Postfix is configured (Debian's "No configuration": no main.cf) #####
###############################################################################

@pytest.fixture
def unconfigured(site):
    """The site, with a Postfix instance directory that has no main.cf."""
    (site.conf / "main.cf").unlink()
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    return site


def test_dry_run_without_main_cf_warns_once_and_works(unconfigured):
    site = unconfigured
    result = CliRunner().invoke(pb.cli, site.args("--dry-run"))
    assert result.exit_code == 0, result.output
    assert f"would add 192.0.2.10 {NOW - 60}" in result.stdout
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("pbsmtp-batch: warning: mynetworks is unknown")
    assert f"{site.conf}/main.cf does not exist" in warnings[0]
    assert snapshot(site) == {}


def test_real_run_without_main_cf_is_one_error(unconfigured):
    site = unconfigured
    result = CliRunner().invoke(pb.cli, site.args())
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"Error: Postfix is not configured: {site.conf}/main.cf does not "
                             f"exist (Debian: dpkg-reconfigure postfix; or name the instance "
                             f"with --postfix-config=DIR)\n")
    assert snapshot(site) == {}


def test_list_and_check_patterns_without_main_cf(unconfigured):
    site = unconfigured
    assert invoke(*site.args("--list")).output == ""
    result = CliRunner().invoke(pb.cli, ["--check-patterns", f"--logfile={site.log}",
                                         f"--now={NOW}"])
    assert result.exit_code == 0, result.output
    assert "1 lines, 1 logins from 1 distinct addresses" in result.stdout


def test_unreadable_patterns_directory_is_one_error(nobody_site, tmp_path):
    site = nobody_site
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    hidden = site.root / "hidden"
    hidden.mkdir(mode=0o700)
    shutil.copytree(site.patterns, hidden / "patterns")
    assert run_as_nobody(site, *site.args("--dry-run", f"--patterns-dir={hidden}/patterns")) == (
        1, f"Error: cannot read patterns directory {hidden}/patterns: Permission denied\n")
