"""Rotation: the real logrotate, every mode, lines before, between and
after rotations; --reprocess.

Each scenario keeps its own record of every login line it wrote (``Lab``)
and, after every run, checks that the map holds exactly those logins, and
that the run read exactly the complete lines written since the run before:
no line lost, none read twice. The log lines carry the real time and the
runs get ``--now`` of the real time, because the tool compares rotated files'
modification times (which logrotate and the kernel set) with the grace window.

``Lab``, ``logrotate`` and the ``lab`` fixture: tests/rotation.py, conftest.py.
"""

import gzip
import os
import re
import time

import pytest

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login
from rotation import GRACE, LATE_WRITES, held

pytestmark = pytest.mark.tools

###############################################################################
# One scenario per mode: before, between and after; late writes; 2 and 3 #####
# rotations between runs ######################################################
###############################################################################

@pytest.mark.parametrize("mode", ["create", "dateext-s", "compress-delay", "compress",
                                  "dateext-s-compress", "copytruncate",
                                  "copytruncate-compress"])
def test_every_line_survives_rotation(lab, mode):
    late = mode in LATE_WRITES
    # An old login outside the grace window is never added.
    lab.logins(1, when=int(time.time()) - GRACE - 100, counted=False)
    lab.logins(2)
    lab.run()

    # Lines before the rotation, after it, and late ones to the renamed file.
    lab.logins(2)
    daemon = held(lab) if late else None
    lab.rotate(mode)
    lab.logins(2)
    if daemon:
        lab.logins(1, to=daemon)
    lab.run()

    # Late lines after the run that finished the renamed file; then the
    # daemon reopens its log.
    if daemon:
        lab.logins(2, to=daemon)
        daemon.close()
    lab.logins(1)
    lab.run()
    lab.run()                                        # nothing new: nothing read

    # Two rotations between runs, then three, with lines before, between
    # and after each.
    for rotations in (2, 3):
        for _ in range(rotations):
            lab.logins(1)
            lab.rotate(mode)
        lab.logins(1)
        lab.run()
    assert len(lab.expected) == (17 if late else 14)


def test_dateext_by_day(lab):
    """Plain dateext (-%Y%m%d): one rotation a day, so one here."""
    lab.logins(2)
    lab.run()
    lab.logins(2)
    daemon = held(lab)
    lab.rotate("dateext")
    assert any(re.fullmatch(r"mail\.log-\d{8}", p.name) for p in lab.root.iterdir())
    lab.logins(1)
    lab.logins(1, to=daemon)
    lab.run()
    lab.logins(1, to=daemon)
    daemon.close()
    lab.logins(1)
    lab.run()


def test_copytruncate_onto_a_log_already_longer_than_the_offset(lab):
    lab.logins(1)
    lab.run()
    offset = lab.log.stat().st_size
    lab.logins(2)
    lab.rotate("copytruncate")
    lab.logins(4)
    assert lab.log.stat().st_size > offset
    lab.run()


def test_copytruncate_of_a_log_that_was_empty_at_the_last_run(lab):
    """The run before the rotation saw an empty log (offset 0, nothing to
    fingerprint); the lines written after it went into the copy."""
    lab.run()
    lab.logins(2)
    lab.rotate("copytruncate")
    lab.logins(1)
    lab.run()


def test_copytruncate_of_a_log_that_was_empty_then_nothing_new(lab):
    lab.run()
    lab.logins(2)
    lab.rotate("copytruncate")
    lab.run()


def test_compress_after_a_run_that_saw_an_empty_log(lab):
    lab.run()
    lab.logins(2)
    lab.rotate("compress")
    lab.logins(1)
    result = lab.run()
    assert result.stderr == ""                      # found, not guessed: no warning


def test_late_lines_to_a_file_that_is_then_rotated_again(lab):
    """delaycompress: late lines reach mail.log.1 after a run read it, and
    before the next run mail.log.1 has become mail.log.2.gz."""
    lab.logins(1)
    lab.run()
    daemon = held(lab)
    lab.rotate("compress-delay")
    lab.logins(1)
    lab.run()
    lab.logins(1, to=daemon)
    daemon.close()
    lab.rotate("compress-delay")
    lab.logins(1)
    lab.run()


