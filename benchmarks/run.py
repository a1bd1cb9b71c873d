#!/usr/bin/env python3
"""Benchmarks for pbsmtp-batch: one command, one table of figures.

    python3 benchmarks/run.py --quick            # small sizes, about a minute
    python3 benchmarks/run.py                    # the full run, about 10 minutes on 2 cores
    python3 benchmarks/run.py --commit HEAD --results benchmarks/RESULTS.md
                                                 # the committed module; rewrite RESULTS.md

Every timing figure is a ratio against a baseline measured in the same run,
from the medians of several repetitions:

  a  an idle run (no new lines, a 10k-entry map) against `python3 -c pass`
     and against a bare `postmap -s` + `postmap` of the same map;
  b  `--reprocess` over a 1 GB log against `grep -c -F Login` and a plain
     Python `for line in open(f, 'rb')` loop on the same file;
  w  a 100 MB log whose every line is inside the grace window, read by
     `--reprocess` and by an incremental run (the whole log appended since the
     last run), against `grep -c -F Login`;
  c  merging about 100 logins into a 300k-entry map and writing it (the state
     of the run before in place, as in steady operation), against a bare
     `postmap` build of the same entries;
  d  peak RSS of b and c (the tool alone, sampled VmHWM, and with its postmap
     children, from GNU time);
  e  latency from a login line being appended until `postmap -q` returns the
     address, in cron mode and in path-activated mode (runs started on each
     inotify IN_MODIFY of the log, as PathModified= does, and by the minute
     timer; writes during a run are dropped, as systemd drops them).

The tool is the installed ``pbsmtp-batch``. ``--commit HEAD`` measures the
module and patterns as committed instead (safe while the working tree is being
edited); PBSMTP_BATCH="python3 /path/to/pbsmtp_batch.py" runs any other copy.
It runs with a private Postfix config directory
(mynetworks = loopback only) and TZ=UTC. Stdlib only; inotify through ctypes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import random
import re
import select
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import genlog  # noqa: E402

ENV = dict(os.environ, TZ="UTC", LC_ALL="C")
GRACE = 1800
NOW = genlog.DEFAULT_NOW


###############################################################################
# Running and measuring #######################################################
###############################################################################

def tool_command() -> list[str]:
    if os.environ.get("PBSMTP_BATCH"):
        return shlex.split(os.environ["PBSMTP_BATCH"])
    for candidate in (REPO / ".venv" / "bin" / "pbsmtp-batch", shutil.which("pbsmtp-batch")):
        if candidate and os.access(candidate, os.X_OK):
            return [str(candidate)]
    return [sys.executable, str(REPO / "pbsmtp_batch.py")]


def snapshot_tool(rev: str, into: Path) -> list[str]:
    """The module and its pattern files as committed at rev, run by the tool's interpreter.

    For measuring a fixed version while the working tree is being edited.
    """
    def show(path: str) -> bytes:
        return subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True,
                              capture_output=True).stdout
    (into / "patterns").mkdir(parents=True, exist_ok=True)
    (into / "pbsmtp_batch.py").write_bytes(show("pbsmtp_batch.py"))
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}", "patterns/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        (into / name).write_bytes(show(name))
    # Run it as the console script does: a launcher named pbsmtp-batch that
    # imports the module from its compiled bytecode (pip compiles it at
    # install time), not the source compiled afresh on every run.
    python = tool_python(tool_command())
    subprocess.run([python, "-m", "py_compile", str(into / "pbsmtp_batch.py")], check=True)
    launcher = into / "pbsmtp-batch"
    launcher.write_text(f"import sys\nsys.path.insert(0, {str(into)!r})\n"
                        "from pbsmtp_batch import main\nsys.exit(main())\n")
    return [python, str(launcher)]


def tool_python(tool: list[str]) -> str:
    """The interpreter the tool runs on, for the `python3 -c pass` baseline."""
    if tool[0].endswith(("python", "python3")) or re.search(r"python[\d.]*$", tool[0]):
        return tool[0]
    try:
        first = Path(tool[0]).read_text(errors="replace").splitlines()[0]
        if first.startswith("#!"):
            return first[2:].split()[0]
    except (OSError, IndexError):
        pass
    return sys.executable


def _vmhwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


LAST_OWN_RSS = [0]


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def measure(cmd: list[str], check: bool = True, own_rss: bool = False,
            rss: bool = False) -> tuple[float, int]:
    """Wall seconds and, with rss, peak RSS (KiB) of a command and its children.

    The peak comes from GNU time's %M (wait4 on the command, which covers the
    children it waited for). Not from our own wait4: Python starts children
    with vfork(), and the kernel then charges *our* peak RSS to the child's
    ru_maxrss at exec. Output goes to a file, never /dev/null: GNU grep stops
    at the first match when its output is /dev/null. With own_rss, the
    command's own peak RSS (VmHWM, without its children) is sampled every 5 ms
    into LAST_OWN_RSS[0].
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        if rss and GNU_TIME:
            cmd = [GNU_TIME, "-f", "%M", "-o", peak.name, *cmd]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=ENV)
        sampler = None
        if own_rss:
            LAST_OWN_RSS[0] = 0
            done = threading.Event()

            def sample():
                # Under GNU time the tool is time's child: find it.
                pid = p.pid
                while not done.is_set():
                    if rss and GNU_TIME and pid == p.pid:
                        try:
                            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
                            pid = int(kids[0]) if kids else pid
                        except OSError:
                            pass
                    if pid != p.pid or not (rss and GNU_TIME):
                        LAST_OWN_RSS[0] = max(LAST_OWN_RSS[0], _vmhwm(pid))
                    done.wait(0.005)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        if sampler:
            done.set()
            sampler.join()
        p.returncode = os.waitstatus_to_exitcode(status)
        if check and p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}: "
                               f"{err.read().decode(errors='replace').strip()[-2000:]}")
        peak_kb = 0
        if rss and GNU_TIME:
            text = peak.read().strip().splitlines()
            peak_kb = int(text[-1]) if text and text[-1].isdigit() else 0
        elif rss:
            peak_kb = usage.ru_maxrss     # may include our own peak (see above)
    return seconds, peak_kb


