"""Hostile and broken input through whole runs, Postfix's IPv6 key
shortening replayed through postmap -q, and a model-based state machine over
logins, noise, real logrotate rotations, runs, crashed runs and the clock.
The fuzzing of the reader and the matcher alone is in test_fuzz_unit.py.

Hypothesis runs with conftest's profile: a fixed seed (derandomize) so that
CI is repeatable; PBSMTP_HYPOTHESIS=thorough for a longer search.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

import pbsmtp_batch as pb
from conftest import NOW, PROFILE, Site, dovecot_failure, dovecot_login, noise
from relay import postfix_lookup_keys
from rotation import LATE_WRITES, logrotate
from runs import KILL_AT_EVENT, Model, dump

pytestmark = pytest.mark.tools

PATTERNS = pb.load_patterns(pb.shipped_patterns_dir())
GRACE = 1800


def query(site, *keys):
    """postmap -q for many keys at once: {key: value} of those found."""
    done = subprocess.run([pb.find_tool("postmap"), "-c", str(site.conf), "-q", "-",
                           f"hash:{site.map}"], input="".join(k + "\n" for k in keys),
                          capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    return dict(line.split(None, 1) for line in done.stdout.splitlines())


def cli(site, *extra, now=NOW, env=None):
    result = CliRunner().invoke(pb.cli, site.args("-v", *extra, now=now), env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


###############################################################################
# Hostile and broken input, end to end ########################################
###############################################################################

@pytest.mark.parametrize("incremental", [False, True])
def test_carriage_return_does_not_split_a_line(site, incremental):
    """A crafted user name carrying "\\r" and a whole success line. Lines end
    at "\\n" only; pygtail (the incremental path) used to split at the "\\r"
    too, and the attacker's address became a login."""
    if incremental:
        site.append(noise(NOW - 6))
        cli(site)
    fake = dovecot_login(NOW - 5, "203.0.113.66").rstrip("\n")
    site.append(dovecot_failure(NOW - 5, "192.0.2.50", user=f"x\r{fake}\r"),
                f"{noise(NOW - 5).rstrip()}\r{fake}\n",
                dovecot_login(NOW - 4, "192.0.2.51"))
    cli(site)
    assert query(site, "203.0.113.66", "192.0.2.50", "192.0.2.51") == {
        "192.0.2.51": str(NOW - 4)}


@pytest.mark.parametrize("incremental", [False, True])
def test_lines_of_a_megabyte_and_binary_garbage(site, incremental):
    if incremental:
        site.append(noise(NOW - 6))
        cli(site)
    rnd = __import__("random").Random(1)
    garbage = bytes(rnd.getrandbits(8) for _ in range(300_000))
    with open(site.log, "ab") as f:
        f.write(b"x" * (1 << 20) + b"\n")                       # 1 MiB
        f.write(dovecot_login(NOW - 9, "192.0.2.60").encode())
        f.write(b"y" * ((1 << 20) + 4321) + b"\n")             # across a block edge
        f.write(dovecot_login(NOW - 8, "192.0.2.61").encode())
        # A 1 MB success line: an enormous user name. No server writes a
        # login line that long: it is skipped, and said so once.
        f.write(dovecot_login(NOW - 7, "192.0.2.62", user="u" * (1 << 20)).encode())
        f.write(garbage + b"\n")
        f.write(dovecot_login(NOW - 6, "192.0.2.63").encode())
        f.write(b"\x00" * 5000 + b"\xc3\x28\xff\n")
    result = cli(site)
    assert query(site, *(f"192.0.2.{i}" for i in range(60, 64))) == {
        f"192.0.2.{i}": str(NOW - 69 + i) for i in (60, 61, 63)}
    assert result.stderr.count("longer than 65536 bytes") == 1, result.stderr


def test_half_written_line_at_a_rotation(site):
    """The daemon writes half a line, the log is renamed, and it completes
    the line in the renamed file: read once, once complete."""
    lrstate = site.root / "lr.state"
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    cli(site)
    whole = dovecot_login(NOW - 5, "192.0.2.11")
    daemon = open(site.log, "a")
    daemon.write(whole[:50])
    daemon.flush()
    assert "1 lines read" not in cli(site).stdout
    logrotate(site.log, lrstate, "create")
    assert query(site, "192.0.2.11") == {}
    cli(site)                                      # still half: nothing
    daemon.write(whole[50:])
    daemon.close()
    site.append(dovecot_login(NOW - 4, "192.0.2.12"))
    result = cli(site)
    assert "2 lines read" in result.stdout
    assert query(site, "192.0.2.11", "192.0.2.12") == {"192.0.2.11": str(NOW - 5),
                                                       "192.0.2.12": str(NOW - 4)}


