"""The file source's parts that need nothing but Python: span planning, a
decompression bomb read in flat memory, the pre-filter's anchors, and the
order of rotated names of every form. Whole runs over odd files, cut .gz
files and over-long lines are in test_reader_tools.py."""

import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import genlog  # noqa: E402

PATTERNS = pb.load_patterns(pb.shipped_patterns_dir())


###############################################################################
# plan_spans: saved state + surveyed files -> spans ###########################
###############################################################################

HEAD_A, HEAD_B, HEAD_C = b"a" * 100, b"b" * 100, b"c" * 100


def mark(inode, offset, head):
    length = min(offset, len(head))
    return pb.Offset(inode, offset, pb.fingerprint(head[:length]), length)


def logfile(path, inode, head, size=1000, mtime=NOW, compressed=False):
    return pb.LogFile(path, inode, size, mtime, compressed, head)


LOG = logfile("mail.log", 3, HEAD_C)
ROTATED = [logfile("mail.log.2.gz", 1, HEAD_A, compressed=True),
           logfile("mail.log.1", 2, HEAD_B)]
OFF, WIN = pb.Start.OFFSET, pb.Start.WINDOW


@pytest.mark.parametrize("saved, rotated, spans, warned", [
    # First run: the grace window of every recent file, then the log.
    (None, ROTATED, [("mail.log.2.gz", WIN, 0), ("mail.log.1", WIN, 0), ("mail.log", WIN, 0)],
     False),
    # The same log, grown: only the rest of it.
    (pb.LogState(mark(3, 500, HEAD_C)), ROTATED, [("mail.log", OFF, 500)], False),
    # Grown, and the newest rotated file is the previous one: its late lines too.
    (pb.LogState(mark(3, 500, HEAD_C), mark(2, 700, HEAD_B)), ROTATED,
     [("mail.log.1", OFF, 700), ("mail.log", OFF, 500)], False),
    # Rotated once: the rest of the renamed file, then the new log from 0.
    (pb.LogState(mark(2, 400, HEAD_B)), ROTATED, [("mail.log.1", OFF, 400), ("mail.log", OFF, 0)],
     False),
    # Rotated twice, found compressed by its head.
    (pb.LogState(mark(9, 300, HEAD_A)), ROTATED,
     [("mail.log.2.gz", OFF, 300), ("mail.log.1", OFF, 0), ("mail.log", OFF, 0)], False),
    # Gone: the grace window again, with a warning.
    (pb.LogState(mark(8, 300, b"z" * 100)), ROTATED,
     [("mail.log.2.gz", WIN, 0), ("mail.log.1", WIN, 0), ("mail.log", WIN, 0)], True),
    # A reused inode number with another head is not the same file.
    (pb.LogState(mark(3, 500, HEAD_A)), ROTATED,
     [("mail.log.2.gz", OFF, 500), ("mail.log.1", OFF, 0), ("mail.log", OFF, 0)], False),
    # A mark at 0 (the log was empty): from the previous run's rotated file.
    (pb.LogState(pb.Offset(3, 0), mark(2, 700, HEAD_B)), ROTATED,
     [("mail.log.1", OFF, 700), ("mail.log", OFF, 0)], False),
])
def test_plan_spans(saved, rotated, spans, warned):
    got, warning = pb.plan_spans(saved, LOG, rotated, NOW - 1800)
    assert [(os.path.basename(s.path), s.start, s.offset) for s in got] == spans
    assert (warning is not None) == warned


def test_plan_spans_window_stops_at_a_file_older_than_the_cutoff():
    old = [logfile("mail.log.2.gz", 1, HEAD_A, compressed=True, mtime=NOW - 7200), ROTATED[1]]
    got, _ = pb.plan_spans(None, LOG, old, NOW - 1800)
    assert [s.path for s in got] == ["mail.log.1", "mail.log"]


###############################################################################
# Over-long lines: linear time, flat memory ###################################
###############################################################################

MEASURE = r"""
import resource, sys
import pbsmtp_batch as pb
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
source = pb.FileSource(sys.argv[1], None, 0, anchors=pb.pattern_anchors(
    pb.load_patterns(pb.shipped_patterns_dir())))
lines = list(source)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(lines), source.stats.long_lines, source.lines_read, peak - base)
"""