###############################################################################
# Deleted, missing, truncated #################################################
###############################################################################

def test_log_deleted_and_recreated_empty(lab):
    lab.logins(2)
    lab.run()
    lab.log.unlink()
    lab.log.write_text("")                           # ext4 may even reuse the inode
    result = lab.run()
    assert "re-reading the grace window" in result.stderr
    lab.logins(2)
    lab.run()
    lab.logins(1)
    lab.run()


def test_log_deleted_and_recreated_longer_than_the_offset(lab):
    lab.logins(1)
    lab.run()
    lab.log.unlink()
    lab.log.write_text("")
    lab.logins(3)
    lab.run()


def test_log_missing_for_one_run_then_back(lab):
    lab.logins(2)
    lab.run()
    lab.logins(1)                                    # written before it went away
    lab.rotate("nocreate")
    assert not lab.log.exists()
    before = {p.name: p.read_bytes() for p in lab.state.iterdir() if p.name not in ("lock", pb.MAP_LOCK)}
    entries = lab.entries()
    result = lab.invoke()
    assert (result.exit_code, result.stderr) == (1, f"Error: log {lab.log} does not exist\n")
    assert {p.name: p.read_bytes() for p in lab.state.iterdir() if p.name not in ("lock", pb.MAP_LOCK)} == before
    assert lab.entries() == entries
    lab.logins(2)                                    # the daemon creates it again
    lab.run()


def test_log_missing_then_back_without_rotation(lab):
    lab.logins(1)
    lab.run()
    lab.log.rename(lab.root / "elsewhere")
    assert lab.invoke().exit_code == 1
    (lab.root / "elsewhere").rename(lab.log)
    lab.logins(1)
    lab.run()


@pytest.mark.parametrize("longer", [False, True])
def test_log_truncated_to_zero(lab, longer):
    lab.logins(2)
    lab.run()
    with open(lab.log, "r+") as f:
        f.truncate(0)
    lab.run(lines=0)
    lab.logins(5 if longer else 1)
    lab.run()


def test_line_outside_the_grace_window_is_not_re_added(lab):
    """A login that expired must not come back when the grace window is
    re-read (here: the log was deleted, and the offset file with it)."""
    t0 = int(time.time())
    lab.grace = 60
    (old,) = lab.logins(1)
    lab.run(now=t0)
    assert old in lab.entries()
    del lab.expected[old]
    lab.run(now=t0 + 61)                           # expired
    for p in lab.state.iterdir():
        p.unlink()
    lab.run(now=t0 + 61, lines="any")               # re-reads everything there is
    assert old not in lab.entries()


###############################################################################
# A rotation while a run is reading ###########################################
###############################################################################

def read_all(lab, saved, rotate_between, after):
    """Drive the module's FileSource by hand: read two lines, let
    ``rotate_between`` run, read the rest; then commit like run() does.
    Returns the lines and the committed state."""
    reader = pb.FileSource(str(lab.log), saved, time.time() - lab.grace)
    it = iter(reader)
    lines = [x for x in (next(it, None), next(it, None)) if x is not None]
    rotate_between()
    lines.extend(it)
    state = reader.state()
    after()
    return [pb.decode(x) for x in lines], state


