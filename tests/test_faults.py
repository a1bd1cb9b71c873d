"""Crashes and faults: SIGKILL at random points, a full disk, a failed
write, permissions, overlapping runs, and offset files that cannot be trusted.

The reference for "what a run without a crash would have given" is a model:
the newest login time of every address whose newest login lies inside the
grace window (``Model``). Runs that are killed or fail are real processes
(``sys.executable -m pbsmtp_batch``); the runs that must succeed are run
in-process through click's CliRunner, which is faster.
"""

import json
import os
import random
import re
import resource
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login, noise, run_as_nobody
from runs import KILL_AT_EVENT, Model, dump, fill, snapshot

pytestmark = pytest.mark.tools

GRACE = 600


def entries(site) -> dict[str, str]:
    return pb.read_map(str(site.map), "hash", str(site.conf))


def offset_file(site) -> str:
    return pb.offset_path(str(site.state), str(site.log))


def committed(site):
    """The committed offset state; a present offset file must be valid."""
    state, problem = pb.load_offset(offset_file(site))
    assert problem is None, problem
    return state


def cli(site, *extra, now=NOW, grace=GRACE):
    result = CliRunner().invoke(pb.cli, site.args(f"--grace={grace}", "-v", *extra, now=now))
    return result


def ok_run(site, *extra, now=NOW, grace=GRACE):
    result = cli(site, *extra, now=now, grace=grace)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def argv(site, *extra, now=NOW, grace=GRACE):
    return [sys.executable, "-m", "pbsmtp_batch",
            *site.args(f"--grace={grace}", *extra, now=now)]


###############################################################################
# SIGKILL at random points ####################################################
###############################################################################