def test_decompression_bomb_of_nuls_reads_in_flat_memory(tmp_path):
    """The shape of a 509 KB mail.log.1.gz that expands to 512 MiB of NULs,
    at 96 MiB: one endless line, skipped, read in bounded memory (peak RSS
    grows by far less than the content); the line after it is read."""
    size = 96 << 20
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    with gzip.open(tmp_path / "mail.log.1.gz", "wb", compresslevel=1) as f:
        chunk = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
        f.write(b"\n" + dovecot_login(NOW - 5, "192.0.2.99").encode())
    done = subprocess.run([sys.executable, "-c", MEASURE, str(log)], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    candidates, long_lines, lines_read, grown_kib = (int(x) for x in done.stdout.split())
    assert (candidates, long_lines, lines_read) == (1, 1, 2)
    assert grown_kib < 32 * 1024                  # the content is 96 MiB


###############################################################################
# The pre-filter: rare anchors, and no login lost by it #######################
###############################################################################

@pytest.fixture(scope="module")
def generated():
    out = io.BytesIO()
    genlog.generate(out, 4 << 20, "rfc3164", NOW, 86400, seed=7, clients=5000)
    return out.getvalue()


def test_every_anchor_is_rare_in_a_mail_log(generated):
    """Each pattern's search anchor (its login stem, or its tag where the
    literal has none) hits few lines of the benchmark's generated log, in
    which 5 % of lines come from the POP/IMAP login processes: Postfix's own
    lines, most of the log, must not be candidates."""
    lines = generated.lower().split(b"\n")
    for pattern in PATTERNS:
        for anchor in pb.pattern_anchors([pattern]):
            hits = sum(anchor in line for line in lines)
            assert hits < 0.05 * len(lines), (pattern.name, anchor, hits, len(lines))
    candidates = sum(len(pb.candidate_lines(block + b"\n", pb.pattern_anchors(PATTERNS)))
                     for block in [generated[:-1]])
    assert candidates < 0.05 * len(lines)


def test_two_line_servers_address_literal_is_not_an_anchor():
    """'connect from ' is in every Postfix connect/disconnect line: popa3d
    and vm-pop3d are found by their tags instead."""
    anchors = pb.pattern_anchors(PATTERNS)
    assert not any(b"connect from" in a for a in anchors)
    for tag in (b"popa3d", b"vm-pop3d"):
        assert any(a in tag for a in anchors), tag


def test_the_pre_filter_loses_no_login(generated):
    """Every line any pattern finds a login (or an address line) in is a
    candidate of the pre-filter, over the generated log and every pattern's
    own samples."""
    samples = "".join(s.line + "\n" for p in PATTERNS for s in p.samples)
    samples += "".join(b + "\n" for p in PATTERNS for s in p.samples for b in s.before)
    data = generated + samples.encode("utf-8", "surrogateescape")
    anchors = pb.pattern_anchors(PATTERNS)
    candidates = set(pb.candidate_lines(data, anchors))
    for raw in data.split(b"\n"):
        line = pb.decode(raw.decode("latin-1"))
        login, reason = pb.match_login(line, PATTERNS, NOW, {})
        pending = {}
        pb.match_login(line, PATTERNS, NOW, pending)
        if login or reason or pending:
            assert raw in candidates, raw


def test_rotated_names_of_every_form_sort_by_age(tmp_path):
    """Numbered (higher is older) before dated (by the date's digits);
    extension and compressext stripped; other logs' files ignored."""
    old = tmp_path / "old"
    old.mkdir()
    names = ["mail.log.3.zst", "mail.2.log.lz4", "mail.log.1", "mail.log_20261120",
             "mail.log-2026-11-21.gz", "mail.log.20261122.xz", "mail-20261123.log.bz2",
             "mail.log.tmp", "mail.logger.1", "mail.err.1", "mail.log.1.gz.1", "mail.log.Z"]
    for n in names:
        (tmp_path / n).write_text("")
    (old / "mail.log.4.Z").write_text("")
    (old / "mail.log-20261124").write_text("")
    found = pb.rotated_logs(str(tmp_path / "mail.log"), ["old"])
    assert [os.path.relpath(p, tmp_path) for p in found] == [
        "old/mail.log.4.Z", "mail.log.3.zst", "mail.2.log.lz4", "mail.log.1",
        "mail.log_20261120", "mail.log-2026-11-21.gz", "mail.log.20261122.xz",
        "mail-20261123.log.bz2", "old/mail.log-20261124"]
