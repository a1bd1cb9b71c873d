"""The systemd journal as the log source, against real journal files.

The journal files are written by systemd's own tools: entries in the journal
export format, carrying the trusted fields that journald gives each sender
(for Dovecot: what journald 252 recorded for Dovecot 2.3.19's log process),
go through ``systemd-journal-remote --output=FILE.journal -``, and
pbsmtp-batch reads them back through ``journalctl -D`` (tests/journal.py).
A real systemd-journald, with ``logger`` writing to it as root and as nobody,
is in test_journal_live.py; the trust rule alone in test_journal_unit.py.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import NOW
from journal import COURIER, CYRUS, DOVECOT, LOGGER, Site, dovecot_login
from runs import KILL_AT_EVENT, invoke

pytestmark = pytest.mark.tools


@pytest.fixture
def site(tmp_path, postmap):
    return Site(tmp_path)


def lines_read(result):
    """The count from the -v summary line."""
    summary = [l for l in result.output.splitlines() if l.startswith("pbsmtp-batch: ")][-1]
    return int(summary.split()[1])


def test_each_family_logs_in_from_its_trusted_sender(site):
    site.journal.write(
        (NOW - 300, dovecot_login("192.0.2.10"), DOVECOT),
        (NOW - 290, dovecot_login("2001:db8::10", verb="Logged in"), DOVECOT),   # Dovecot 2.4
        (NOW - 280, "LOGIN, user=bob, ip=[::ffff:198.51.100.20], port=[41230], protocol=IMAP",
         COURIER),
        (NOW - 270, "login: client.example.org [203.0.113.30] carol plaintext+TLS User "
                    "logged in SESSIONID=<cyrus-1234-1>", CYRUS),
        (NOW - 260, "Reload configuration", {**DOVECOT, "_EXE": "/usr/sbin/dovecot",
                                             "_COMM": "dovecot"}),
    )
    result = invoke(*site.args("--debug"))
    assert result.exit_code == 0, result.output
    assert site.entries() == {"192.0.2.10": str(NOW - 300), "2001:db8::10": str(NOW - 290),
                              "198.51.100.20": str(NOW - 280), "203.0.113.30": str(NOW - 270)}
    assert "refused" not in result.output


def test_failures_and_injections_from_the_real_server_add_nothing(site):
    site.journal.write(
        (NOW - 200, "imap-login: Disconnected (auth failed, 1 attempts in 2 secs): "
                    "user=<x>, method=PLAIN, rip=192.0.2.66, lip=192.0.2.1", DOVECOT),
        # A user name that imitates a success, as Dovecot logs it verbatim.
        (NOW - 190, "imap-login: Disconnected (auth failed, 1 attempts in 2 secs): "
                    "user=<poplab, ip=[::ffff:203.0.113.9], rip=203.0.113.9, lip=1>, "
                    "method=PLAIN, rip=127.0.0.14, lip=127.0.0.1", DOVECOT),
        (NOW - 180, "LOGIN FAILED, user=x LOGIN, user=poplab, ip=[::ffff:203.0.113.9], "
                    "port=[1], ip=[::ffff:127.0.0.13]", COURIER),
        (NOW - 170, "badlogin: [198.51.100.66] plaintext (user) SASL(-13): authentication "
                    "failure", CYRUS),
        # A newline or CR in a message is the sender's byte, never a new line.
        (NOW - 160, "imap-login: Disconnected: user=<x\n2026-11-24T23:20:00+00:00 mail "
                    "dovecot: " + dovecot_login("203.0.113.66") + ">", DOVECOT),
        (NOW - 150, "imap-login: Aborted login: user=<x\r" + dovecot_login("203.0.113.67")
         + ">", DOVECOT),
        (NOW - 140, "x\n" + dovecot_login("203.0.113.68"), DOVECOT),
    )
    result = invoke(*site.args("-v"))
    assert result.exit_code == 0, result.output
    assert lines_read(result) == 7
    assert site.entries() == {}


@pytest.mark.parametrize("sender, why", [
    (LOGGER, "_EXE=/usr/bin/logger"),                                        # logger -t dovecot
    ({**LOGGER, "_UID": "0", "_SYSTEMD_UNIT": "cron.service"}, "_EXE=/usr/bin/logger"),
    ({**LOGGER, "_COMM": "log", "_EXE": "/home/eve/log"}, "_EXE=/home/eve/log"),  # renamed copy
    ({**DOVECOT, "_UID": "1000", "_SYSTEMD_UNIT": "session-3.scope"}, "_UID=1000"),
    ({**DOVECOT, "_UID": "33", "_SYSTEMD_UNIT": "apache2.service"}, "_UID=33"),  # webmail
    ({**DOVECOT, "_SYSTEMD_UNIT": "apache2.service"}, "_SYSTEMD_UNIT=apache2.service"),
    ({k: v for k, v in DOVECOT.items() if k != "_EXE"}, "_EXE=(none)"),
])
def test_an_entry_forged_as_dovecot_is_never_a_login(site, sender, why):
    site.journal.write((NOW - 100, dovecot_login("203.0.113.66"), sender),
                       (NOW - 90, dovecot_login("192.0.2.11"), DOVECOT))
    result = invoke(*site.args("--debug"))
    assert result.exit_code == 0, result.output
    assert site.entries() == {"192.0.2.11": str(NOW - 90)}
    refused = [l for l in result.output.splitlines() if "refused journal entry" in l]
    assert len(refused) == 1 and why in refused[0] and "203.0.113.66" in refused[0]


def test_a_two_line_server_without_journal_senders_is_never_trusted(site):
    # logger -t popa3d --id=31337: "Session from" and "Authentication passed".
    forged = {**LOGGER, "SYSLOG_IDENTIFIER": "popa3d", "SYSLOG_PID": "31337"}
    site.journal.write((NOW - 100, "Session from 203.0.113.66", forged),
                       (NOW - 99, "Authentication passed for eve", forged))
    result = invoke(*site.args("--debug"))
    assert result.exit_code == 0, result.output
    assert site.entries() == {}
    assert "popa3d has no journal_exe" in result.output


def test_each_entry_is_read_once_across_runs(site):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT),
                       (NOW - 250, "noise", DOVECOT))
    first = invoke(*site.args("-v", now=NOW - 200))
    assert first.exit_code == 0 and lines_read(first) == 2
    cursor = (site.state / ("journal_" + str(site.journal.dir).strip("/").replace("/", "_")
                            + ".offset")).read_text()
    assert '"cursor": "s=' in cursor
    site.journal.write((NOW - 100, dovecot_login("192.0.2.20"), DOVECOT),
                       (NOW - 90, dovecot_login("192.0.2.10"), DOVECOT),
                       (NOW - 80, "more noise", COURIER))
    second = invoke(*site.args("-v", "--debug"))
    assert second.exit_code == 0, second.output
    assert lines_read(second) == 3
    assert second.output.count("login 192.0.2.10 ") == 1       # the new one only
    assert site.entries() == {"192.0.2.10": str(NOW - 90), "192.0.2.20": str(NOW - 100)}
    third = invoke(*site.args("-v", now=NOW + 10))
    assert third.exit_code == 0 and lines_read(third) == 0
    assert "warning" not in third.output


def test_dry_run_and_nowrite_change_nothing(site):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT))
    before = site.snapshot()
    dry = invoke(*site.args("--dry-run"))
    assert dry.exit_code == 0 and f"would add 192.0.2.10 {NOW - 300}" in dry.output
    assert invoke(*site.args("--nowrite")).exit_code == 0
    assert site.snapshot() == before
    # The cursor did not move: a real run still finds the login.
    real = invoke(*site.args("-v"))
    assert lines_read(real) == 1 and site.entries() == {"192.0.2.10": str(NOW - 300)}


def test_first_run_and_reprocess_read_the_grace_window_by_time(site):
    site.journal.write((NOW - 86400, dovecot_login("192.0.2.1"), DOVECOT),   # a day ago
                       (NOW - 300, dovecot_login("192.0.2.10"), DOVECOT))
    first = invoke(*site.args("-v"))
    assert lines_read(first) == 1               # the day-old entry is not even read
    assert site.entries() == {"192.0.2.10": str(NOW - 300)}
    site.map.with_suffix(".db").unlink()
    again = invoke(*site.args("-v", "--reprocess"))
    assert again.exit_code == 0 and lines_read(again) == 1
    assert site.entries() == {"192.0.2.10": str(NOW - 300)}


def test_a_cursor_the_journal_no_longer_has_rereads_the_window_once(site):
    """(--max-session=0: the logins here never end, and an open session
    would keep its address past the grace window this test is about.)"""
    site.journal.write((NOW - 3000, dovecot_login("192.0.2.10"), DOVECOT), name="old.journal")
    assert invoke(*site.args("--max-session=0", now=NOW - 2900)).exit_code == 0
    # Vacuumed: the file that held the cursor's entry is gone.
    (site.journal.dir / "old.journal").unlink()
    site.journal.write((NOW - 86400, dovecot_login("192.0.2.1"), DOVECOT),
                       (NOW - 1000, dovecot_login("192.0.2.20"), DOVECOT),
                       (NOW - 100, dovecot_login("192.0.2.30"), DOVECOT), name="new.journal")
    result = CliRunner().invoke(pb.cli, site.args("-v", "--max-session=0"))
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and "no longer has the entry read last time" in warnings[0]
    assert lines_read(result) == 2
    assert site.entries() == {"192.0.2.20": str(NOW - 1000), "192.0.2.30": str(NOW - 100)}
    later = CliRunner().invoke(pb.cli, site.args("-v", "--max-session=0", now=NOW + 10))
    assert later.stderr == "" and lines_read(later) == 0


def test_a_corrupt_cursor_file_warns_and_rereads_the_window(site):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT))
    site.state.mkdir()
    cursor = site.state / ("journal_" + str(site.journal.dir).strip("/").replace("/", "_")
                           + ".offset")
    cursor.write_text('{"cursor": "s=nonsense"}\n')
    result = CliRunner().invoke(pb.cli, site.args())
    assert result.exit_code == 0 and "corrupt" in result.stderr
    assert site.entries() == {"192.0.2.10": str(NOW - 300)}


def test_no_journal_is_one_error_and_changes_nothing(site, tmp_path):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT))
    assert invoke(*site.args()).exit_code == 0
    before = site.snapshot()
    for directory, message in ((tmp_path / "nowhere", "does not exist"),
                               (tmp_path / "postfix-conf", "no journal files")):
        args = [a for a in site.args() if not a.startswith("--journal-directory")]
        result = invoke(*args, f"--journal-directory={directory}")
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert message in result.output
    assert site.snapshot() == before


def test_a_missing_journalctl_is_one_error(site, tmp_path):
    if shutil.which("journalctl", path=os.pathsep.join(pb.SBIN_DIRS)):
        pytest.skip("journalctl is in /usr/sbin or /sbin here: PATH cannot hide it")
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT))
    empty = tmp_path / "bin"
    empty.mkdir()
    result = invoke(*site.args(), env={"PATH": str(empty)})
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "journalctl not found" in result.output and "'systemd'" in result.output
    assert site.entries() == {} and not list(site.state.glob("*.offset"))


def test_journal_match_narrows_but_never_trusts(site):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT),
                       (NOW - 290, "LOGIN, user=bob, ip=[::ffff:198.51.100.20], port=[1]",
                        COURIER),
                       (NOW - 280, dovecot_login("203.0.113.66"), LOGGER))
    result = invoke(*site.args("--journal-match=_SYSTEMD_UNIT=courier-imap.service",
                               "--journal-match=_SYSTEMD_UNIT=session-3.scope", "-v"))
    assert result.exit_code == 0, result.output
    assert lines_read(result) == 2
    assert site.entries() == {"198.51.100.20": str(NOW - 290)}


def test_journal_options_from_the_environment_and_the_config_file(site, tmp_path):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT),
                       (NOW - 290, "LOGIN, user=bob, ip=[::ffff:198.51.100.20], port=[1]",
                        COURIER))
    args = [a for a in site.args() if not a.startswith("--journal-directory")]
    env = {"PBSMTP_JOURNAL_DIRECTORY": str(site.journal.dir),
           "PBSMTP_JOURNAL_MATCH": "_SYSTEMD_UNIT=dovecot.service _UID=0"}
    result = invoke(*args, "--dry-run", env=env)
    assert result.exit_code == 0, result.output
    assert "would add 192.0.2.10" in result.output and "198.51.100.20" not in result.output
    config = tmp_path / "pbsmtp.conf"
    config.write_text(f'journal = true\njournal-directory = "{site.journal.dir}"\n'
                      f'journal-match = ["_SYSTEMD_UNIT=courier-imap.service"]\n')
    result = invoke(f"--config={config}", *args, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would add 198.51.100.20" in result.output and "192.0.2.10" not in result.output


def test_bad_journal_match_is_an_error(site):
    for bad in ("dovecot", "_unit=x", "A=b\nc"):
        result = invoke(*site.args(f"--journal-match={bad}"))
        assert result.exit_code == 1 and result.output.startswith("Error: "), bad


def test_check_patterns_reads_the_journal(site):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT),
                       (NOW - 200, dovecot_login("203.0.113.66"), LOGGER),
                       (NOW - 100, "newpop: user carol logged in from 198.51.100.9",
                        {**LOGGER, "SYSLOG_IDENTIFIER": "newpop"}))
    result = invoke(*site.args("--check-patterns"))
    assert result.exit_code == 0, result.output
    assert "3 lines, 1 logins from 1 distinct addresses" in result.output
    assert "1 refused as unsafe:" in result.output and "_EXE=/usr/bin/logger" in result.output
    assert "user carol logged in from 198.51.100.9" in result.output
    assert site.snapshot() == {}


def test_a_vanished_cursor_with_nothing_newer_is_forgotten_once(site):
    site.journal.write((NOW - 5000, dovecot_login("192.0.2.10"), DOVECOT), name="old.journal")
    assert invoke(*site.args(now=NOW - 4900)).exit_code == 0
    (site.journal.dir / "old.journal").unlink()
    site.journal.write((NOW - 86400, "noise", DOVECOT), name="new.journal")   # outside the window
    first = CliRunner().invoke(pb.cli, site.args("-v"))
    assert first.exit_code == 0 and first.stderr.count("no longer has the entry") == 1
    second = CliRunner().invoke(pb.cli, site.args("-v"))
    assert second.exit_code == 0 and second.stderr == "" and lines_read(second) == 0


def test_fields_inside_a_message_stay_in_the_message(site):
    # A multi-line message that imitates the export format: blank lines and
    # trusted fields, then a login. journalctl writes it as one binary field.
    fake = ("x\n\n__CURSOR=s=0\n__REALTIME_TIMESTAMP=%d000000\nSYSLOG_IDENTIFIER=dovecot\n"
            "_EXE=/usr/lib/dovecot/log\n_UID=0\n_SYSTEMD_UNIT=dovecot.service\nMESSAGE=%s\n\n"
            % (NOW - 50, dovecot_login("203.0.113.66")))
    site.journal.write((NOW - 60, fake, LOGGER), (NOW - 59, fake, DOVECOT),
                       (NOW - 40, dovecot_login("192.0.2.11"), DOVECOT))
    result = invoke(*site.args("-v"))
    assert result.exit_code == 0, result.output
    assert lines_read(result) == 3
    assert site.entries() == {"192.0.2.11": str(NOW - 40)}


@pytest.mark.slow
def test_sigkill_at_any_point_rereads_and_the_next_run_catches_up(site):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT))
    assert invoke(*site.args()).exit_code == 0
    site.journal.write((NOW - 100, dovecot_login("192.0.2.20"), DOVECOT),
                       (NOW - 90, dovecot_login("192.0.2.10"), DOVECOT))
    before = site.snapshot()
    want = {"192.0.2.10": str(NOW - 90), "192.0.2.20": str(NOW - 100)}
    cmd = [sys.executable, "-c", KILL_AT_EVENT, *site.args()]

    def killed(at):
        return subprocess.run(cmd, env={**os.environ, "PBSMTP_KILL_AT": str(at)},
                              capture_output=True, text=True)
    done = killed(0)
    assert done.returncode == 0, done.stderr
    events = int(done.stderr.split("EVENTS ")[1])
    assert site.entries() == want

    def position():
        return {p.name: p.read_text() for p in site.state.glob("*") if p.suffix in
                (".offset", ".pending")}
    final = position()
    for at in sorted(set(range(1, events + 1, max(1, events // 12))) | {events - 1, events}):
        for path in (site.map.parent, site.state):
            shutil.rmtree(path)
            path.mkdir()
        for path, data in before.items():
            Path(path).write_bytes(data)
        killed(at)
        # Killed anywhere, the map is the old one or the new one ...
        assert site.entries() in ({"192.0.2.10": str(NOW - 300)}, want), at
        # ... and the next run ends exactly where an uninterrupted one did.
        again = invoke(*site.args("-v"))
        assert again.exit_code == 0 and site.entries() == want, (at, again.output)
        assert position() == final, at
        assert lines_read(invoke(*site.args("-v"))) == 0
