"""GNU grep as the file source's pre-filter: the lines, counts and offsets
it gives are exactly those of the Python pre-filter, whatever the bytes
(case, NULs, CRs, over-long lines across blocks, an unfinished last line);
the span ends where the survey found the file's end; a grep that cannot run
or fails halfway leaves the work to Python; no grep outlives its read."""

import os
import random
import sys
from pathlib import Path

import pytest

import pbsmtp_batch as pb
from conftest import NOW, dovecot_failure, dovecot_login, noise, require

pytestmark = pytest.mark.tools

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import genlog  # noqa: E402

ANCHORS = pb.pattern_anchors(pb.load_patterns(pb.shipped_patterns_dir()))


@pytest.fixture(autouse=True)
def grep_found():
    require("grep", "grep")
    pb.grep_program.cache_clear()
    yield
    pb.grep_program.cache_clear()


@pytest.fixture
def no_grep(monkeypatch, tmp_path):
    """A PATH without grep: the Python pre-filter does the work."""
    empty = tmp_path / "no-grep-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    pb.grep_program.cache_clear()
    assert pb.grep_program() is None


def read(path, saved=None):
    source = pb.FileSource(str(path), saved, 0, anchors=ANCHORS)
    lines = list(source)
    return lines, source.lines_read, source.stats.long_lines, source.marks


