"""Runs of the CLI in the tests, and what they leave behind: shared by the
test modules (the fixtures are in conftest.py)."""

import json
import os
import subprocess

from click.testing import CliRunner

import pbsmtp_batch as pb


def invoke(*args, env=None, input=None):
    """The CLI in-process, as click's runner sees it (an exception is raised)."""
    return CliRunner().invoke(pb.cli, list(args), env=env, input=input, catch_exceptions=False)


def run_ok(*args, env=None):
    result = invoke(*args, env=env)
    assert (result.exit_code, result.output) == (0, ""), result.output
    return result


def listed(site, *backend_args, now=None):
    args = [f"--dbfile={site.map}", *backend_args, f"--postfix-config={site.conf}", "--list",
            "--json"]
    if now is not None:
        args.append(f"--now={now}")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return {row["ip"]: row["login"] for row in json.loads(result.output)}


def local_args(site, *extra, grace=None):
    """Like Site.args, but on the real clock (for stores whose readers use it)."""
    args = [f"--logfile={site.log}", f"--dbfile={site.map}", f"--state-dir={site.state}",
            f"--postfix-config={site.conf}", *extra]
    if grace is not None:
        args.append(f"--grace={grace}")
    return args


def query(site, ip, map_type="hash"):
    """What a Postfix lookup (postmap -q) of this key in the site's map
    returns: the value, or None."""
    done = subprocess.run([pb.find_tool("postmap"), "-c", str(site.conf), "-q", ip,
                           f"{map_type}:{site.map}"], capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.strip() if done.returncode == 0 else None


def snapshot(site, *ignore):
    """Every file of the map and the state, byte for byte (but the lock files
    and the names in *ignore*)."""
    files = {}
    for directory in (site.map.parent, site.state):
        if directory.exists():
            for path in sorted(directory.iterdir()):
                if path.is_file() and path.name not in ("lock", pb.MAP_LOCK, *ignore):
                    files[str(path)] = path.read_bytes()
    return files


def fill(directory):
    """Fill the file system of directory; returns the filler to remove."""
    filler = directory / ".filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    return filler


class Model:
    """Every login written, and what the map must hold at a given time."""

    def __init__(self, grace):
        self.grace = grace
        self.newest: dict[str, int] = {}

    def login(self, ip, when):
        self.newest[ip] = max(when, self.newest.get(ip, 0))

    def expected(self, now) -> dict[str, str]:
        return {ip: str(min(t, int(now))) for ip, t in self.newest.items()
                if min(t, int(now)) >= now - self.grace}


def dump(site) -> bytes | None:
    """``postmap -s`` of the map, as Postfix's own tool reads it (None: no map)."""
    if not os.path.exists(f"{site.map}.db"):
        return None
    done = subprocess.run([pb.find_tool("postmap"), "-c", str(site.conf), "-s",
                           f"hash:{site.map}"], capture_output=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


# Runs the CLI and kills itself with SIGKILL at the Nth file-system or
# process event of the run (Python's audit events: open, rename, replace,
# unlink, chmod, flock, subprocess...), counted from after the import. With
# N = 0 it runs to the end and prints how many events there were.
KILL_AT_EVENT = r"""
import os, signal, sys
at = int(os.environ["PBSMTP_KILL_AT"])
EVENTS = {"open", "os.rename", "os.replace", "os.remove", "os.unlink", "os.chmod",
          "os.chown", "os.listdir", "os.scandir", "os.mkdir", "os.truncate",
          "fcntl.flock", "subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec"}
count = 0
armed = False
def hook(event, args):
    global count
    if armed and event in EVENTS:
        count += 1
        if count == at:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
import pbsmtp_batch
armed = True
sys.argv[0] = "pbsmtp-batch"
try:
    pbsmtp_batch.main()
finally:
    if at == 0:
        os.write(2, f"EVENTS {count}\n".encode())
"""