def test_half_written_line_on_a_first_run(site):
    whole = dovecot_login(NOW - 5, "192.0.2.11")
    site.append(dovecot_login(NOW - 6, "192.0.2.10"), whole[:60])
    cli(site)
    assert query(site, "192.0.2.11") == {}
    site.append(whole[60:])
    assert "1 lines read" in cli(site).stdout
    assert query(site, "192.0.2.11") == {"192.0.2.11": str(NOW - 5)}


BAD_ADDRESSES = ["999.1.1.1", "1.2.3", "01.02.03.04", "::ffff:999.0.0.1", "fe80::1%eth0",
                 "mail.example.org", "unknown", "1.2.3.4.5", "192.0.2.1/24", "[192.0.2.1]",
                 "2001:db8::1::2", "::ffff:1.2.3", "0x7f.0.0.1", "1e100.net", ""]


def test_addresses_that_are_not_full_addresses_add_nothing(site):
    for i, bad in enumerate(BAD_ADDRESSES):
        site.append(dovecot_login(NOW - 30 + i, bad), dovecot_login(NOW - 30 + i, f"192.0.2.{i}"))
    cli(site)
    got = pb.read_map(str(site.map), "hash", str(site.conf))
    assert got == {f"192.0.2.{i}": str(NOW - 30 + i) for i in range(len(BAD_ADDRESSES))}
    # Nor any shortened form that Postfix would look up.
    assert query(site, "1.2.3", "1.2", "1", "999.1.1.1", "fe80::1", "01.02.03.04") == {}


def test_clock_skew_future_logins(site):
    site.append(dovecot_login(NOW + 3600, "192.0.2.70"),         # an hour ahead: now
                dovecot_login(NOW + 3 * 86400, "192.0.2.71"),    # days ahead: last year
                dovecot_login(NOW - 5, "192.0.2.72"))
    cli(site)
    assert query(site, "192.0.2.70", "192.0.2.71", "192.0.2.72") == {
        "192.0.2.70": str(NOW), "192.0.2.72": str(NOW - 5)}
    # The clamped entry expires on time, as a login at NOW would.
    cli(site, now=NOW + GRACE + 1)
    assert query(site, "192.0.2.70") == {}


def test_new_year(site):
    new_year = 1798761610                       # 2027-01-01 00:00:10 UTC
    site.append("Dec 31 23:59:50 mail dovecot: imap-login: Login: user=<a>, method=PLAIN, "
                "rip=192.0.2.80, lip=192.0.2.1, mpid=1, TLS, session=<x80>\n",
                "Jan  1 00:00:05 mail dovecot: imap-login: Login: user=<a>, method=PLAIN, "
                "rip=192.0.2.81, lip=192.0.2.1, mpid=1, TLS, session=<x81>\n")
    cli(site, now=new_year)
    assert query(site, "192.0.2.80", "192.0.2.81") == {
        "192.0.2.80": str(new_year - 20), "192.0.2.81": str(new_year - 5)}