def median(xs):
    return statistics.median(xs)


def run_tool(tool, wd, log, extra=(), now=NOW, check=True, own_rss=False):
    """Run the tool once; with own_rss, also its peak RSS with children (GNU time)."""
    cmd = [*tool, f"--logfile={log}", f"--dbfile={wd}/map/map", "--map-type=hash",
           f"--state-dir={wd}/state", f"--grace={GRACE}", f"--postfix-config={wd}/pf",
           *([f"--now={now}"] if now is not None else []), *extra]
    return measure(cmd, check=check, own_rss=own_rss, rss=own_rss)


def postmap(wd, *args) -> list[str]:
    return ["postmap", "-c", f"{wd}/pf", *args]


def map_keys(wd) -> set[str]:
    out = subprocess.run(postmap(wd, "-s", f"hash:{wd}/map/map"), capture_output=True,
                         text=True, check=True, env=ENV).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def setup_workdir(wd: Path) -> None:
    for sub in ("map", "state", "pf", "data"):
        (wd / sub).mkdir(parents=True, exist_ok=True)
    # A private Postfix config: only loopback in mynetworks, whatever the host says.
    (wd / "pf" / "main.cf").write_text("compatibility_level = 3.6\n"
                                       "mynetworks = 127.0.0.0/8 [::1]/128\n")
    (wd / "pf" / "master.cf").write_text("")


def reset_state(wd: Path, keep_map=False) -> None:
    shutil.rmtree(wd / "state", ignore_errors=True)
    (wd / "state").mkdir()
    if not keep_map:
        for f in (wd / "map").iterdir():
            f.unlink()


def entries_text(n: int, seed: int, now: float, youngest=1, oldest=GRACE - 300) -> str:
    """n distinct map entries ("ip epoch"), all inside the grace window."""
    rng = random.Random(seed)
    pool = genlog.client_pool(rng, n)
    return "".join(f"{ip} {int(now) - rng.randint(youngest, oldest)}\n" for ip in pool)


def build_map(wd: Path, text: str, name="map") -> None:
    src = wd / "map" / name
    src.write_text(text)
    subprocess.run(postmap(wd, f"hash:{src}"), check=True, env=ENV)
    src.unlink()             # no text source newer than the .db (Postfix warns)


