"""What every test module shares: the markers' check (unit, tools, live),
real Postfix tools or a skip that names the package (a failure with CI=true),
a fixed clock, log lines, the Site fixtures (site, lab, nobody_site,
admin_dir), Hypothesis's profile, and the daemon tests' rsyslog harness.

Helpers that are no fixtures live in helper modules beside this one (a test
module never imports another test module): runs.py (runs of the CLI and
what they leave), rotation.py (the real logrotate), daemons.py (daemons and
their clients, plain Python), logins.py (raw POP/IMAP logins and what the
patterns find), relay.py (Postfix deciding relay), journal.py (journal
files written by systemd's own tools), debs.py (the packages unpacked with
apt-get download), upstreams.py (stand-in IMAP/POP3 servers).
"""

import codecs
import json
import os
import pwd
import shutil
import subprocess
import sysconfig
import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

import daemons  # tests/daemons.py
import pbsmtp_batch as pb

# Runs in tests, in-process or as child processes, never send their run line
# to the host's /dev/log (a test that checks the line passes --syslog).
os.environ["PBSMTP_SYSLOG"] = "0"

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def unavailable(message: str) -> None:
    """What the test needs is not on this machine: a skip, and with CI=true a
    failure (a skipped suite would hide a missing install step)."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require(tool: str, package: str = "postfix") -> str:
    """The path of a real program the test needs, from the named Debian
    package (see unavailable)."""
    found = shutil.which(tool, path=SBIN)
    if found:
        return found
    unavailable(f"{tool} is not installed (Debian: apt-get install {package})")


@pytest.fixture
def postmap() -> str:
    return require("postmap")


def require_map_type(map_type: str) -> None:
    """A Postfix map type the test needs: a skip outside CI when this Postfix
    lacks it (lmdb and cdb are packages of their own), a failure in CI."""
    if map_type not in daemons.supported_map_types():
        unavailable(f"Postfix has no {map_type} map support "
                    f"(Debian: apt-get install {daemons.map_package(map_type)})")


# What a test needs to run: each test has exactly one of these markers
# (module-level pytestmark where a file's tests agree), so `-m unit` runs on a
# machine with nothing but Python, and a new test cannot leave it unsaid.
KINDS = ("unit", "tools", "live")


@pytest.hookimpl(tryfirst=True)          # before -m deselects anything
def pytest_collection_modifyitems(config, items):
    wrong = []
    for item in items:
        kinds = sorted({m.name for m in item.iter_markers() if m.name in KINDS})
        if len(kinds) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(kinds) or 'none'}")
    if wrong:
        raise pytest.UsageError(f"each test needs exactly one of the markers {', '.join(KINDS)} "
                                f"(e.g. pytestmark = pytest.mark.unit):\n" + "\n".join(wrong))


# Hypothesis runs with a fixed seed (derandomize) so that CI is repeatable;
# PBSMTP_HYPOTHESIS=thorough searches longer.
settings.register_profile("pbsmtp-ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("pbsmtp-thorough", parent=settings.get_profile("pbsmtp-ci"),
                          derandomize=False, max_examples=1000)
PROFILE = settings.get_profile("pbsmtp-" + os.environ.get("PBSMTP_HYPOTHESIS", "ci"))


def budget(examples: int) -> settings:
    """The profile, with this many examples unless the profile asks for more."""
    return settings(PROFILE, max_examples=max(examples, PROFILE.max_examples
                                              if PROFILE.derandomize is False else 0))


# A fixed "now" for every test: 2026-11-24 23:30:00 UTC.
NOW = 1795563000


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Log times without a zone are local: pin the zone so tests are repeatable."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def syslog_time(epoch: float) -> str:
    """RFC 3164 time of an epoch, in the (pinned UTC) local zone."""
    t = time.localtime(epoch)
    return time.strftime("%b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S", t)


def dovecot_login(epoch: float, ip: str, user: str = "alice", proto: str = "imap") -> str:
    return (f"{syslog_time(epoch)} mail dovecot: {proto}-login: Login: user=<{user}>, "
            f"method=PLAIN, rip={ip}, lip=192.0.2.1, mpid=4242, TLS\n")


def dovecot_failure(epoch: float, ip: str, user: str = "mallory") -> str:
    return (f"{syslog_time(epoch)} mail dovecot: imap-login: Disconnected (auth failed, "
            f"1 attempts in 2 secs): user=<{user}>, method=PLAIN, rip={ip}, lip=192.0.2.1, "
            f"session=<AbCdEf012346>\n")


def noise(epoch: float) -> str:
    return (f"{syslog_time(epoch)} mail postfix/smtpd[3131]: connect from "
            f"unknown[198.51.100.77]\n")


def two_line_attack(program, address, unreadable, success, pid=4242):
    """The attacker connects and never logs in; later a real user's session
    gets the same PID, with an address line no pattern reads, and logs in."""
    return [f"{syslog_time(NOW - 300)} mail {program}[{pid}]: {address.format(ip='203.0.113.66')}\n",
            f"{syslog_time(NOW - 100)} mail {program}[{pid}]: {unreadable}\n",
            f"{syslog_time(NOW - 99)} mail {program}[{pid}]: {success}\n"]


def write_main_cf(conf, text: str) -> None:
    """Write a Postfix main.cf dated a minute back: Postfix's config reader
    waits about 1.5 s for a main.cf changed within the last second to settle."""
    path = conf / "main.cf"
    path.write_text(text)
    os.utime(path, (time.time() - 60, time.time() - 60))


class Site:
    """A private layout: log, map, state dir and a Postfix config dir whose
    mynetworks is only 127.0.0.1, so test clients in documentation ranges
    are not filtered."""

    def __init__(self, root):
        self.root = root
        self.log = root / "mail.log"
        self.map = root / "postfix" / "pop-before-smtp"
        self.state = root / "state"
        self.conf = root / "postfix-conf"
        self.map.parent.mkdir()
        self.conf.mkdir()
        write_main_cf(self.conf, "mynetworks = 127.0.0.1/32 [::1]/128\n")
        (self.conf / "master.cf").write_text("")
        self.log.write_text("")

    def args(self, *extra, now=NOW, map_type="hash"):
        return [f"--logfile={self.log}", f"--dbfile={self.map}", f"--state-dir={self.state}",
                f"--postfix-config={self.conf}", f"--map-type={map_type}", f"--now={now}",
                *extra]

    def append(self, *lines):
        with open(self.log, "a") as f:
            f.writelines(lines)


@pytest.fixture
def site(tmp_path, postmap):
    return Site(tmp_path)


@pytest.fixture
def lab(tmp_path, postmap):
    """A rotation.Lab: a site that checks every run against the logins it logged."""
    from rotation import Lab      # rotation.py builds on this module's Site
    return Lab(tmp_path)


@pytest.fixture
def admin_dir(tmp_path, monkeypatch):
    """The admin's overlay directory, pointed at a temp dir in-process only."""
    path = tmp_path / "admin-patterns"
    monkeypatch.setattr(pb, "ADMIN_PATTERNS_DIR", str(path))
    return path