@pytest.mark.parametrize("now, line_time, real", [
    (1792888800, "02:35:00", 1792888500),    # read at 02:40 CEST, first pass of the hour
    (1792894200, "02:50:00", 1792893000),    # read at 03:10 CET, second pass
])
def test_dst_changeover_hour(site, monkeypatch, now, line_time, real):
    """Europe/Berlin, 2026-10-25: 02:00-03:00 local happens twice. A login in
    that hour is in the map, with a time at most an hour off its real one,
    never after the run's now (an ambiguous time read as the later hour is
    clamped: its grace is at most an hour longer), and it expires."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    site.append(f"Oct 25 {line_time} mail dovecot: imap-login: Login: user=<a>, method=PLAIN, "
                "rip=192.0.2.90, lip=192.0.2.1, mpid=1, TLS\n",
                "Mar 29 02:30:00 mail dovecot: imap-login: Login: user=<a>, method=PLAIN, "
                "rip=192.0.2.91, lip=192.0.2.1, mpid=1, TLS\n")   # spring gap
    cli(site, now=now, env={"TZ": "Europe/Berlin"})
    got = query(site, "192.0.2.90", "192.0.2.91")
    assert set(got) == {"192.0.2.90"}           # March is long outside the window
    assert real <= int(got["192.0.2.90"]) <= min(now, real + 3600)
    cli(site, now=real + 3600 + GRACE + 1, env={"TZ": "Europe/Berlin"})
    assert query(site, "192.0.2.90") == {}


###############################################################################
# Fuzzing: random bytes, and mutations of real success lines ##################
###############################################################################

HOSTILE = [s.line for p in PATTERNS for s in p.samples if s.injection or not s.ip]


def test_injection_samples_glued_behind_a_carriage_return_add_nothing(site):
    """All of them at once through a real incremental run, each glued behind
    a noise line with "\\r": none is a line of its own."""
    site.append(noise(NOW))
    cli(site)
    site.append(*(noise(NOW).rstrip("\n") + "\r" + line + "\n" for line in HOSTILE))
    result = CliRunner().invoke(pb.cli, site.args("-v", "--grace=999999999"))
    assert result.exit_code == 0
    assert "0 logins" in result.stdout


###############################################################################
# IPv6: Postfix's shortened lookups, replayed with postmap -q #################
###############################################################################

def relays(site, clients: list[str]) -> dict[str, str]:
    """Which clients Postfix would let relay, and through which key: the
    first key in lookup order that the map has."""
    table = query(site, *{k for c in clients for k in postfix_lookup_keys(c)})
    out = {}
    for client in clients:
        hit = next((k for k in postfix_lookup_keys(client) if k in table), None)
        if hit:
            out[client] = hit
    return out


STORED = ["2001:db8::1", "2001:db8:0:1::", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4::",
          "2001:db8:5::a:b", "2001:db8:1:2:3::8", "fe80::5", "192.0.2.7", "::ffff:192.0.2.8"]
CLIENTS = ["2001:db8::1", "2001:db8::1:5", "2001:db8::1:5:6", "2001:db8::2", "2001:db8:0:1::",
           "2001:db8:0:1::7", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:7",
           "2001:db8:1:2:3:4::", "2001:db8:1:2:3:4:0:9", "2001:db8:5::a:b", "2001:db8:5::a:b:c",
           "2001:db8:1:2:3::8", "2001:db8:1:2:3:0:8:1", "fe80::5", "fe80::5:1", "192.0.2.7",
           "192.0.2.70", "192.0.2.8", "192.0.2.80"]


@pytest.mark.parametrize("mode", ["write", "skip"])
def test_ipv6_shared_keys_replayed_through_postmap(site, mode):
    site.append(*(dovecot_login(NOW - 10, ip) for ip in STORED))
    cli(site, f"--ipv6-shared-keys={mode}")
    stored = set(pb.read_map(str(site.map), "hash", str(site.conf)))
    clients = [pb.normalise_ip(c) for c in CLIENTS]
    assert clients == [c.replace("::ffff:", "") for c in CLIENTS]     # already canonical
    hits = relays(site, clients)
    # Every relay comes from a stored key, and only stored full addresses.
    assert set(hits.values()) <= stored
    assert all(pb.normalise_ip(k) == k for k in stored)
    others = {c: k for c, k in hits.items() if c != k}                # a neighbour's key
    if mode == "write":
        assert stored == {pb.normalise_ip(ip) for ip in STORED}
        # The documented limitation, exactly: keys with '::' inside are hit
        # by the clients that extend them by more groups.
        assert others == {"2001:db8::1:5": "2001:db8::1", "2001:db8::1:5:6": "2001:db8::1",
                          "2001:db8:5::a:b:c": "2001:db8:5::a:b", "fe80::5:1": "fe80::5"}
        assert all(pb.shares_ipv6_key(k) for k in others.values())
    else:
        # skip: no client relays through another's key, and the keys that
        # could be shared are not written (those clients cannot relay).
        assert others == {}
        assert not any(pb.shares_ipv6_key(k) for k in stored)
        assert {c for c in clients if c in hits} == stored
    # IPv4 keys are never shortened ones: 192.0.2.70 does not relay via 192.0.2.7.
    assert "192.0.2.70" not in hits and "192.0.2.80" not in hits


###############################################################################
# The model-based test ########################################################
###############################################################################

SM_GRACE = 300
SM_MODES = ["create", "compress", "compress-delay", "copytruncate", "dateext-s",
            "copytruncate-compress"]
SM_IPS = ([f"198.18.9.{i}" for i in range(1, 9)] +
          [f"2001:db8:9::{i:x}" for i in range(1, 5)])


class PbsmtpMachine(RuleBasedStateMachine):
    """Steps: a login, noise, a real logrotate in any mode (with a daemon
    that writes late lines to the renamed file until the next rotation), a
    run, a run killed by SIGKILL partway, the clock moving on. After every
    completed run the map equals the model: each address whose newest
    login lies within the grace window, with that login's time.

    File modification times follow the model's clock (every file a step
    changed is stamped with it), as they would on a real system."""

    @initialize()
    def setup(self):
        self.dir = tempfile.TemporaryDirectory()
        root = Path(self.dir.name)
        os.chmod(root, 0o700)
        self.site = Site(root)
        self.model = Model(grace=SM_GRACE)
        self.now = int(time.time())
        self.daemon = None                 # a file object on the renamed log
        self.lost = set()                  # logins written where no one can read them
        self.lrstate = root / "lr.state"
        self.half = ""                     # the rest of a half-written line

    def teardown(self):
        if getattr(self, "daemon", None):
            self.daemon.close()
        if getattr(self, "dir", None):
            self.dir.cleanup()

    # -- keeping file times on the model's clock ------------------------------
    def _files(self):
        out = {}
        for p in Path(self.dir.name).iterdir():
            if p.name.startswith("mail.log"):
                st_ = p.stat()
                out[st_.st_ino] = (p, st_.st_size, st_.st_mtime_ns)
        return out

    def _stamp(self, before):
        for ino, (p, size, mtime) in self._files().items():
            if ino not in before or before[ino][1:] != (size, mtime):
                os.utime(p, (self.now, self.now))

    def _write(self, text: str, late=False):
        before = self._files()
        if self.half and not late:         # the daemon finishes its line first
            text, self.half = self.half + text, ""
            self.model.login("198.18.9.200", self.half_when)
        if late:
            self.daemon.write(text)
            self.daemon.flush()
        else:
            with open(self.site.log, "a") as f:
                f.write(text)
        self._stamp(before)

    # -- rules ----------------------------------------------------------------
    @rule(ip=st.sampled_from(SM_IPS), ago=st.integers(0, 20), late=st.booleans())
    def login(self, ip, ago, late):
        late = late and self.daemon is not None
        when = self.now - ago
        self._write(dovecot_login(when, ip), late=late)
        self.model.login(ip, when)

    @rule(kind=st.sampled_from(["noise", "failure", "garbage", "half"]))
    def noise(self, kind):
        if kind == "noise":
            self._write(noise(self.now))
        elif kind == "failure":
            self._write(dovecot_failure(self.now, "203.0.113.99"))
        elif kind == "garbage":
            self._write("\x00\xff garbage \r" + dovecot_login(self.now, "203.0.113.98"))
        elif not self.half:   # half a line now; the daemon finishes it later
            line = dovecot_login(self.now, "198.18.9.200")
            self._write(line[:70])
            self.half, self.half_when = line[70:], self.now

    @rule(mode=st.sampled_from(SM_MODES))
    def rotate(self, mode):
        if self.half:
            self._write("")
        if self.daemon:                    # it reopened its log after the last one
            self.daemon.close()
            self.daemon = None
        hold = mode in LATE_WRITES
        daemon = open(self.site.log, "a") if hold else None
        before = self._files()
        logrotate(self.site.log, self.lrstate, mode, rotate=20)
        self._stamp(before)
        self.daemon = daemon

    @rule(seconds=st.integers(1, 200))
    def clock(self, seconds):
        self.now += seconds

    @rule()
    def run(self):
        result = CliRunner().invoke(pb.cli, self.site.args(f"--grace={SM_GRACE}",
                                                           now=self.now))
        assert result.exit_code == 0, (result.stdout, result.stderr)
        got = pb.read_map(str(self.site.map), "hash", str(self.site.conf))
        assert got == self.model.expected(self.now)

    @rule(at=st.integers(1, 60))
    def crashed_run(self, at):
        cmd = [sys.executable, "-c", KILL_AT_EVENT,
               *self.site.args(f"--grace={SM_GRACE}", now=self.now)]
        subprocess.run(cmd, env={**os.environ, "PBSMTP_KILL_AT": str(at)},
                       capture_output=True)
        dump(self.site)                    # whatever happened, postmap reads the map


@pytest.mark.slow
def test_state_machine(postmap):
    run_machine = PbsmtpMachine.TestCase
    run_machine.settings = settings(PROFILE, max_examples=25, stateful_step_count=15)
    run_machine().runTest()