def killed_run(site, now, *, at_event=None, after=None):
    """One run, killed at an audit event, or after a delay (in seconds);
    returns the exit status."""
    cmd = argv(site, now=now)
    if at_event is not None:
        cmd[1:3] = ["-c", KILL_AT_EVENT]
        env = {**os.environ, "PBSMTP_KILL_AT": str(at_event)}
        return subprocess.run(cmd, env=env, capture_output=True, text=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    proc.kill()
    proc.wait()
    return proc


def count_events(site, now):
    done = killed_run(site, now, at_event=0)
    assert done.returncode == 0, done.stderr
    return int(re.search(r"EVENTS (\d+)", done.stderr)[1])


@pytest.mark.slow
def test_sigkill_at_random_points_never_tears_the_map_and_the_next_run_catches_up(site):
    """120 trials (fixed seed): 80 killed at a random audit event of the run
    (every open, rename, unlink and subprocess start is a possible point;
    half of them drawn from the last third, where the map and the offset
    are written),
    40 after a random delay drawn from a run's measured duration (which also
    kills it while postmap is running). After each kill, postmap -s reads the
    map, and the map is either the one before the run or the one the run
    would have written; the offset file is valid. The next run brings the
    map to exactly the model's content and the offset to the log's end."""
    rng = random.Random(4)
    model, serial = Model(GRACE), 0

    def add_lines(now):
        nonlocal serial
        lines = []
        for _ in range(rng.randint(1, 4)):
            if model.newest and rng.random() < 0.3:
                ip = rng.choice(sorted(model.newest))        # a login again
            else:
                serial += 1
                ip = (f"2001:db8:7::{serial:x}" if serial % 4 == 0 else
                      f"198.18.{serial // 200}.{serial % 200 + 1}")
            when = now - rng.randint(0, 30)
            model.login(ip, when)
            lines += [noise(when), dovecot_login(when, ip)]
        site.append(*lines)

    # Calibrate: how many events, and how long, a run with a few new lines takes.
    add_lines(NOW)
    ok_run(site)
    add_lines(NOW)
    n_events = count_events(site, NOW)        # an incremental run, run to the end
    durations = []
    for k in range(3):
        add_lines(NOW + k + 1)
        start = time.monotonic()
        subprocess.run(argv(site, now=NOW + k + 1), check=True)
        durations.append(time.monotonic() - start)
    duration = sorted(durations)[1]
    assert entries(site) == model.expected(NOW + 3)

    kinds = ["event"] * 80 + ["time"] * 40
    rng.shuffle(kinds)
    outcomes = {"old map": 0, "new map": 0}
    for trial, kind in enumerate(kinds):
        now = NOW + 10 + 20 * trial                        # entries expire as it goes
        add_lines(now)
        before = dump(site)
        if kind == "event":
            # Half of them anywhere, half in the last third, where the map
            # and the offset are written.
            first = 1 if trial % 2 else n_events * 2 // 3
            done = killed_run(site, now, at_event=rng.randint(first, n_events))
        else:
            done = killed_run(site, now, after=rng.uniform(0, duration))
        after = dump(site)
        committed(site)
        # The published map is whole: the old one, or the complete new one.
        if after != before:
            outcomes["new map"] += 1
            parsed = dict(line.split(None, 1) for line in after.decode().splitlines())
            assert parsed == model.expected(now), (trial, kind)
        else:
            outcomes["old map"] += 1
        ok_run(site, now=now)
        assert entries(site) == model.expected(now), (trial, kind, done)
        assert committed(site).current.offset == site.log.stat().st_size
    # The trials did hit both sides of the rename.
    assert outcomes["old map"] > 10 and outcomes["new map"] > 5, outcomes
    assert len(model.newest) > 100


def test_sigkill_leftovers_are_cleaned_up_by_the_next_run(site):
    """A kill at each event of a run, from the last one back: the next run
    leaves nothing but the map in the map directory (no temporary map files
    of the killed run)."""
    site.append(dovecot_login(NOW - 5, "192.0.2.10"))
    n = count_events(site, NOW)
    for at in range(n, max(0, n - 30), -1):     # the files are written near the end
        site.append(dovecot_login(NOW - 4, f"192.0.2.{at % 200 + 11}"))
        killed_run(site, NOW, at_event=at)
        ok_run(site)
        assert [p.name for p in site.map.parent.iterdir()] == ["pop-before-smtp.db"]
        assert not [p.name for p in site.state.iterdir() if p.name.startswith(".")]


###############################################################################
# A full disk, a failed write #################################################
###############################################################################

def logins(site, model, n, start, when=NOW - 5):
    lines = []
    for i in range(start, start + n):
        ip = f"198.18.{i // 200}.{i % 200 + 1}"
        model.login(ip, when)
        lines.append(dovecot_login(when, ip))
    site.append(*lines)


def test_full_map_file_system(site, tmpfs):
    tmpfs(site.map.parent, "256k")
    model = Model(GRACE)
    logins(site, model, 50, 0)
    ok_run(site)
    filler = fill(site.map.parent)
    logins(site, model, 400, 50)
    before = snapshot(site, ".filler")
    done = subprocess.run(argv(site), capture_output=True, text=True)
    assert done.returncode == 1, done
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr == f"Error: cannot write map {site.map}.db: No space left on device\n"
    assert snapshot(site, ".filler") == before
    assert dump(site) is not None
    filler.unlink()
    ok_run(site)
    assert entries(site) == model.expected(NOW)


def test_full_state_file_system_on_an_incremental_run(site, tmpfs):
    tmpfs(site.state, "64k")
    model = Model(GRACE)
    logins(site, model, 5, 0)
    ok_run(site)
    filler = fill(site.state)
    logins(site, model, 5, 5)
    before = snapshot(site, ".filler")
    done = subprocess.run(argv(site), capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: cannot write ") and "No space left" in done.stderr
    assert done.stderr.count("\n") == 1
    assert snapshot(site, ".filler") == before
    filler.unlink()
    ok_run(site)
    assert entries(site) == model.expected(NOW)


def test_full_state_file_system_on_a_first_run(site, tmpfs):
    """A first run (no scratch file) whose state directory is full: the map
    is not touched either (the state is staged before the map is
    published); once there is room, the next run converges."""
    tmpfs(site.state, "64k")
    model = Model(GRACE)
    logins(site, model, 5, 0)
    filler = fill(site.state)
    before = snapshot(site, ".filler")
    done = subprocess.run(argv(site), capture_output=True, text=True)
    try:
        assert done.returncode == 1 and done.stderr.startswith("Error: cannot write ")
        assert str(site.state) in done.stderr and "No space left on device" in done.stderr
        assert done.stderr.count("\n") == 1
        assert snapshot(site, ".filler") == before
    finally:
        filler.unlink()
    ok_run(site)
    assert entries(site) == model.expected(NOW)
    assert committed(site).current.offset == site.log.stat().st_size


def limit_file_size(nbytes):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return preexec


@pytest.mark.parametrize("who, new, message", [
    ("the run's own write", 1000, "cannot write map {map}.db: File too large"),
    ("postmap's write", 420, "building map {map}.db (postmap) failed: "),
])
def test_failed_write_rlimit_fsize(site, who, new, message):
    """RLIMIT_FSIZE of 16 KiB: the run's text source, or only the database
    that postmap (which inherits the limit) builds, cannot be written. The
    run reports it, exits 1, changes nothing; then it catches up."""
    model = Model(GRACE)
    logins(site, model, 20, 0)
    ok_run(site)
    logins(site, model, new, 20)
    before = snapshot(site, ".filler")
    done = subprocess.run(argv(site), capture_output=True, text=True,
                          preexec_fn=limit_file_size(16384))
    assert done.returncode == 1, done
    assert done.stderr.startswith("Error: " + message.format(map=site.map)), done.stderr
    assert done.stderr.count("\n") == 1
    assert snapshot(site, ".filler") == before
    ok_run(site)
    assert entries(site) == model.expected(NOW)


###############################################################################
# Permissions: the same, and the next run catches up ##########################
###############################################################################

def test_unwritable_map_dir_unreadable_log_then_catch_up(nobody_site):
    site, model = nobody_site, Model(GRACE)
    logins(site, model, 2, 0)
    ok_run(site)
    # The state directory must be the running user's own (and not writable
    # by others): hand it to nobody.
    for p in (site.state, *site.state.iterdir()):
        os.chown(p, 65534, 65534)
    logins(site, model, 2, 2)
    before = snapshot(site, ".filler")
    code, err = run_as_nobody(site, *site.args())
    assert (code, err) == (1, f"Error: cannot write map directory {site.map.parent}\n")
    assert snapshot(site, ".filler") == before
    os.chmod(site.map.parent, 0o777)
    os.chmod(site.log, 0o600)
    assert run_as_nobody(site, *site.args())[0] == 1
    assert snapshot(site, ".filler") == before
    os.chmod(site.log, 0o644)
    code, err = run_as_nobody(site, *site.args())
    # nobody cannot give the new map root's ownership: a warning, no error.
    assert code == 0 and err in ("", f"pbsmtp-batch: warning: cannot keep owner 0:0 of "  # noqa
                                     f"{site.map}.db\n"), (code, err)
    assert entries(site) == model.expected(NOW)


def test_unreadable_rotated_log(nobody_site):
    """The run must finish mail.log.1, which it cannot read: error, nothing
    changed; readable again, the next run reads the rest."""
    site, model = nobody_site, Model(GRACE)
    for d in (site.state, site.map.parent):
        d.mkdir(exist_ok=True)
    os.chmod(site.map.parent, 0o777)
    os.chown(site.state, 65534, 65534)      # the state directory is nobody's own
    logins(site, model, 2, 0)
    assert run_as_nobody(site, *site.args()) == (0, "")
    logins(site, model, 2, 2)
    os.rename(site.log, f"{site.log}.1")
    site.log.write_text("")
    os.chmod(f"{site.log}.1", 0o600)
    logins(site, model, 1, 4)
    before = snapshot(site, ".filler")
    code, err = run_as_nobody(site, *site.args())
    assert (code, err) == (1, f"Error: cannot read {site.log}.1: Permission denied\n"), err
    assert snapshot(site, ".filler") == before
    os.chmod(f"{site.log}.1", 0o644)
    assert run_as_nobody(site, *site.args()) == (0, "")
    assert entries(site) == model.expected(NOW)


###############################################################################
# Overlapping runs ############################################################
###############################################################################

def test_ten_runs_at_once_against_a_growing_log(site):
    model = Model(GRACE)
    logins(site, model, 20, 0)
    ok_run(site)
    stop = threading.Event()
    problems = []

    def writer():
        i = 1000
        while not stop.is_set():
            logins(site, model, 3, i)
            i += 3
            time.sleep(0.002)

    def reader():
        while not stop.is_set():
            try:
                dump(site)
                committed(site)
            except AssertionError as e:      # pragma: no cover - reported below
                problems.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    try:
        procs = [subprocess.Popen(argv(site, "-v"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(10)]
        results = [(p.wait(), *p.communicate()) for p in procs]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems
    locked = 0
    for code, out, err in results:
        assert (code, err) == (0, ""), (code, out, err)
        if out == "pbsmtp-batch: another run holds the lock; nothing done\n":
            locked += 1
        else:
            assert re.fullmatch(r"pbsmtp-batch: \d+ lines read, .*\n", out), out
    ok_run(site)
    assert entries(site) == model.expected(NOW)
    assert committed(site).current.offset == site.log.stat().st_size
    print(f"{locked} of 10 runs found the lock taken")


def test_a_run_that_finds_the_lock_taken_exits_zero_as_a_process(site):
    import fcntl
    site.append(dovecot_login(NOW - 5, "192.0.2.10"))
    site.state.mkdir()
    with open(site.state / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = subprocess.run(argv(site, "-v"), capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "pbsmtp-batch: another run holds the lock; nothing done\n", "")


###############################################################################
# Offset files that cannot be trusted #########################################
###############################################################################

def offset_scenario(site, text_for):
    """Two logins read; then the offset file is replaced by text_for(site);
    one more login; one run. Returns that run's result."""
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "192.0.2.11"))
    ok_run(site)
    text = text_for(site)
    with open(offset_file(site), "w") as f:
        f.write(text)
    site.append(dovecot_login(NOW - 5, "192.0.2.12"))
    result = ok_run(site)
    assert entries(site) == {"192.0.2.10": str(NOW - 60), "192.0.2.11": str(NOW - 50),
                             "192.0.2.12": str(NOW - 5)}
    assert committed(site).current.offset == site.log.stat().st_size
    return result


def lines_read(result):
    return int(re.search(r"(\d+) lines read", result.stdout)[1])


def test_empty_offset_file(site):
    result = offset_scenario(site, lambda s: "")
    assert "corrupt" in result.stderr and lines_read(result) == 3


def test_offset_file_of_pygtail_resumes_in_place(site):
    def pygtail_format(s):
        two_lines = len(dovecot_login(NOW - 60, "192.0.2.10") +
                        dovecot_login(NOW - 50, "192.0.2.11"))
        return f"{s.log.stat().st_ino}\n{two_lines}\n"
    result = offset_scenario(site, pygtail_format)
    assert result.stderr == "" and lines_read(result) == 1


def test_offset_file_of_pygtail_for_another_file(site):
    result = offset_scenario(site, lambda s: f"{s.log.stat().st_ino + 12345}\n10\n")
    assert "re-reading the grace window" in result.stderr and lines_read(result) == 3


def test_offset_file_of_another_tool(site):
    result = offset_scenario(site, lambda s: json.dumps({"file": str(s.log), "pos": 3}))
    assert "corrupt" in result.stderr and lines_read(result) == 3


@pytest.mark.parametrize("fmt", ["json", "pygtail"])
def test_offset_past_the_end_of_the_file(site, fmt):
    def past_end(s):
        state = committed(s)
        size = s.log.stat().st_size + 10_000
        if fmt == "pygtail":
            return f"{state.current.inode}\n{size}\n"
        return json.dumps({"inode": state.current.inode, "offset": size,
                           "fingerprint": state.current.fingerprint,
                           "length": state.current.length})
    result = offset_scenario(site, past_end)
    assert "re-reading the grace window" in result.stderr and lines_read(result) == 3


def test_offset_file_with_binary_garbage(site):
    result = offset_scenario(site, lambda s: "\x00\xff{\"inode\": \x01")
    assert "corrupt" in result.stderr and lines_read(result) == 3
