"""The systemd journal as the log source, against real journal files.

The journal files are written by systemd's own tools: entries in the journal
export format, carrying the trusted fields that journald gives each sender
(for Dovecot: what journald 252 recorded for Dovecot 2.3.19's log process),
go through ``systemd-journal-remote --output=FILE.journal -``, and
pbsmtp-batch reads them back through ``journalctl -D``. The last test starts
a real systemd-journald in a private mount namespace and has ``logger``
write to it as root and as nobody.
"""

import os
import pwd
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import NOW, require
from runs import KILL_AT_EVENT, invoke, snapshot

JOURNAL_REMOTE_PATHS = ("/lib/systemd/systemd-journal-remote",
                        "/usr/lib/systemd/systemd-journal-remote")
JOURNALD_PATHS = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
BOOT_ID = "5bd5f1e2c0a84c4f9a0e3f7b6d2c1a90"

# The trusted fields of each sender, as journald records them.
DOVECOT = {"SYSLOG_IDENTIFIER": "dovecot", "_COMM": "log", "_EXE": "/usr/lib/dovecot/log",
           "_CMDLINE": "dovecot/log", "_UID": "0", "_GID": "0", "_PID": "612",
           "_SYSTEMD_UNIT": "dovecot.service", "SYSLOG_FACILITY": "2", "PRIORITY": "6"}
COURIER = {"SYSLOG_IDENTIFIER": "imapd", "SYSLOG_PID": "1403", "_PID": "1403",
           "_COMM": "courierlogger", "_EXE": "/usr/sbin/courierlogger", "_UID": "0",
           "_GID": "0", "_SYSTEMD_UNIT": "courier-imap.service", "SYSLOG_FACILITY": "2"}
CYRUS_UID = "6001"        # the test's patterns name the cyrus user by number
CYRUS = {"SYSLOG_IDENTIFIER": "cyrus/imap", "SYSLOG_PID": "2201", "_PID": "2201",
         "_COMM": "imapd", "_EXE": "/usr/lib/cyrus/bin/imapd", "_UID": CYRUS_UID,
         "_GID": CYRUS_UID, "_SYSTEMD_UNIT": "cyrus-imapd.service", "SYSLOG_FACILITY": "2"}
# `logger -t dovecot` run by an ordinary user from a login session.
LOGGER = {"SYSLOG_IDENTIFIER": "dovecot", "_COMM": "logger", "_EXE": "/usr/bin/logger",
          "_UID": "1000", "_GID": "1000", "_PID": "31337", "_SYSTEMD_UNIT": "session-3.scope"}


def require_file(paths, package):
    """The first of these paths that exists (programs outside PATH, under
    /lib/systemd), like conftest.require: a skip, or in CI a failure."""
    found = next((p for p in paths if os.path.exists(p)), None)
    if found:
        return found
    message = (f"{os.path.basename(paths[0])} is not installed "
               f"(Debian: apt-get install {package})")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def dovecot_login(ip, user="alice", verb="Login"):
    return (f"imap-login: {verb}: user=<{user}>, method=PLAIN, rip={ip}, lip=192.0.2.1, "
            f"mpid=4242, TLS, session=<AbCdEf012345>")


def export_field(name, value):
    data = value.encode() if isinstance(value, str) else value
    if any(b < 32 and b != 9 for b in data) or b"\x7f" in data:
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class Journal:
    """A journal directory whose files systemd-journal-remote writes."""

    def __init__(self, directory):
        self.dir = directory
        self.dir.mkdir(exist_ok=True)
        self.tool = require_file(JOURNAL_REMOTE_PATHS, "systemd-journal-remote")
        require("journalctl", "systemd")
        self.monotonic = 1_000_000

    def write(self, *entries, name="mail.journal"):
        """Append entries, each (epoch, message, sender fields), to one file."""
        stream = b""
        for when, message, sender in entries:
            self.monotonic += 1000
            fields = {"__REALTIME_TIMESTAMP": str(int(when * 1_000_000)),
                      "__MONOTONIC_TIMESTAMP": str(self.monotonic), "_BOOT_ID": BOOT_ID,
                      "_HOSTNAME": "mail", "_TRANSPORT": "syslog", **sender,
                      "MESSAGE": message}
            stream += b"".join(export_field(k, v) for k, v in fields.items()) + b"\n"
        done = subprocess.run([self.tool, f"--output={self.dir / name}", "-"], input=stream,
                              capture_output=True)
        assert done.returncode == 0, done.stderr


