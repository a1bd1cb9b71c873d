"""Journal files written by systemd's own tools, for tests that read the
journal: entries in the journal export format, with the trusted fields
journald gives each sender, go through
``systemd-journal-remote --output=FILE.journal -``.

The same as the helpers at the top of tests/test_journal.py, in a module that
any test may import (a test module must not import another)."""

import os
import struct
import subprocess

import pytest

from conftest import require

JOURNAL_REMOTE_PATHS = ("/lib/systemd/systemd-journal-remote",
                        "/usr/lib/systemd/systemd-journal-remote")
BOOT_ID = "5bd5f1e2c0a84c4f9a0e3f7b6d2c1a90"

# The trusted fields of each sender, as journald records them (Dovecot 2.3.19's
# log process under journald 252).
DOVECOT = {"SYSLOG_IDENTIFIER": "dovecot", "_COMM": "log", "_EXE": "/usr/lib/dovecot/log",
           "_CMDLINE": "dovecot/log", "_UID": "0", "_GID": "0", "_PID": "612",
           "_SYSTEMD_UNIT": "dovecot.service", "SYSLOG_FACILITY": "2", "PRIORITY": "6"}
# `logger -t dovecot` run by an ordinary user from a login session.
LOGGER = {"SYSLOG_IDENTIFIER": "dovecot", "_COMM": "logger", "_EXE": "/usr/bin/logger",
          "_UID": "1000", "_GID": "1000", "_PID": "31337", "_SYSTEMD_UNIT": "session-3.scope"}


def require_file(paths, package):
    """The first of these paths that exists, like conftest.require: a skip,
    or in CI a failure."""
    found = next((p for p in paths if os.path.exists(p)), None)
    if found:
        return found
    message = (f"{os.path.basename(paths[0])} is not installed "
               f"(Debian: apt-get install {package})")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


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
