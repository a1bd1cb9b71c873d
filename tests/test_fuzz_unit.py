"""Hypothesis fuzzing of the reader and the matcher (random bytes, mutations
of real success lines, every injection sample) and shares_ipv6_key, with
nothing but Python. The end-to-end runs, Postfix's IPv6 lookups through
postmap and the state machine are in test_fuzz.py.

Hypothesis runs with conftest's profile (fixed seed in CI).
"""

import re
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given, strategies as st

import pbsmtp_batch as pb
from conftest import NOW, budget, dovecot_login, noise
from relay import postfix_lookup_keys

pytestmark = pytest.mark.unit

PATTERNS = pb.load_patterns(pb.shipped_patterns_dir())
KEYWORDS = pb.pattern_anchors(PATTERNS)
HOSTILE = [s.line for p in PATTERNS for s in p.samples if s.injection or not s.ip]
GRACE = 1800


###############################################################################
# Fuzzing: random bytes, and mutations of real success lines ##################
###############################################################################

def read_logins(log: Path, saved, now, pending):
    """What a run would find, through the module's own reader and matcher
    (``pending``: two-line servers' address lines, kept between runs)."""
    reader = pb.FileSource(str(log), saved, now - GRACE, anchors=KEYWORDS)
    found = []
    for raw in reader:
        login, _ = pb.match_login(pb.decode(raw), PATTERNS, now, pending)
        if login:
            found.append((login.ip, login.when))
    return found, reader.state()


def reference(content: bytes, now):
    """The logins of the complete lines, lines split at "\\n" only, in order."""
    complete = content[:content.rfind(b"\n") + 1]
    found, pending = [], {}
    for line in complete.split(b"\n")[:-1]:
        login, _ = pb.match_login(pb.decode(line.decode("latin-1")), PATTERNS, now, pending)
        if login:
            found.append((login.ip, login.when))
    return found


def read_in_two_runs(content: bytes, cut: int):
    """Write content[:cut], read (a first run), write the rest, read again
    (the incremental path); returns every login found."""
    pending = {}
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "mail.log"
        log.write_bytes(content[:cut])
        first, state = read_logins(log, None, NOW, pending)
        with open(log, "ab") as f:
            f.write(content[cut:])
        second, _ = read_logins(log, state, NOW, pending)
    return first + second


GOOD = [dovecot_login(NOW - 100 + i, f"198.18.1.{i}").encode() for i in range(10)]


@budget(150)
@given(chunks=st.lists(st.one_of(st.binary(max_size=300),
                                 st.sampled_from(GOOD),
                                 st.sampled_from([b"\n", b"\r", b"\x00", b"\r\n", b"\xff"])),
                       max_size=40),
       cut=st.floats(0, 1))
def test_fuzz_random_bytes_find_exactly_the_good_lines(chunks, cut):
    """Random bytes around whole success lines: exactly the success lines
    that stand on a line of their own are found, each once, whatever the
    point at which the first run stops (mid-line included)."""
    content = b"".join(chunks)
    found = read_in_two_runs(content, int(cut * len(content)))
    # Never joined or split differently from "\n" lines, whatever the cut.
    assert sorted(found) == sorted(reference(content, NOW))
    # Nothing but the good lines' logins...
    good = {(f"198.18.1.{i}", NOW - 100 + i) for i in range(len(GOOD))}
    assert set(found) <= good
    # ...and each one that stands on a line of its own.
    lines = content[:content.rfind(b"\n") + 1].split(b"\n")[:-1]
    for line in lines:
        if line + b"\n" in GOOD:
            i = GOOD.index(line + b"\n")
            assert (f"198.18.1.{i}", NOW - 100 + i) in found


SAMPLES = [s.line for p in PATTERNS for s in p.samples if s.ip and not s.injection]


TOKENS = [b"\r", b"\n", b"\x00", b" ", b":", b"[", b"]", b"<", b">", b",", b"=", b"::", b".",
          b"%eth0", b"::ffff:", b"rip=", b"ip=[", b"user=", b"Login: ", b"999", b"01",
          b"\xc3\x28", b"\xff", b"Nov 24 23:01:02 ", b"dovecot: ", b"[123]: "]


@st.composite
def mutated(draw):
    line = bytearray(draw(st.sampled_from(SAMPLES + HOSTILE)).encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "splice"]))
        i = draw(st.integers(0, len(line)))
        if op == "insert":
            line[i:i] = draw(st.sampled_from(TOKENS) | st.binary(max_size=3))
        elif op == "delete":
            del line[i:i + draw(st.integers(1, 8))]
        elif op == "replace" and i < len(line):
            line[i] = draw(st.integers(0, 255))
        else:                                  # a piece of another real line
            other = draw(st.sampled_from(SAMPLES)).encode()
            j = draw(st.integers(0, len(other)))
            line[i:i] = other[j:j + draw(st.integers(1, 60))]
    return bytes(line)