@pytest.mark.parametrize("mode", ["create", "compress", "compress-delay", "copytruncate"])
@pytest.mark.parametrize("where", ["incremental", "first-run", "rotated"])
def test_rotation_while_a_run_is_reading(lab, mode, where, request):
    if (mode, where) == ("copytruncate", "rotated"):
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "known limitation: copytruncate empties the log while a run that "
            "began in mail.log.1 has yet to read it; the run then reads the "
            "new content, and the old content's copy is never read")))
    """``incremental``: the run follows the same file;
    ``first-run``: no saved state; ``rotated``: the run starts in the
    renamed file (mail.log.1) and goes on to the log, and the log is
    rotated again while it reads mail.log.1."""
    lab.state.mkdir()
    written = []

    def log(n, to=None):
        for _ in range(n):
            line = dovecot_login(int(time.time()), lab.new_ip())
            written.append(line.rstrip("\n"))
            lab.write(line, to)

    saved, seen = None, []
    if where != "first-run":
        log(3)
        lines, saved = read_all(lab, None, lambda: None, lambda: None)
        seen.extend(lines)
    log(40)
    if where == "rotated":
        lab.rotate(mode)
        log(40)
    daemon = held(lab)

    def rotate():
        lab.rotate(mode)
        log(3)                                      # new lines in the new log
        if mode in LATE_WRITES:
            log(2, to=daemon)                       # late lines to the renamed one

    def after():
        if mode in LATE_WRITES:
            log(2, to=daemon)                       # after this run had finished it
        daemon.close()
        log(1)

    lines, state = read_all(lab, saved, rotate, after)
    seen.extend(lines)
    lines, state = read_all(lab, state, lambda: None, lambda: None)
    seen.extend(lines)
    assert sorted(seen) == sorted(written)          # each exactly once


###############################################################################
# --reprocess #################################################################
###############################################################################

def gz(path, text):
    with gzip.open(path, "wt") as f:
        f.write(text)


@pytest.mark.parametrize("naming", ["numbered", "dateext"])
def test_reprocess_reads_back_to_the_grace_window_and_no_further(lab, naming):
    """Rotated files newest first: .1 (plain) and .2.gz changed inside the
    window and hold logins; .3.gz last changed before it, so the search stops
    there: neither it nor .4.gz is read, even though (impossibly, as a trap)
    they hold logins with times inside the window."""
    now = NOW
    names = (["mail.log.1", "mail.log.2.gz", "mail.log.3.gz", "mail.log.4.gz"]
             if naming == "numbered" else
             ["mail.log-20261124-1795562000", "mail.log-20261124-1795561000.gz",
              "mail.log-20261123.gz", "mail.log-20261122.gz"])
    files = [lab.root / n for n in names]
    lab.append(dovecot_login(now - 100, "192.0.2.1"))                   # current log
    lab.invoke(now=now)                       # a normal run has read the current log
    files[0].write_text(dovecot_login(now - GRACE - 50, "192.0.2.20")  # too old
                        + dovecot_login(now - 1000, "192.0.2.21"))
    gz(files[1], dovecot_login(now - 1700, "192.0.2.22"))
    gz(files[2], dovecot_login(now - 10, "192.0.2.23"))                 # trap
    gz(files[3], dovecot_login(now - 10, "192.0.2.24"))                 # trap
    for path, mtime in zip(files, (now - 900, now - 1700, now - GRACE - 1, now - 5)):
        os.utime(path, (mtime, mtime))
    # A normal run reads nothing: the offset is at the end of the log.
    assert "0 lines read" in lab.invoke(now=now).stdout
    assert set(lab.entries()) == {"192.0.2.1"}
    lab.map.with_suffix(".db").unlink()                   # the map is lost
    result = lab.invoke("--reprocess", now=now)
    assert result.exit_code == 0
    assert "4 lines read" in result.stdout
    assert lab.entries() == {"192.0.2.1": str(now - 100), "192.0.2.21": str(now - 1000),
                             "192.0.2.22": str(now - 1700)}
    # The offset is committed as by a normal run: the next one reads nothing.
    assert "0 lines read" in lab.invoke(now=now).stdout


def test_reprocess_after_real_rotations(lab):
    lab.logins(2)
    lab.rotate("compress")
    lab.logins(2)
    lab.rotate("compress-delay")
    lab.logins(2)
    lab.rotate("compress-delay")          # .1 plain, .2.gz, .3.gz
    lab.logins(1)
    lab.run(lines="any")
    lab.map.with_suffix(".db").unlink()
    lab.run("--reprocess", lines=14)