def odd_log(path: Path, seed: int) -> None:
    """Real log lines mixed with every shape the reader must survive."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        genlog.generate(f, 300_000, "rfc3164", NOW, 1800, seed, 500)
        for i in range(400):
            kind = rng.randrange(9)
            when = NOW - rng.randrange(1, 1700)
            ip = f"192.0.2.{rng.randrange(1, 255)}"
            if kind == 0:
                line = dovecot_login(when, ip).encode()
            elif kind == 1:        # the anchors in every case
                line = dovecot_login(when, ip).replace("Login", rng.choice(
                    ["LOGIN", "lOgIn", "login", "Login"])).encode()
            elif kind == 2:
                line = dovecot_failure(when, ip).encode()
            elif kind == 3:        # an over-long line, with or without an anchor
                line = (b"x" * rng.randrange(pb.MAX_LINE_BYTES - 3, 3 * pb.MAX_LINE_BYTES)
                        + rng.choice([b"", b" Login: "]) + b"\n")
            elif kind == 4:        # NULs, CRs, bytes no text has
                line = bytes(rng.getrandbits(8) for _ in range(rng.randrange(200))) + b"\n"
            elif kind == 5:
                line = dovecot_login(when, ip).encode().replace(b"user=<", b"user=<a\r\0b")
            elif kind == 6:        # a non-ASCII byte next to an anchor: ASCII folding only
                line = b"\xc4LOGIN\xe4 AUTH\xd6\n"
            else:
                line = noise(when).encode()
            f.write(line)
        f.write(dovecot_login(NOW - 5, "198.51.100.9").encode()[:70])    # unfinished


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_grep_finds_what_the_python_pre_filter_finds(tmp_path, monkeypatch, seed):
    log = tmp_path / "mail.log"
    odd_log(log, seed)
    with_grep = read(log)
    assert pb.grep_program() is not None
    empty = tmp_path / "no-grep-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    pb.grep_program.cache_clear()
    assert pb.grep_program() is None
    without = read(log)
    assert with_grep == without
    lines, lines_read, long_lines, marks = with_grep
    assert long_lines > 0 and len(lines) > 200 and lines_read > len(lines)
    # The unfinished last line is left for the next run.
    assert marks[-1].offset == log.read_bytes().rindex(b"\n") + 1


def grep_blocks(log):
    """The log's blocks of whole lines, and for each the lines grep vouches
    for (None: grep could not, and Python reads that block)."""
    with open(log, "rb", buffering=0) as raw:
        blocks = list(pb.complete_blocks(pb.SpanReader(raw.fileno(), 0, log.stat().st_size),
                                         0, False, pb.ReadStats()))
        with pb.grep_lines(raw.fileno(), 0, ANCHORS) as found:
            return blocks, [found.lines_in(block, end - len(block)) for block, end in blocks]


def test_grep_vouches_for_every_block_of_a_plain_log(tmp_path):
    """The grep path really is taken: every block of a log much bigger than
    a block gets its candidates from grep, and they are the Python ones."""
    log = tmp_path / "mail.log"
    with open(log, "wb") as f:
        genlog.generate(f, 3 * pb.BLOCK_BYTES, "rfc3164", NOW, 1800, 7, 500)
    blocks, got = grep_blocks(log)
    assert len(blocks) >= 3
    assert got == [pb.candidate_lines(block, ANCHORS) for block, _ in blocks]
    assert None not in got and sum(map(len, got)) > 100


def test_the_span_ends_where_the_survey_found_the_end(tmp_path):
    """Lines appended after the survey are the next run's, with grep as
    without it: the offset is the end of the last line the survey saw."""
    log = tmp_path / "mail.log"
    log.write_text(dovecot_login(NOW - 20, "192.0.2.1") + dovecot_login(NOW - 19, "192.0.2.2"))
    size = log.stat().st_size
    source = pb.FileSource(str(log), None, 0, anchors=ANCHORS)
    with open(log, "a") as f:
        f.write(dovecot_login(NOW - 18, "192.0.2.3"))
    lines = list(source)
    assert [line.split("rip=")[1].split(",")[0] for line in lines] == ["192.0.2.1", "192.0.2.2"]
    assert source.lines_read == 2 and source.marks[-1].offset == size
    again = pb.FileSource(str(log), source.state(), 0, anchors=ANCHORS)
    assert ["192.0.2.3" in line for line in again] == [True]


def test_a_failing_grep_leaves_the_rest_to_python(tmp_path, monkeypatch):
    """grep that runs out of memory (here: a limit too small to hold a line)
    fails; the blocks it cannot vouch for are read by Python, with the
    same result."""
    log = tmp_path / "mail.log"
    odd_log(log, 4)
    with open(log, "ab") as f:
        f.write(b"\n" + b"y" * (12 << 20) + b"\n")
        for i in range(1, 50):
            f.write(dovecot_login(NOW - 100 + i, f"192.0.2.{i}").encode())
    expected = read(log)
    assert len([line for line in expected[0] if "rip=192.0.2." in line]) >= 49
    monkeypatch.setattr(pb, "GREP_MEMORY", 8 << 20)
    blocks, got = grep_blocks(log)
    assert None in got
    assert read(log) == expected


def children() -> set[str]:
    return {pid for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()}


def test_no_grep_outlives_its_read(tmp_path):
    log = tmp_path / "mail.log"
    with open(log, "wb") as f:
        genlog.generate(f, 3 * pb.BLOCK_BYTES, "rfc3164", NOW, 1800, 8, 500)
    before = children()
    source = iter(pb.FileSource(str(log), None, 0, anchors=ANCHORS))
    next(source)
    assert children() - before            # grep is running
    source.close()                         # the consumer stops early
    assert children() == before
    full = pb.FileSource(str(log), None, 0, anchors=ANCHORS)
    assert list(full) and children() == before


def test_without_grep_the_python_pre_filter_reads(tmp_path, no_grep):
    log = tmp_path / "mail.log"
    log.write_text(noise(NOW - 30) + dovecot_login(NOW - 20, "192.0.2.1"))
    lines, lines_read, _, marks = read(log)
    assert len(lines) == 1 and "192.0.2.1" in lines[0] and lines_read == 2
    assert marks[-1].offset == os.path.getsize(log)


@pytest.mark.parametrize("impostor", ["true", "cat", "echo", "yes"])
def test_a_grep_that_is_no_gnu_grep_is_not_trusted(tmp_path, monkeypatch, impostor):
    """A "grep" that reads nothing, stops at once, or prints what is not
    "OFFSET:LINE" with rising offsets vouches for no block: Python's
    pre-filter reads them, with the same result."""
    log = tmp_path / "mail.log"
    odd_log(log, 5)
    expected = read(log)
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "grep").symlink_to(require(impostor, "coreutils"))
    monkeypatch.setenv("PATH", str(fake))
    pb.grep_program.cache_clear()
    assert pb.grep_program() == str(fake / "grep")
    before = children()
    assert read(log) == expected
    assert children() == before