@pytest.fixture
def nobody_site(site):
    """The site, world-traversable, for runs as an unprivileged user (root
    can read and write everything, so only such a run shows these errors)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    # The child is forked from this process: load what the run loads lazily
    # (a codec, sysconfig's data) now, in case this Python's stdlib is in a
    # directory that nobody cannot read (pyenv under /root).
    codecs.lookup("latin-1")
    sysconfig.get_config_vars()
    # The checkout may sit where nobody cannot look (a clone in /root, mode
    # 0700): the child reads a world-readable copy of the patterns.
    patterns = site.root / "patterns"
    shutil.copytree(pb.shipped_patterns_dir(), patterns)
    site.patterns = patterns
    path = site.root
    os.chmod(path, 0o755)                  # like /var/log: listable, for rotated files
    while str(path) != "/":
        os.chmod(path, os.stat(path).st_mode | 0o711)
        path = path.parent
    return site


def run_as_nobody(site, *args):
    """Run the CLI on the site in a forked child that has dropped to nobody;
    returns (exit code, stderr)."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = CliRunner().invoke(pb.cli, [f"--patterns-dir={site.patterns}", *args])
            os.write(write_end, json.dumps([result.exit_code, result.stderr]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        data = f.read()
    os.waitpid(pid, 0)
    exit_code, stderr = json.loads(data)
    return exit_code, stderr


###############################################################################
# The daemon tests' harness: a private rsyslogd ###############################
###############################################################################

def require_harness():
    """What the daemon tests need to run unpacked servers under a private rsyslogd."""
    if os.geteuid() != 0:
        unavailable("needs root (private mount namespace, daemons that drop privileges)")
    packages = {"rsyslogd": "rsyslog", "unshare": "util-linux", "mount": "mount",
                "apt-get": "apt", "dpkg": "dpkg"}
    missing = daemons.missing_binaries(packages)
    if missing:
        unavailable(f"missing programs: {', '.join(missing)} (Debian: apt-get install "
                    f"{' '.join(dict.fromkeys(packages[m] for m in missing))})")


# Every maillog format an admin may have: Debian 12's default (RFC 3339), the
# traditional RFC 3164 one, and RFC 5424 (where rsyslog cuts Cyrus's
# "cyrus/imap" tag to the app name "cyrus", seen live with Debian 12's
# Cyrus 3.6 and rsyslog).
TEMPLATES = [
    daemons.RFC3339,
    daemons.TRADITIONAL,
    # rsyslog's RFC 5424 template writes "... cyrus 4101 - -  login: ..." (two
    # blanks: the legacy message keeps the blank after "tag:").
    "RSYSLOG_SyslogProtocol23Format",
]


@pytest.fixture(params=TEMPLATES)
def harness(request):
    """A private rsyslogd writing the maillog in one of TEMPLATES, and its work directory."""
    require_harness()
    workdir = daemons.make_workdir("pbsmtp-logins-")
    rsyslog = daemons.Rsyslog(workdir, template=request.param)
    try:
        rsyslog.start()
        yield workdir, rsyslog
    finally:
        rsyslog.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(path, size): a small tmpfs on path, unmounted afterwards."""
    mounted = []

    def mount(path, size):
        path.mkdir(exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                               str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def memcached():
    """A private memcached on 127.0.0.1 for the module's tests: HOST:PORT."""
    binary = require("memcached", "memcached")
    workdir = daemons.make_workdir("pbsmtp-mc-")
    port = daemons.free_port()
    proc = None
    try:
        proc = daemons.start_process([binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                                      "-t", "1", "-m", "16", "-u", "nobody"],
                                     os.path.join(workdir, "memcached.log"))
        daemons.wait_for_port("127.0.0.1", port, proc.pid)
        yield f"127.0.0.1:{port}"
    finally:
        daemons.stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)
