"""The file source through whole runs with the real postmap: odd files named
like rotated logs, cut .gz files and over-long lines. The pure parts (span
planning, the pre-filter's anchors, a decompression bomb) are in
test_reader.py.
"""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login, noise

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.tools


###############################################################################
# Odd files named like rotated logs ###########################################
###############################################################################

def run_cli(site, *extra):
    """The CLI in a child process: a blocking open would hang it, and the
    guard below turns a hang into a failure instead of a stuck suite."""
    cmd = [sys.executable, "-c", "import pbsmtp_batch; pbsmtp_batch.main()",
           *site.args("-v", *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TZ": "UTC"}, cwd=REPO)


def entries(site):
    return pb.read_map(str(site.map), "hash", str(site.conf))


@pytest.mark.parametrize("kind", ["fifo", "directory", "garbage-gz"])
def test_odd_rotated_file_is_a_warning_and_the_log_is_read(site, kind):
    odd = Path(f"{site.log}.1" + (".gz" if kind.endswith("gz") else ""))
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "directory":
        odd.mkdir()
    else:
        odd.write_bytes(b"this is not gzip data\n" * 10)
    site.append(noise(NOW - 20), dovecot_login(NOW - 10, "192.0.2.70"))
    done = run_cli(site)
    assert done.returncode == 0, done.stderr
    assert entries(site) == {"192.0.2.70": str(NOW - 10)}
    reason = {"fifo": "a FIFO", "directory": "a directory"}.get(kind, "cannot be decompressed")
    assert f"skipped rotated log {odd}: {reason}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_truncated_gz_is_a_warning_and_the_log_is_still_read(site):
    """A .gz cut short: a warning naming it (the block that holds the cut
    is lost with it), and the log after it is still read."""
    body = b"".join(dovecot_login(NOW - 100 + i, f"192.0.2.{i}").encode() for i in range(1, 40))
    data = gzip.compress(body)
    Path(f"{site.log}.1.gz").write_bytes(data[:len(data) * 2 // 3])
    site.append(dovecot_login(NOW - 5, "198.51.100.5"))
    done = run_cli(site)
    assert done.returncode == 0, done.stderr
    assert f"stopped reading {site.log}.1.gz" in done.stderr
    assert entries(site)["198.51.100.5"] == str(NOW - 5)


###############################################################################
# Over-long lines: linear time, flat memory ###################################
###############################################################################

def test_over_long_line_without_newline_is_skipped_and_the_rest_read(site):
    with open(site.log, "ab") as f:
        f.write(dovecot_login(NOW - 9, "192.0.2.80").encode())
        f.write(b"x" * (pb.BLOCK_BYTES + 5 * pb.MAX_LINE_BYTES))     # across blocks
        f.write(b"\n" + dovecot_login(NOW - 8, "192.0.2.81").encode())
    done = run_cli(site)
    assert done.returncode == 0, done.stderr
    assert entries(site) == {"192.0.2.80": str(NOW - 9), "192.0.2.81": str(NOW - 8)}
    assert done.stderr.count("skipped 1 lines longer than") == 1, done.stderr


def test_unfinished_over_long_line_waits_for_its_newline(site):
    """A plain log may still grow: an unfinished line, however long, is
    neither read nor committed past; once finished it is skipped whole,
    never read from its middle."""
    fake = dovecot_login(NOW - 7, "203.0.113.66").encode()
    site.append(dovecot_login(NOW - 9, "192.0.2.90"))
    with open(site.log, "ab") as f:
        f.write(b"y" * (3 * pb.MAX_LINE_BYTES))
    assert run_cli(site).returncode == 0
    with open(site.log, "ab") as f:
        f.write(fake.rstrip(b"\n") + b"\n" + dovecot_login(NOW - 6, "192.0.2.91").encode())
    done = run_cli(site)
    assert done.returncode == 0, done.stderr
    assert entries(site) == {"192.0.2.90": str(NOW - 9), "192.0.2.91": str(NOW - 6)}