class Site:
    """A map, a state directory, a private Postfix config and a journal."""

    def __init__(self, root):
        self.root = root
        self.map = root / "postfix" / "pop-before-smtp"
        self.state = root / "state"
        self.conf = root / "postfix-conf"
        self.map.parent.mkdir()
        self.conf.mkdir()
        (self.conf / "main.cf").write_text("mynetworks = 127.0.0.1/32 [::1]/128\n")
        os.utime(self.conf / "main.cf", (time.time() - 60, time.time() - 60))
        (self.conf / "master.cf").write_text("")
        self.journal = Journal(root / "journal")
        # The shipped patterns, but the cyrus user named by a UID (this host
        # has no cyrus user).
        self.patterns = root / "patterns"
        shutil.copytree(pb.shipped_patterns_dir(), self.patterns)
        cyrus = self.patterns / "cyrus.toml"
        text = cyrus.read_text()
        assert "journal_users = ['cyrus']" in text
        cyrus.write_text(text.replace("journal_users = ['cyrus']",
                                      f"journal_users = ['cyrus', '{CYRUS_UID}']"))

    def args(self, *extra, now=NOW):
        return [f"--journal-directory={self.journal.dir}", f"--dbfile={self.map}",
                f"--state-dir={self.state}", f"--postfix-config={self.conf}",
                f"--patterns-dir={self.patterns}", "--map-type=hash", f"--now={now}", *extra]

    def entries(self):
        """The map as postmap -s reads it."""
        done = subprocess.run([pb.find_tool("postmap"), "-c", str(self.conf), "-s",
                               f"hash:{self.map}"], capture_output=True, text=True)
        if not (self.map.parent / "pop-before-smtp.db").exists():
            return {}
        assert done.returncode == 0, done.stderr
        return dict(line.split(None, 1) for line in done.stdout.splitlines())

    def snapshot(self):
        return snapshot(self)


@pytest.fixture
def site(tmp_path, postmap):
    return Site(tmp_path)


def lines_read(result):
    """The count from the -v summary line."""
    summary = [l for l in result.output.splitlines() if l.startswith("pbsmtp-batch: ")][-1]
    return int(summary.split()[1])


@pytest.mark.tools
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


@pytest.mark.tools
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
@pytest.mark.tools
def test_an_entry_forged_as_dovecot_is_never_a_login(site, sender, why):
    site.journal.write((NOW - 100, dovecot_login("203.0.113.66"), sender),
                       (NOW - 90, dovecot_login("192.0.2.11"), DOVECOT))
    result = invoke(*site.args("--debug"))
    assert result.exit_code == 0, result.output
    assert site.entries() == {"192.0.2.11": str(NOW - 90)}
    refused = [l for l in result.output.splitlines() if "refused journal entry" in l]
    assert len(refused) == 1 and why in refused[0] and "203.0.113.66" in refused[0]


@pytest.mark.tools
def test_a_two_line_server_without_journal_senders_is_never_trusted(site):
    # logger -t popa3d --id=31337: "Session from" and "Authentication passed".
    forged = {**LOGGER, "SYSLOG_IDENTIFIER": "popa3d", "SYSLOG_PID": "31337"}
    site.journal.write((NOW - 100, "Session from 203.0.113.66", forged),
                       (NOW - 99, "Authentication passed for eve", forged))
    result = invoke(*site.args("--debug"))
    assert result.exit_code == 0, result.output
    assert site.entries() == {}
    assert "popa3d has no journal_exe" in result.output


@pytest.mark.tools
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


@pytest.mark.tools
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


@pytest.mark.tools
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