def warm(path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def gen(path, size, fmt="rfc3164", now=NOW, span=86400, seed=1, graces=(GRACE,), pop_share=None):
    with open(path, "wb") as f:
        return genlog.generate(f, size, fmt, now, span, seed, 50000,
                               genlog.POP_SHARE if pop_share is None else pop_share, graces)


def say(msg):
    print(msg, file=sys.stderr, flush=True)


###############################################################################
# a: the idle run #############################################################
###############################################################################

def bench_idle(tool, wd: Path, reps: int, entries: int = 10000) -> dict:
    say(f"a: idle run, {entries}-entry map, {reps} reps")
    reset_state(wd)
    log = wd / "data" / "idle.log"
    gen(log, 1 << 20, span=3600)
    text = entries_text(entries, 7, NOW)
    build_map(wd, text)
    run_tool(tool, wd, log)                       # first run: reads the log, sets the offset
    before = map_keys(wd)
    mtime = os.stat(wd / "map" / "map.db").st_mtime_ns
    floor_src = wd / "data" / "floor"
    floor_src.write_text(text)
    py = tool_python(tool)
    t_tool, t_py, t_floor, t_dump, t_build, rss = [], [], [], [], [], []
    for i in range(reps):
        t, r = run_tool(tool, wd, log)
        t_tool.append(t)
        rss.append(r)
        t_py.append(measure([py, "-c", "pass"])[0])
        d = measure(postmap(wd, "-s", f"hash:{wd}/map/map"))[0]
        b = measure(postmap(wd, f"hash:{floor_src}"))[0]
        t_dump.append(d)
        t_build.append(b)
        t_floor.append(d + b)
    if map_keys(wd) != before or os.stat(wd / "map" / "map.db").st_mtime_ns != mtime:
        raise RuntimeError("an idle run changed the map")
    return {"tool_s": median(t_tool), "python_s": median(t_py), "floor_s": median(t_floor),
            "postmap_s_s": median(t_dump), "postmap_build_s": median(t_build),
            "rss_kb": max(rss), "entries": entries, "reps": reps,
            "ratio_python": median(t_tool) / median(t_py),
            "ratio_floor": median(t_tool) / median(t_floor)}


###############################################################################
# b: --reprocess over a big log ###############################################
###############################################################################

# A slow tool gets fewer repetitions, so that the full run stays well inside
# 20 minutes on 2 cores.
REPROCESS_BUDGET = 150

LOOP = "import sys\nn = 0\nfor line in open(sys.argv[1], 'rb'):\n    n += 1\nprint(n)\n"


def bench_reprocess(tool, wd: Path, size: int, reps: int, fmt="rfc3164") -> dict:
    log = wd / "data" / f"big-{fmt}.log"
    say(f"b: generating a {size / 2**20:.0f} MiB {fmt} log")
    t0 = time.perf_counter()
    manifest = gen(log, size, fmt)
    gen_s = time.perf_counter() - t0
    expected = set(manifest["in_grace"][str(GRACE)])
    warm(log)
    say(f"b: --reprocess, {reps} reps")
    t_tool, t_grep, t_loop, rss, own = [], [], [], [], []
    correct = True
    for i in range(reps):
        if i and sum(t_tool) > REPROCESS_BUDGET:
            say(f"b: {sum(t_tool):.0f} s spent, stopping after {i} repetition(s)")
            break
        reset_state(wd)
        # Sessions off: the generator draws its Dovecot session ids from a
        # pool, so its logins and end lines do not pair as a real server's
        # do, and its manifest knows only the grace window (a day's log
        # would keep the addresses of "open" sessions for --max-session).
        t, r = run_tool(tool, wd, log, ["--reprocess", "--max-session=0"], own_rss=True)
        t_tool.append(t)
        rss.append(r)
        own.append(LAST_OWN_RSS[0])
        correct &= map_keys(wd) == expected
        t_grep.append(measure(["grep", "-c", "-F", "Login", str(log)])[0])
        t_loop.append(measure([tool_python(tool), "-c", LOOP, str(log)])[0])
    log.unlink()
    return {"tool_s": median(t_tool), "grep_s": median(t_grep), "loop_s": median(t_loop),
            "rss_kb": max(rss), "own_rss_kb": max(own), "bytes": manifest["bytes"], "lines": manifest["lines"],
            "logins_in_grace": len(expected), "correct": correct, "gen_s": gen_s,
            "format": fmt, "ratio_grep": median(t_tool) / median(t_grep), "reps": len(t_tool),
            "ratio_loop": median(t_tool) / median(t_loop),
            "mb_per_s": manifest["bytes"] / 2**20 / median(t_tool),
            "lines_per_s": manifest["lines"] / median(t_tool)}


def bench_window(tool, wd: Path, size: int, reps: int) -> dict:
    """A log whose every line is inside the grace window (a busy server's
    incremental run, --check-patterns, a first run on a short log): read by
    --reprocess, and appended whole since the last run (the incremental
    path), each against `grep -c -F Login` on the same bytes."""
    log = wd / "data" / "window.log"
    big = wd / "data" / "window.src"
    say(f"b2: generating a {size / 2**20:.0f} MiB log, every line inside the window")
    manifest = gen(big, size, span=GRACE - 120, seed=4)
    expected = set(manifest["in_grace"][str(GRACE)])
    warm(big)
    t_re, t_inc, t_grep, rss, own = [], [], [], [], []
    correct = True
    for i in range(reps):
        reset_state(wd)
        shutil.copyfile(big, log)
        t, r = run_tool(tool, wd, log, ["--reprocess"], own_rss=True)
        t_re.append(t)
        rss.append(r)
        own.append(LAST_OWN_RSS[0])
        correct &= map_keys(wd) == expected
        # Incremental: a run on an empty log commits its offset; then the
        # whole log is appended and the next run reads it.
        reset_state(wd)
        log.write_bytes(b"")
        run_tool(tool, wd, log)
        with open(big, "rb") as src, open(log, "ab") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        warm(log)
        t_inc.append(run_tool(tool, wd, log)[0])
        correct &= map_keys(wd) == expected
        t_grep.append(measure(["grep", "-c", "-F", "Login", str(big)])[0])
    for f in (big, log):
        f.unlink()
    return {"reprocess_s": median(t_re), "incremental_s": median(t_inc), "grep_s": median(t_grep),
            "rss_kb": max(rss), "own_rss_kb": max(own), "bytes": manifest["bytes"],
            "lines": manifest["lines"], "logins_in_grace": len(expected), "correct": correct,
            "reps": reps, "ratio_reprocess": median(t_re) / median(t_grep),
            "ratio_incremental": median(t_inc) / median(t_grep)}


###############################################################################
# c: merge and write with a big map ###########################################
###############################################################################

def bench_merge(tool, wd: Path, entries: int, reps: int) -> dict:
    say(f"c: merge and write, {entries}-entry map, {reps} reps")
    reset_state(wd)
    text = entries_text(entries, 11, NOW)
    src = wd / "data" / "big-entries"
    src.write_text(text)
    # The starting map, kept aside and copied in before each rep.
    build_map(wd, text, name="pristine")
    pristine = wd / "map" / "pristine.db"
    log = wd / "data" / "few.log"
    # A few minutes of log, so every login in it is inside the grace window.
    manifest = gen(log, 128 << 10, span=600, seed=5, pop_share=0.2)
    new = set(manifest["in_grace"][str(GRACE)])
    t_tool, t_build, rss, rss_build, own = [], [], [], [], []
    correct = True
    # Steady state: the run before this one left its state (the map cache
    # and the map's entries beside it); then the new lines arrive.
    current = wd / "data" / "current.log"
    for i in range(reps):
        reset_state(wd, keep_map=True)
        shutil.copyfile(pristine, wd / "map" / "map.db")
        current.write_bytes(b"")
        run_tool(tool, wd, current)
        shutil.copyfile(log, current)
        t, r = run_tool(tool, wd, current, own_rss=True)
        t_tool.append(t)
        rss.append(r)
        own.append(LAST_OWN_RSS[0])
        if i == 0:
            keys = map_keys(wd)
            correct = len(keys) == len(set(text.split()[0::2]) | new) and new <= keys
        t, r = measure(postmap(wd, f"hash:{src}"), rss=True)
        t_build.append(t)
        rss_build.append(r)
    for f in (pristine, wd / "map" / "map.db", Path(f"{src}.db"), src, current):
        f.unlink(missing_ok=True)
    return {"tool_s": median(t_tool), "postmap_s": median(t_build), "rss_kb": max(rss),
            "own_rss_kb": max(own),
            "postmap_rss_kb": max(rss_build), "entries": entries, "new_logins": len(new),
            "correct": correct, "reps": reps, "ratio_postmap": median(t_tool) / median(t_build)}


def rss_only(tool, wd: Path, entries: int) -> int:
    """Peak RSS of one merge-and-write run with an n-entry map (for linearity)."""
    reset_state(wd)
    build_map(wd, entries_text(entries, 13, NOW))
    log = wd / "data" / "few.log"
    gen(log, 256 << 10, span=600, seed=5, pop_share=0.2)
    run_tool(tool, wd, log, own_rss=True)
    return LAST_OWN_RSS[0]


###############################################################################
# e: latency, cron mode and path mode #########################################
###############################################################################

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class Inotify:
    """A small ctypes wrapper over libc's inotify_init1 and inotify_add_watch."""

    def __init__(self):
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path, mask) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        return wd

    def read(self, timeout: float | None) -> list[tuple[int, int, str]]:
        """Events as (watch, mask, name); [] when the timeout passed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        events, pos = [], 0
        while pos < len(data):
            wd, mask, _, length = struct.unpack_from("iIII", data, pos)
            name = data[pos + 16:pos + 16 + length].rstrip(b"\0").decode()
            events.append((wd, mask, name))
            pos += 16 + length
        return events

    def drain(self) -> int:
        n = 0
        while self.read(0):
            n += 1
        return n

    def close(self):
        os.close(self.fd)


class LogWriter:
    """Appends real-time lines to the log, one write() each, as syslog does."""

    def __init__(self, path, fmt="rfc3164", seed=3):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.rng = random.Random(seed)
        self.maker = genlog.Maker(self.rng, genlog.client_pool(self.rng, 1000), [genlog.ipv4(self.rng)
                                                                               for _ in range(100)])
        self.stamper = genlog.Stamper(fmt)
        self.seen = set()

    def noise(self):
        program, pid, msg = self.maker.noise()
        os.write(self.fd, (self.stamper.prefix(time.time(), program, pid) + msg + "\n").encode())

    def login(self) -> tuple[str, float]:
        """Append a login from a new address; return it and when write() returned."""
        while True:
            ip = genlog.ipv4(self.rng) if self.rng.random() < 0.7 else genlog.ipv6(self.rng)
            if ip not in self.seen:
                self.seen.add(ip)
                break
        line = (self.stamper.prefix(time.time(), "dovecot", None) +
                f"imap-login: Login: user=<lat>, method=PLAIN, rip={ip}, lip=198.51.100.1, "
                f"mpid=4242, TLS, session=<LatencyTest{len(self.seen):05d}>\n")
        os.write(self.fd, line.encode())
        return ip, time.perf_counter()

    def close(self):
        os.close(self.fd)


class HitWatcher(threading.Thread):
    """Runs `postmap -q` for every pending address each time the map is replaced."""

    def __init__(self, wd: Path):
        super().__init__(daemon=True)
        self.wd = wd
        self.pending: dict[str, float] = {}
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ino = Inotify()
        self.ino.watch(wd / "map", IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE)

    def add(self, ip, t):
        with self.lock:
            self.pending[ip] = t

    def check(self):
        with self.lock:
            items = list(self.pending.items())
        for ip, t in items:
            q = subprocess.run(postmap(self.wd, "-q", ip, f"hash:{self.wd}/map/map"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
            if q.returncode == 0:
                done = time.perf_counter()
                with self.lock:
                    self.pending.pop(ip, None)
                    self.latencies.append(done - t)

    def run(self):
        while not self.stop.is_set():
            events = self.ino.read(0.5)
            if any(name == "map.db" for _, _, name in events):
                self.check()
            elif not events and self.pending:
                self.check()              # a safety net; it can only make a latency longer

    def finish(self, timeout):
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop.set()
        self.join()
        self.ino.close()
        return len(self.pending)


class PathTrigger(threading.Thread):
    """What pbsmtp-batch.path and .timer do: start the service on each
    modification of the log, and once a minute.

    systemd (as of 257) stops watching while the triggered oneshot service
    runs and does not queue what happened meanwhile (systemd issues #5770,
    #37667): writes during a run start nothing. This emulation does the same:
    events read after a run are dropped, not acted on.
    """

    def __init__(self, tool, wd: Path, log: Path, timer: float = 60.0):
        super().__init__(daemon=True)
        self.tool, self.wd, self.log = tool, wd, log
        self.stop = threading.Event()
        self.runs: list[float] = []
        self.dropped = 0
        self.timer_runs = 0
        self.timer = timer             # pbsmtp-batch.timer: a run every minute
        self.error: Exception | None = None
        self.ino = Inotify()
        self.ino.watch(log, IN_MODIFY)

    def run(self):
        try:
            tick = time.monotonic() + self.timer
            while not self.stop.is_set():
                if self.ino.read(max(0.0, min(0.2, tick - time.monotonic()))):
                    pass
                elif time.monotonic() >= tick:
                    self.timer_runs += 1
                else:
                    continue
                if time.monotonic() >= tick:
                    tick += self.timer
                t, _ = run_tool(self.tool, self.wd, self.log, now=None)
                self.runs.append(t)
                self.dropped += self.ino.drain()
        except Exception as e:        # reported by finish(), in the main thread
            self.error = e

    def finish(self):
        self.stop.set()
        self.join()
        self.ino.close()
        if self.error:
            raise RuntimeError(f"path mode: a run failed: {self.error}")


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency_setup(tool, wd: Path, name: str) -> Path:
    reset_state(wd)
    now = time.time()
    build_map(wd, entries_text(10000, 17, now, oldest=GRACE // 2))
    log = wd / "data" / f"{name}.log"
    log.unlink(missing_ok=True)
    genlog_bytes = 1 << 20
    with open(log, "wb") as f:
        genlog.generate(f, genlog_bytes, "rfc3164", now, 1800, 9, 5000)
    run_tool(tool, wd, log, now=None)             # the first run sets the offset
    return log


def bench_path(tool, wd: Path, logins: int, noise_rate: float, seed: int) -> dict:
    """Live: a writer appends noise at noise_rate lines/s and logins at random."""
    say(f"e: path mode, {logins} logins, background {noise_rate:g} lines/s")
    log = latency_setup(tool, wd, f"path{noise_rate:g}")
    rng = random.Random(seed)
    watcher = HitWatcher(wd)
    trigger = PathTrigger(tool, wd, log)
    writer = LogWriter(log, seed=seed)
    watcher.start()
    trigger.start()
    started = time.perf_counter()
    try:
        for _ in range(logins):
            # Noise until the next login, which comes 0.3-1.5 s later.
            until = time.perf_counter() + rng.uniform(0.3, 1.5)
            while True:
                gap = rng.expovariate(noise_rate) if noise_rate else 1e9
                if time.perf_counter() + gap >= until:
                    time.sleep(max(0.0, until - time.perf_counter()))
                    break
                time.sleep(gap)
                writer.noise()
            ip, t = writer.login()
            watcher.add(ip, t)
        # The log keeps being written, as it would be, until the last login is seen.
        deadline = time.perf_counter() + 90
        while watcher.pending and time.perf_counter() < deadline:
            time.sleep(rng.expovariate(noise_rate) if noise_rate else 0.5)
            if noise_rate:
                writer.noise()
        lost = watcher.finish(timeout=0)
    finally:
        trigger.finish()
        writer.close()
    elapsed = time.perf_counter() - started
    lat = watcher.latencies
    return {"p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "max_s": max(lat) if lat else None,
            "samples": len(lat), "not_seen": lost, "not_seen_ips": sorted(watcher.pending),
            "runs": len(trigger.runs),
            "run_p50_s": pct(trigger.runs, 50), "noise_rate": noise_rate,
            # Share of the time a run was going on: about one core's share of CPU.
            "busy_share": sum(trigger.runs) / elapsed, "runs_per_s": len(trigger.runs) / elapsed,
            "writes_during_runs": trigger.dropped, "timer_runs": trigger.timer_runs}


def bench_cron(tool, wd: Path, samples: int, noise_rate: float, seed: int) -> dict:
    """The run itself is measured; cron's wait for the next minute is modelled.

    A line appended at a uniformly random moment waits U(0, 60) s for the next
    `* * * * *` run. Each sample appends a minute's worth of log (noise at
    noise_rate lines/s and one login), then runs the tool and `postmap -q`
    as cron would. Latency = wait + run + query; the percentiles come from
    10,000 draws of the wait, each paired with a measured run.
    """
    say(f"e: cron mode, {samples} measured runs")
    log = latency_setup(tool, wd, "cron")
    rng = random.Random(seed)
    writer = LogWriter(log, seed=seed)
    runs = []
    try:
        for _ in range(samples):
            for _ in range(int(60 * noise_rate)):
                writer.noise()
            ip, _ = writer.login()
            t0 = time.perf_counter()
            run_tool(tool, wd, log, now=None)
            q = subprocess.run(postmap(wd, "-q", ip, f"hash:{wd}/map/map"),
                               stdout=subprocess.DEVNULL, env=ENV)
            runs.append(time.perf_counter() - t0)
            if q.returncode != 0:
                raise RuntimeError(f"cron mode: {ip} not in the map after a run")
    finally:
        writer.close()
    lat = [rng.uniform(0, 60) + rng.choice(runs) for _ in range(10000)]
    return {"p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "samples": samples,
            "run_p50_s": pct(runs, 50), "run_p99_s": pct(runs, 99), "noise_rate": noise_rate}


###############################################################################
# The table ###################################################################
###############################################################################

def module_id(tool: list[str]) -> str:
    """Which pbsmtp_batch.py was measured: its path, sha256 prefix and git HEAD."""
    import hashlib
    path = next((a for a in tool if a.endswith(".py")), None)
    if path is None:
        done = subprocess.run([tool_python(tool), "-c", "import pbsmtp_batch; print(pbsmtp_batch.__file__)"],
                              capture_output=True, text=True)
        path = done.stdout.strip()
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "?"
    head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h"], capture_output=True,
                          text=True).stdout.strip()
    committed = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h",
                                f"--find-object={_git_blob(path)}"] if _git_blob(path) else ["true"],
                               capture_output=True, text=True).stdout.strip()
    where = f"committed as of {committed}" if committed else "not a committed version"
    return f"{path} (sha256 {digest}, {where}; repo HEAD {head or '?'})"


def _git_blob(path: str) -> str | None:
    done = subprocess.run(["git", "hash-object", path], capture_output=True, text=True)
    return done.stdout.strip() or None


def machine() -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    try:
        pf = subprocess.run(["postconf", "-dh", "mail_version"], capture_output=True,
                            text=True).stdout.strip()
    except OSError:
        pf = "?"
    disk = subprocess.run(["df", "-T", str(HERE)], capture_output=True, text=True).stdout
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {"load": load, "nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "postfix": pf,
            "fs": disk.splitlines()[-1].split()[1] if disk else "?",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def mib(kb):
    return f"{kb / 1024:.1f} MiB"


def table(r: dict) -> str:
    def ok(flag):
        return "**met**" if flag else "**missed**"
    rows = ["| # | what is measured | figure | baseline(s), same run | goal | met? |",
            "| --- | --- | --- | --- | --- | --- |"]
    a = r.get("a")
    if a:
        rows.append(
            f"| a | idle run: no new lines, {a['entries']:,}-entry map (median of {a['reps']}) | "
            f"{a['tool_s'] * 1000:.0f} ms = **{a['ratio_floor']:.2f}× floor**, "
            f"{a['ratio_python']:.1f}× `python3 -c pass` | floor `postmap -s` + `postmap` "
            f"{a['floor_s'] * 1000:.0f} ms ({a['postmap_s_s'] * 1000:.0f} + {a['postmap_build_s'] * 1000:.0f}); "
            f"`python3 -c pass` {a['python_s'] * 1000:.0f} ms | ≤ 2× `python3 -c pass` | "
            f"{ok(a['ratio_python'] <= 2)} |")
    b = r.get("b")
    if b:
        rows.append(
            f"| b | `--reprocess --max-session=0` over {b['bytes'] / 2**30:.2f} GiB, {b['lines'] / 1e6:.1f} M lines, {b['format']} "
            f"(median of {b['reps']}; map correct: {'yes' if b['correct'] else 'NO'}) | "
            f"{b['tool_s']:.2f} s = **{b['ratio_grep']:.1f}× grep**, {b['ratio_loop']:.2f}× Python loop; "
            f"{b['mb_per_s']:.0f} MiB/s, {b['lines_per_s'] / 1e6:.2f} M lines/s | "
            f"`grep -c -F Login` {b['grep_s']:.2f} s; `for line in open(f, 'rb')` {b['loop_s']:.2f} s | "
            f"≤ 3× grep | {ok(b['ratio_grep'] <= 3)} |")
    w = r.get("w")
    if w:
        for key, what in (("incremental", "incremental run over the whole log appended since the last run"),
                          ("reprocess", "`--reprocess`")):
            rows.append(
                f"| b | {what}: {w['bytes'] / 2**20:.0f} MiB, {w['lines'] / 1e6:.2f} M lines, **every line "
                f"inside the window**, {w['logins_in_grace']:,} addresses (median of {w['reps']}; "
                f"map correct: {'yes' if w['correct'] else 'NO'}) | {w[key + '_s']:.2f} s = "
                f"**{w['ratio_' + key]:.1f}× grep** | `grep -c -F Login` {w['grep_s']:.2f} s | ≤ 3× grep | "
                f"{ok(w['ratio_' + key] <= 3)} |")
        rows.append(f"| d | peak RSS of the every-line-in-window read | tool process **{mib(w['own_rss_kb'])}**; "
                    f"with its postmap children {mib(w['rss_kb'])} | — | < 64 MiB | "
                    f"{ok(max(w['rss_kb'], w['own_rss_kb']) < 64 * 1024)} |")
    c = r.get("c")
    if c:
        rows.append(
            f"| c | merge {c['new_logins']} logins into a {c['entries']:,}-entry map and write it "
            f"(median of {c['reps']}; map correct: {'yes' if c['correct'] else 'NO'}) | "
            f"{c['tool_s']:.2f} s = **{c['ratio_postmap']:.2f}× postmap** | bare `postmap` build "
            f"{c['postmap_s']:.2f} s | ≤ 0.5× | {ok(c['ratio_postmap'] <= 0.5)} |")
    if b:
        rows.append(f"| d | peak RSS of b | tool process **{mib(b['own_rss_kb'])}**; with its postmap "
                    f"children {mib(b['rss_kb'])} | — | < 64 MiB (streaming) | "
                    f"{ok(max(b['rss_kb'], b['own_rss_kb']) < 64 * 1024)} |")
    d = r.get("d")
    if c and d:
        rows.append(
            f"| d | peak RSS of c | tool process **{mib(c['own_rss_kb'])}** at {c['entries']:,} entries, "
            f"{mib(d['rss_small_kb'])} at {d['small']:,}: **{d['bytes_per_entry']:.0f} B/entry** over a "
            f"{mib(d['base_bytes'] / 1024)} base; with postmap children {mib(c['rss_kb'])} "
            f"| bare postmap build {mib(c['postmap_rss_kb'])} | linear in entries, B/entry reported | "
            f"{'**met**' if d['linear'] else '**missed**'} (reported) |")
    e = r.get("e")
    if e:
        cr = e["cron"]
        rows.append(
            f"| e | latency, cron mode (`* * * * *`; wait modelled, run measured) | "
            f"p50 **{cr['p50_s']:.1f} s**, p99 **{cr['p99_s']:.1f} s** (run + `postmap -q` "
            f"p50 {cr['run_p50_s'] * 1000:.0f} ms) | classic daemon: up to ~10 s | — (for comparison) | — |")
        for key in ("path_busy", "path_quiet"):
            p = e.get(key)
            if not p:
                continue
            rows.append(
                f"| e | latency, path mode, log {'busy' if key == 'path_busy' else 'quiet'} "
                f"({p['noise_rate']:g} other lines/s; {p['samples']} logins, {p['runs']} runs) | "
                f"p50 **{p['p50_s'] * 1000:.0f} ms**, p99 **{p['p99_s'] * 1000:.0f} ms** "
                f"(max {p['max_s'] * 1000:.0f} ms; {p['not_seen']} not seen; runs "
                f"{p.get('runs_per_s', float('nan')):.1f}/s, a run going on "
                f"{p.get('busy_share', float('nan')) * 100:.0f} % of the time) | — | p99 < 250 ms | "
                f"{ok(p['p99_s'] < 0.25 and not p['not_seen'])} |")
    return "\n".join(rows)


def machine_block(m: dict, argv: list[str]) -> str:
    return (f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']}, Linux {m['kernel']}, "
            f"Python {m['python']}, Postfix {m['postfix']}, file system {m['fs']}; "
            f"run {m['date']} with `{' '.join(['python3', 'benchmarks/run.py', *argv])}`; "
            f"load average at the start {m.get('load', '?')}, at the end {m.get('load_end', '?')}.")


def render(results: dict) -> str:
    return (machine_block(results["machine"], results["argv"]) +
            f"\nModule measured: {results['module']}.\n\n" + table(results) +
            f"\n\nWhole benchmark: {results['elapsed_s']:.0f} s.")


BEGIN, END = "<!-- BEGIN GENERATED: benchmarks/run.py --results -->", "<!-- END GENERATED -->"


def write_results(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else f"# Benchmark results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions")
    p.add_argument("--only", default="abwce",
                   help="which benchmarks to run, e.g. 'ab' (w: every line in the window) [abwce]")
    p.add_argument("--window-size", help="log size for w [100M; --quick: 20M]")
    p.add_argument("--size", help="log size for b [1G; --quick: 100M]")
    p.add_argument("--entries", type=int, help="map size for c [300000; --quick: 30000]")
    p.add_argument("--format", default="rfc3164", choices=("rfc3164", "rfc3339", "rfc5424"),
                   help="timestamp format of the log for b [%(default)s]")
    p.add_argument("--commit", metavar="REV",
                   help="measure pbsmtp_batch.py and patterns/ as committed at REV (e.g. HEAD), "
                        "not the installed tool")
    p.add_argument("--workdir", help="scratch directory [a new one under $TMPDIR, removed after]")
    p.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    p.add_argument("--from-json", metavar="FILE",
                   help="measure nothing: print (and with --results, write) the table of a saved --json")
    p.add_argument("--results", metavar="FILE",
                   help="rewrite the generated block of this markdown file (benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        block = render(results)
        print(block)
        if args.results:
            write_results(Path(args.results), block)
        return 0
    q = args.quick
    size = genlog.parse_size(args.size or ("100M" if q else "1G"))
    window_size = genlog.parse_size(args.window_size or ("20M" if q else "100M"))
    entries = args.entries or (30_000 if q else 300_000)
    for tool_name in ("postmap", "postconf", "grep"):
        if not shutil.which(tool_name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            p.error(f"{tool_name} not found (install Debian's postfix)")
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    ENV["PATH"] = os.environ["PATH"]
    wd = Path(args.workdir or tempfile.mkdtemp(prefix="pbsmtp-bench-"))
    setup_workdir(wd)
    tool = snapshot_tool(args.commit, wd / "module") if args.commit else tool_command()
    say(f"tool: {shlex.join(tool)}; workdir {wd}")
    results: dict = {"machine": machine(), "tool": tool, "argv": argv, "module": module_id(tool)}
    if args.commit:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.commit],
                             capture_output=True, text=True).stdout.strip()
        digest = results["module"].split("sha256 ", 1)[-1].split(",")[0]
        results["module"] = (f"pbsmtp_batch.py and patterns/ as committed at {rev} "
                             f"(module sha256 {digest})")
    started = time.perf_counter()
    try:
        if "a" in args.only:
            results["a"] = bench_idle(tool, wd, reps=7 if q else 21)
        if "b" in args.only:
            results["b"] = bench_reprocess(tool, wd, size, reps=3, fmt=args.format)
        if "w" in args.only:
            results["w"] = bench_window(tool, wd, window_size, reps=3)
        if "c" in args.only:
            results["c"] = c = bench_merge(tool, wd, entries, reps=3)
            small = entries // 10
            rss_small = rss_only(tool, wd, small)
            # The tool's own RSS (Python), without postmap's: postmap's is
            # dominated by Berkeley DB's fixed create buffer.
            per = (c["own_rss_kb"] - rss_small) * 1024 / (entries - small)
            # Linear: a positive fixed base plus a per-entry slope; with two
            # points that always fits, so also check the base is plausible
            # (a bare interpreter with the tool's modules: under 40 MiB).
            base = c["own_rss_kb"] * 1024 - per * entries
            results["d"] = {"small": small, "rss_small_kb": rss_small, "bytes_per_entry": per,
                            "base_bytes": base, "linear": 0 <= base < 40 * 2**20 and per > 0}
        if "e" in args.only:
            results["e"] = {
                "cron": bench_cron(tool, wd, samples=5 if q else 20, noise_rate=20, seed=21),
                "path_busy": bench_path(tool, wd, logins=20 if q else 150, noise_rate=20, seed=22),
                "path_quiet": bench_path(tool, wd, logins=10 if q else 60, noise_rate=0.5, seed=23),
            }
    finally:
        if not args.workdir:
            shutil.rmtree(wd, ignore_errors=True)
    results["elapsed_s"] = time.perf_counter() - started
    with open("/proc/loadavg") as f:
        results["machine"]["load_end"] = " ".join(f.read().split()[:3])
    block = render(results)
    print(block)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if args.results:
        write_results(Path(args.results), block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
