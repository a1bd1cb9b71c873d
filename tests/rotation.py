"""The real logrotate in the tests, and ``Lab``: a Site that remembers every
login it logged and checks each run (test_rotation.py,
test_rotation_settings.py, test_fuzz.py; conftest's ``lab`` fixture)."""

import re
import subprocess
import time

from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import Site, dovecot_login, noise, require

GRACE = 1800


# logrotate directives of each rotation mode under test.
MODES = {
    "create": "create",
    "dateext": "create\ndateext",
    "dateext-s": "create\ndateext\ndateformat -%Y%m%d-%s",
    "compress-delay": "create\ncompress\ndelaycompress",
    "compress": "create\ncompress",
    "dateext-s-compress": "create\ndateext\ndateformat -%Y%m%d-%s\ncompress",
    "copytruncate": "copytruncate",
    "copytruncate-compress": "copytruncate\ncompress",
    "nocreate": "nocreate",
}


# Modes where the daemon's old file descriptor still reaches a file that
# can be read: with compress (and no delaycompress) the renamed file is
# compressed and unlinked at once; with copytruncate the daemon never
# changes files.
LATE_WRITES = ("create", "dateext-s", "compress-delay")


def logrotate(log, state, mode, rotate=10):
    """Rotate ``log`` once with the real logrotate, forced, with its own
    state file and a config file beside the log."""
    conf = log.parent / "logrotate.conf"
    conf.write_text(f"{log} {{\n    rotate {rotate}\n    missingok\n    {MODES[mode]}\n}}\n")
    if "dateext" in mode:
        # dateext names have a resolution of one second (of one day without
        # %s): wait for a name that is not taken yet. logrotate's time(2) is
        # the kernel's coarse clock, a few ms behind: keep a margin.
        while any(str(int(time.time() - 0.05)) in p.name for p in log.parent.iterdir()):
            time.sleep(0.05)
    done = subprocess.run([require("logrotate", "logrotate"), "-f", "-s", str(state), str(conf)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class Lab(Site):
    """A Site that remembers every login it logged and checks each run."""

    def __init__(self, root, grace=GRACE):
        super().__init__(root)
        self.grace = grace
        self.expected: dict[str, int] = {}   # ip -> newest login time
        self.pending = 0                     # complete lines written since the last run
        self.serial = 0
        self.lrstate = root / "logrotate.state"

    def new_ip(self) -> str:
        self.serial += 1
        if self.serial % 5 == 0:
            return f"2001:db8:4::{self.serial:x}"
        return f"198.18.{self.serial // 250}.{self.serial % 250 + 1}"

    def write(self, text, to=None):
        """Append text to the log (or to a held file object: a daemon that
        has not reopened its log yet)."""
        if to is None:
            with open(self.log, "a") as f:
                f.write(text)
        else:
            to.write(text)
            to.flush()
        self.pending += text.count("\n")

    def logins(self, n=1, to=None, when=None, counted=True) -> list[str]:
        """n new logins (and a noise line before each); returns their IPs."""
        ips = []
        for _ in range(n):
            at = int(time.time()) if when is None else when
            ip = self.new_ip()
            self.write(noise(at) + dovecot_login(at, ip), to)
            if counted and at >= int(time.time()) - self.grace:
                self.expected[ip] = max(at, self.expected.get(ip, 0))
            ips.append(ip)
        return ips

    def rotate(self, mode, **kw):
        logrotate(self.log, self.lrstate, mode, **kw)

    def invoke(self, *extra, now=None):
        now = int(time.time()) if now is None else now
        return CliRunner().invoke(pb.cli, self.args(f"--grace={self.grace}", "-v", *extra,
                                                    now=now))

    def run(self, *extra, now=None, lines=None):
        """One run that must succeed; checks the map, and with ``lines`` (or
        by default the lines written since the last run) what it read."""
        result = self.invoke(*extra, now=now)
        assert result.exit_code == 0, result.output + (result.stderr or "")
        read = int(re.search(r"(\d+) lines read", result.stdout)[1])
        expected_lines = self.pending if lines is None else lines
        if expected_lines != "any":
            assert read == expected_lines, (result.stdout, result.stderr)
        self.pending = 0
        self.check()
        return result

    def entries(self) -> dict[str, str]:
        return pb.read_map(str(self.map), "hash", str(self.conf))

    def check(self):
        assert self.entries() == {ip: str(t) for ip, t in self.expected.items()}


def held(lab):
    """The daemon's file descriptor, opened before a rotation."""
    return open(lab.log, "a")