@pytest.mark.tools
def test_a_cursor_the_journal_no_longer_has_rereads_the_window_once(site):
    site.journal.write((NOW - 3000, dovecot_login("192.0.2.10"), DOVECOT), name="old.journal")
    assert invoke(*site.args(now=NOW - 2900)).exit_code == 0
    # Vacuumed: the file that held the cursor's entry is gone.
    (site.journal.dir / "old.journal").unlink()
    site.journal.write((NOW - 86400, dovecot_login("192.0.2.1"), DOVECOT),
                       (NOW - 1000, dovecot_login("192.0.2.20"), DOVECOT),
                       (NOW - 100, dovecot_login("192.0.2.30"), DOVECOT), name="new.journal")
    result = CliRunner().invoke(pb.cli, site.args("-v"))
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and "no longer has the entry read last time" in warnings[0]
    assert lines_read(result) == 2
    assert site.entries() == {"192.0.2.20": str(NOW - 1000), "192.0.2.30": str(NOW - 100)}
    later = CliRunner().invoke(pb.cli, site.args("-v", now=NOW + 10))
    assert later.stderr == "" and lines_read(later) == 0


@pytest.mark.tools
def test_a_corrupt_cursor_file_warns_and_rereads_the_window(site):
    site.journal.write((NOW - 300, dovecot_login("192.0.2.10"), DOVECOT))
    site.state.mkdir()
    cursor = site.state / ("journal_" + str(site.journal.dir).strip("/").replace("/", "_")
                           + ".offset")
    cursor.write_text('{"cursor": "s=nonsense"}\n')
    result = CliRunner().invoke(pb.cli, site.args())
    assert result.exit_code == 0 and "corrupt" in result.stderr
    assert site.entries() == {"192.0.2.10": str(NOW - 300)}


@pytest.mark.tools
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


@pytest.mark.tools
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


@pytest.mark.tools
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


@pytest.mark.tools
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


@pytest.mark.tools
def test_bad_journal_match_is_an_error(site):
    for bad in ("dovecot", "_unit=x", "A=b\nc"):
        result = invoke(*site.args(f"--journal-match={bad}"))
        assert result.exit_code == 1 and result.output.startswith("Error: "), bad


@pytest.mark.tools
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


@pytest.mark.unit
def test_the_trust_rule_alone():
    pattern = pb.load_pattern(os.path.join(pb.shipped_patterns_dir(), "dovecot.toml"))
    fields = {k.encode(): v.encode() for k, v in DOVECOT.items()}
    assert pb.journal_refusal(fields, pattern) is None
    deleted = {**fields, b"_EXE": b"/usr/lib/dovecot/log (deleted)"}   # after an upgrade
    assert pb.journal_refusal(deleted, pattern) is None
    no_unit = {k: v for k, v in fields.items() if k != b"_SYSTEMD_UNIT"}  # not under systemd
    assert pb.journal_refusal(no_unit, pattern) is None
    other = {**fields, b"_EXE": b"/tmp/usr/lib/dovecot/log"}
    assert "_EXE=/tmp/usr/lib/dovecot/log" in pb.journal_refusal(other, pattern)
    assert "_UID=(none)" in pb.journal_refusal({**fields, b"_UID": b""}, pattern)


@pytest.mark.unit
def test_journal_keys_in_pattern_files_are_checked(tmp_path):
    good = (Path(pb.shipped_patterns_dir()) / "dovecot.toml").read_text()
    for bad, message in (("journal_exe = ['log']", "not an absolute path"),
                         ("journal_users = 'root'", "must be a list"),
                         ("journal_units = []", "must be a list")):
        path = tmp_path / "x.toml"
        text = "".join(l for l in good.splitlines(keepends=True) if not l.startswith("journal_"))
        path.write_text(bad + "\n" + text)
        with pytest.raises(pb.PbsmtpError, match=message):
            pb.load_pattern(str(path))


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


@pytest.mark.live
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


@pytest.mark.tools
def test_a_vanished_cursor_with_nothing_newer_is_forgotten_once(site):
    site.journal.write((NOW - 5000, dovecot_login("192.0.2.10"), DOVECOT), name="old.journal")
    assert invoke(*site.args(now=NOW - 4900)).exit_code == 0
    (site.journal.dir / "old.journal").unlink()
    site.journal.write((NOW - 86400, "noise", DOVECOT), name="new.journal")   # outside the window
    first = CliRunner().invoke(pb.cli, site.args("-v"))
    assert first.exit_code == 0 and first.stderr.count("no longer has the entry") == 1
    second = CliRunner().invoke(pb.cli, site.args("-v"))
    assert second.exit_code == 0 and second.stderr == "" and lines_read(second) == 0


@pytest.mark.tools
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


@pytest.mark.tools
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
