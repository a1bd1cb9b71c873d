"""A journal for the tests of the journal source: entries written by
systemd-journal-remote with the trusted fields journald gives each sender
(DOVECOT, COURIER, CYRUS, LOGGER), and a Site that reads them
(test_journal.py, test_journal_unit.py, test_journal_live.py); and a run
whose stderr is a journal stream (test_journal_stream*.py)."""

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pbsmtp_batch as pb
from conftest import NOW, require, unavailable
from runs import snapshot

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
    /lib/systemd), like conftest.require: else unavailable."""
    found = next((p for p in paths if os.path.exists(p)), None)
    if found:
        return found
    unavailable(f"{os.path.basename(paths[0])} is not installed "
                f"(Debian: apt-get install {package})")


def dovecot_login(ip, user="alice", verb="Login"):
    """A Dovecot login message; its session id is the address's own, as
    Dovecot's ids are unique (one id for two addresses would end the first
    session at the second login)."""
    sid = "".join(c for c in ip if c.isalnum())[-12:]
    return (f"imap-login: {verb}: user=<{user}>, method=PLAIN, rip={ip}, lip=192.0.2.1, "
            f"mpid=4242, TLS, session=<{sid}>")


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


# pbsmtp-batch as a process of its own, with stderr on a journal stream ######

MODULE = Path(__file__).resolve().parent.parent / "pbsmtp_batch.py"


def run_with_journal_stream(args, stderr_file: Path, journal: str | None):
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
