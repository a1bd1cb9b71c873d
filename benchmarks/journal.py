#!/usr/bin/env python3
"""Benchmark: an incremental --journal run against journalctl printing the same entries.

    python3 benchmarks/journal.py                 # 100,000 new entries, median of 3
    python3 benchmarks/journal.py --entries 20000 --reps 1

Goal: an incremental run over N new journal entries costs no more than 3x what
``journalctl -o export --after-cursor=C`` takes to print them, on the same
machine, in the same run (both from a warm page cache, medians of --reps).

The journal is written by ``systemd-journal-remote --output=F.journal -`` from
export-format entries with the fields journald records for a syslog sender: about 5 % Dovecot login
lines (from /usr/lib/dovecot/log, as root, dovecot.service) from 5,000 client
addresses, the rest Postfix smtpd noise, a few `logger -t dovecot` forgeries.
One entry is read first to leave a cursor; then N entries are appended and the
tool's next run, which reads exactly those N, is timed, with the map written
(--write) and with --nowrite. The tool is this checkout's module, run as
``python3 pbsmtp_batch.py``; it needs postfix (postmap, postconf), systemd
(journalctl) and systemd-journal-remote.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "pbsmtp_batch.py"
REMOTE = next((p for p in ("/lib/systemd/systemd-journal-remote",
                           "/usr/lib/systemd/systemd-journal-remote") if os.path.exists(p)), None)
GRACE = 1800
BOOT_ID = "5bd5f1e2c0a84c4f9a0e3f7b6d2c1a90"
MACHINE_ID = "3d1219c7c4c5404aaa1f6d2a48adfda4"
INVOCATION = "9f0c2d35a3c14e0c8e1f9b0b7d6a5c41"
DOVECOT = {"SYSLOG_IDENTIFIER": "dovecot", "_COMM": "log", "_EXE": "/usr/lib/dovecot/log",
           "_UID": "0", "_GID": "0", "_PID": "612", "_SYSTEMD_UNIT": "dovecot.service"}
POSTFIX = {"SYSLOG_IDENTIFIER": "postfix/smtpd", "_COMM": "smtpd",
           "_EXE": "/usr/lib/postfix/sbin/smtpd", "_UID": "104", "_GID": "110",
           "_SYSTEMD_UNIT": "postfix@-.service"}
LOGGER = {"SYSLOG_IDENTIFIER": "dovecot", "_COMM": "logger", "_EXE": "/usr/bin/logger",
          "_UID": "1000", "_GID": "1000", "_PID": "31337", "_SYSTEMD_UNIT": "session-3.scope"}


def field(name: str, value: str) -> bytes:
    return f"{name}={value}\n".encode()


def entries(n: int, start: float, seed: int, monotonic: int) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        when = start + i * 0.01
        r = rng.random()
        if r < 0.05:
            ip = f"198.51.{rng.randrange(20)}.{rng.randrange(250)}"
            sender, message = DOVECOT, (
                f"imap-login: Login: user=<u{rng.randrange(9999)}>, method=PLAIN, rip={ip}, "
                f"lip=192.0.2.1, mpid={rng.randrange(99999)}, TLS, session=<S{i}>")
        elif r < 0.051:
            sender, message = LOGGER, ("imap-login: Login: user=<x>, method=PLAIN, "
                                       "rip=203.0.113.66, lip=192.0.2.1")
        else:
            pid = str(rng.randrange(1000, 60000))
            sender = {**POSTFIX, "_PID": pid, "SYSLOG_PID": pid}
            message = (f"connect from unknown[203.0.113.{rng.randrange(250)}]" if r < 0.5 else
                       f"disconnect from unknown[203.0.113.{rng.randrange(250)}] ehlo=1 "
                       f"mail=1 rcpt=1 data=1 quit=1 commands=5")
        # The fields journald records for a syslog(3) sender under systemd.
        fields = {"__REALTIME_TIMESTAMP": str(int(when * 1e6)),
                  "__MONOTONIC_TIMESTAMP": str(monotonic + i), "_BOOT_ID": BOOT_ID,
                  "_MACHINE_ID": MACHINE_ID, "_HOSTNAME": "mail", "_TRANSPORT": "syslog",
                  "PRIORITY": "6", "SYSLOG_FACILITY": "2",
                  "SYSLOG_TIMESTAMP": time.strftime("%b %d %H:%M:%S ", time.gmtime(when)),
                  "_SOURCE_REALTIME_TIMESTAMP": str(int(when * 1e6) - 13),
                  "_CAP_EFFECTIVE": "1ffffffffff", "_SYSTEMD_SLICE": "system.slice",
                  "_SYSTEMD_INVOCATION_ID": INVOCATION, **sender, "MESSAGE": message}
        fields["_SYSTEMD_CGROUP"] = f"/system.slice/{fields['_SYSTEMD_UNIT']}"
        fields["_CMDLINE"] = fields["_COMM"]
        out.append(b"".join(field(k, v) for k, v in fields.items()) + b"\n")
    return b"".join(out)


def write_journal(path: Path, data: bytes) -> None:
    subprocess.run([REMOTE, f"--output={path}", "-"], input=data, check=True,
                   capture_output=True)


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, **kw)
    return time.perf_counter() - t0, done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    journalctl = shutil.which("journalctl")
    postconf = shutil.which("postconf", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    if not (REMOTE and journalctl and postconf):
        print("needs systemd-journal-remote, journalctl (systemd) and postconf (postfix)",
              file=sys.stderr)
        return 1
    env = dict(os.environ, TZ="UTC", LC_ALL="C")
    now = time.time()
    start = now - args.entries * 0.01 - 60
    with tempfile.TemporaryDirectory(prefix="pbsmtp-journal-bench-") as tmp:
        wd = Path(tmp)
        conf = wd / "postfix"
        conf.mkdir()
        (conf / "main.cf").write_text("mynetworks = 127.0.0.1/32\n")
        (conf / "master.cf").write_text("")
        jdir = wd / "journal"
        jdir.mkdir()
        write_journal(jdir / "mail.journal", entries(1, start - 1, 0, 1000))
        base = [sys.executable, str(MODULE), f"--journal-directory={jdir}",
                f"--dbfile={wd / 'map' / 'pop-before-smtp'}", f"--postfix-config={conf}",
                "--map-type=hash", f"--grace={GRACE}"]
        (wd / "map").mkdir()
        first = subprocess.run([*base, f"--state-dir={wd / 'state'}", f"--now={now}"],
                               capture_output=True, text=True, env=env)
        assert first.returncode == 0, first.stderr
        saved = (wd / "state").glob("*.offset")
        state_file = next(saved)
        state = state_file.read_text()
        import json
        cursor = json.loads(state)["cursor"]
        write_journal(jdir / "mail.journal", entries(args.entries, start, 1, 2000))

        baseline, tool, nowrite = [], [], []
        cmd_base = [journalctl, "-D", str(jdir), "-o", "export", f"--after-cursor={cursor}"]
        for _ in range(args.reps + 1):           # the first round warms the page cache
            t, done = timed(cmd_base)
            assert done.returncode == 0 and done.stdout.count(b"\n__CURSOR=") + 1 \
                == args.entries, "journalctl did not print the new entries"
            baseline.append(t)
            for mode, into in (("--write", tool), ("--nowrite", nowrite)):
                state_file.write_text(state)
                for leftover in (wd / "state").glob("journal*.map"):
                    leftover.unlink()
                for m in (wd / "map").glob("*"):
                    m.unlink()
                t, done = timed([*base, f"--state-dir={wd / 'state'}", f"--now={now}", "-v",
                                 mode], env=env)
                assert done.returncode == 0, done.stderr
                read = int(done.stdout.split()[1])
                assert read == args.entries, f"the tool read {read} entries"
                into.append(t)
        b, w, n = (statistics.median(x[1:]) for x in (baseline, tool, nowrite))
        version = subprocess.run([journalctl, "--version"], capture_output=True,
                                 text=True).stdout.splitlines()[0]
        print(f"{args.entries:,} new journal entries ({version}; median of {args.reps}):")
        print(f"  journalctl -o export --after-cursor   {b:7.2f} s   (baseline)")
        print(f"  pbsmtp-batch --journal, map written   {w:7.2f} s   = {w / b:.2f}x baseline"
              f"   goal <= 3x: {'met' if w / b <= 3 else 'MISSED'}")
        print(f"  pbsmtp-batch --journal --nowrite      {n:7.2f} s   = {n / b:.2f}x baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
