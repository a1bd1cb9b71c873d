"""The idle run: exits before click, the patterns and postconf are loaded,
only when a full run would change nothing and print nothing."""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login, noise

pytestmark = pytest.mark.tools

REPO = Path(__file__).resolve().parent.parent

# Runs the module as the command does: with argv[0] "pbsmtp-batch", imported.
# Prints whether the idle exit was taken (click was never imported).
AS_COMMAND = r"""
import sys
sys.argv[:] = ["pbsmtp-batch", *sys.argv[1:]]
try:
    import pbsmtp_batch
except SystemExit as e:
    print("IDLE" if "click" not in sys.modules and e.code == 0 else f"EXIT {e.code}")
    raise SystemExit(0)
pbsmtp_batch.main()
"""


def command(site, *args, env=None, now=NOW):
    extra = {"TZ": "UTC", **(env or {})}
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("PBSMTP_") and k != "MAIL_CONFIG"}
    return subprocess.run([sys.executable, "-c", AS_COMMAND, *site.args(now=now), *args],
                          capture_output=True, text=True, cwd=REPO, env={**environ, **extra},
                          timeout=120)


def idle(site, *args, **kw):
    done = command(site, *args, **kw)
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout == "IDLE\n"


@pytest.fixture
def quiet(site):
    """A site after one run that read everything there is."""
    site.append(noise(NOW - 30), dovecot_login(NOW - 20, "192.0.2.30"))
    done = command(site)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done
    return site


def entries(site):
    return pb.read_map(str(site.map), "hash", str(site.conf))


def test_idle_run_exits_early_and_changes_nothing(quiet):
    before = entries(quiet), sorted(p.name for p in quiet.state.iterdir())
    assert idle(quiet)
    assert (entries(quiet), sorted(p.name for p in quiet.state.iterdir())) == before


def test_a_new_line_means_a_full_run(quiet):
    quiet.append(dovecot_login(NOW - 5, "192.0.2.31"))
    assert not idle(quiet)
    assert entries(quiet)["192.0.2.31"] == str(NOW - 5)
    assert idle(quiet)                                  # and quiet again


def test_a_line_of_the_same_length_rewritten_means_a_full_run(quiet):
    """Same inode and size, but written after the offset was committed
    (copytruncate, then the same number of bytes)."""
    data = quiet.log.read_bytes()
    line = dovecot_login(NOW - 4, "192.0.2.32").encode()
    os.utime(quiet.state / next(p.name for p in quiet.state.iterdir()
                                if p.name.endswith(".offset")), ns=(0, 0))
    quiet.log.write_bytes(data[:len(data) - len(line)] + line)
    assert len(quiet.log.read_bytes()) == len(data)
    done = command(quiet)
    assert done.returncode == 0 and "IDLE" not in done.stdout, done


def test_due_expiry_means_a_full_run(quiet):
    assert not idle(quiet, now=NOW + 1800)
    assert entries(quiet) == {}


@pytest.mark.parametrize("args, env", [
    (["-v"], {}),
    (["--dry-run"], {}),
    (["--grace=900"], {}),
    (["--reprocess"], {}),
    ([], {"PBSMTP_GRACE": "1800"}),
    ([], {"MAIL_CONFIG": "/nonexistent"}),
])
def test_options_that_matter_mean_a_full_run(quiet, args, env):
    done = command(quiet, *args, env=env)
    assert "IDLE" not in done.stdout


def test_a_changed_map_means_a_full_run(quiet):
    pb.write_map(str(quiet.map), "hash", {"192.0.2.30": NOW - 20, "192.0.2.99": NOW - 1},
                 str(quiet.conf))
    assert not idle(quiet)


def test_a_held_lock_means_a_full_run(quiet):
    with open(quiet.state / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        done = command(quiet, "-v")
        assert "another run holds the lock" in done.stdout
        assert not idle(quiet)


def test_a_state_directory_others_can_write_means_a_full_run(quiet):
    os.chmod(quiet.state, 0o777)
    try:
        assert "IDLE" not in command(quiet).stdout
    finally:
        os.chmod(quiet.state, 0o750)


def test_a_map_cache_without_the_map_path_means_a_full_run(quiet):
    mark = next(p for p in quiet.state.iterdir() if p.name.endswith(".map"))
    data = json.loads(mark.read_text())
    del data["map"]
    mark.write_text(json.dumps(data))
    assert not idle(quiet)


def test_a_rotated_log_means_a_full_run(quiet):
    os.rename(quiet.log, f"{quiet.log}.1")
    quiet.log.write_text("")
    quiet.append(dovecot_login(NOW - 3, "192.0.2.33"))
    assert not idle(quiet)
    assert entries(quiet)["192.0.2.33"] == str(NOW - 3)