def occurs_in(ip: str, line: str) -> bool:
    """Whether the address is written in the line (any spelling Postfix
    would look up the same way)."""
    if "." in ip and ":" not in ip:
        return re.search(rf"(?<![\d.]){re.escape(ip)}(?!\d|\.\d)", line) is not None
    for token in re.findall(r"[0-9A-Za-z.:%]+", line):
        # "ADDR:PORT" with an IPv6 ADDR (imapproxy, perdition) ends at the last colon.
        for candidate in {token, token.strip(".:"), token.removeprefix("::ffff:"),
                          token.rsplit(":", 1)[0]}:
            if pb.normalise_ip(candidate) == ip:
                return True
    return False


@budget(250)
@given(lines=st.lists(st.one_of(mutated(), st.sampled_from(SAMPLES).map(str.encode)),
                      min_size=1, max_size=8),
       cut=st.floats(0, 1))
def test_fuzz_mutated_success_lines_add_no_false_entry(lines, cut):
    """Mutations of real success (and injection) lines from every pattern
    file: whatever is found (1) is what each complete line gives on its own,
    so the reader never joins or splits lines, however the runs fall;
    (2) is a full address that is written in its line; (3) never comes from
    a line that a pattern file lists as a failure or an injection."""
    content = b"\n".join(lines) + b"\n"
    found = read_in_two_runs(content, int(cut * len(content)))
    assert sorted(found) == sorted(reference(content, NOW))
    texts = [pb.decode(line.decode("latin-1")) for line in content.split(b"\n")]
    for ip, _ in found:
        # (A two-line server logs the address on an earlier line.)
        assert pb.normalise_ip(ip) == ip and any(occurs_in(ip, t) for t in texts), ip
    for text in texts:
        login, _ = pb.match_login(text, PATTERNS, NOW)
        assert login is None or text not in HOSTILE, text


@pytest.mark.parametrize("glued", [False, True])
def test_injection_samples_add_nothing_on_either_path(glued):
    """Every failure/injection sample of every pattern file, each on its own
    (a two-line server's address line and success line must not pair up
    across samples), alone or glued behind a noise line with "\\r", read by
    a first run and by an incremental one."""
    for line in HOSTILE:
        text = (noise(NOW).rstrip("\n") + "\r" if glued else "") + line + "\n"
        content = text.encode("utf-8", "surrogateescape")
        assert read_in_two_runs(content, 0) == [], line
        assert read_in_two_runs(content, len(content)) == [], line


###############################################################################
# IPv6: which stored keys Postfix's shortened lookups may hit ################
###############################################################################

def canonical_v6(draw_bits: int) -> str:
    return socket.inet_ntop(socket.AF_INET6, draw_bits.to_bytes(16, "big"))


@st.composite
def v6_keys(draw):
    """Canonical IPv6 addresses with runs of zero groups (so with '::')."""
    groups = [draw(st.sampled_from([0, 0, 0, 1, 0x2001, 0xdb8, 0xffff, 0xabc]))
              for _ in range(8)]
    ip = canonical_v6(int.from_bytes(b"".join(g.to_bytes(2, "big") for g in groups), "big"))
    assume(pb.normalise_ip(ip) == ip and ":" in ip)
    return ip


def hit_by_another_client(key: str) -> bool:
    """Whether some other canonical client address has ``key`` among its
    shortened lookup keys: it must be key + ':' + more groups, and still be
    canonical. Tries every number of added groups with non-zero values."""
    for extra in range(1, 8):
        candidate = key + ":1" * extra
        try:
            packed = socket.inet_pton(socket.AF_INET6, candidate)
        except OSError:
            break
        text = socket.inet_ntop(socket.AF_INET6, packed)
        if text != key and key in postfix_lookup_keys(text):
            return True
    return False


@budget(300)
@given(key=v6_keys())
def test_shares_ipv6_key_is_safe(key):
    """skip mode relies on this: a key that another client's shortened
    lookup can hit is always reported as shared."""
    if hit_by_another_client(key):
        assert pb.shares_ipv6_key(key)


def test_shares_ipv6_key_is_exact():
    for key in ["2001:db8:1:2:3::8", "1::3:4:5:6:7", "2001:db8::1"]:
        assert pb.shares_ipv6_key(key) == hit_by_another_client(key), key
