"""Attacks on the promises of the README's "Guarantees", acted out.

Each test plays what an attacker (any local account that can write to
syslog, or a POP/IMAP client that chooses every byte of its user name)
would do, and checks that no false entry appears and that no run stalls.
Here the attacks on the patterns and the parser alone (nothing but Python);
those that take whole runs with the real postmap are in test_redteam_tools.py.
"""

import re
import time
from pathlib import Path

import pytest

import pbsmtp_batch as pb
from conftest import NOW, syslog_time, two_line_attack

pytestmark = pytest.mark.unit

PATTERNS_DIR = Path(__file__).resolve().parent.parent / "patterns"
PATTERNS = pb.load_patterns(str(PATTERNS_DIR))


###############################################################################
# Two-line servers: a stale address never passes to a later session ##########
###############################################################################

# (program, an address line the pattern reads, an address line it cannot read
# (stock tcpd without a resolver's help logs only a host name), a success line)
TWO_LINE = [
    ("popa3d", "Session from {ip}", "connect from alice-pc.example.net",
     "Authentication passed for alice"),
    ("popa3d", "connect from {ip} ({ip})", "connect from alice-pc.example.net",
     "Authentication passed for alice"),
    ("spop3d", "connect from {ip}", "connect from alice-pc.example.net",
     "user alice authenticated"),
    ("solid-pop3d", "connect from {ip}", "connect from alice-pc.example.net",
     "user alice authenticated"),
    ("vm-pop3d", "Connect from {ip}", "Connect from alice-pc.example.net",
     "User 'alice' logged in"),
]


@pytest.mark.parametrize("program,address,unreadable,success", TWO_LINE)
def test_stale_address_is_not_paired_with_a_later_session(program, address, unreadable,
                                                            success):
    pending, found = {}, []
    for line in two_line_attack(program, address, unreadable, success):
        login, _ = pb.match_login(line.rstrip("\n"), PATTERNS, NOW, pending)
        found += [login] if login else []
    assert found == [] and pending == {}


@pytest.mark.parametrize("program,address,unreadable,success", TWO_LINE)
def test_any_line_of_the_session_ends_the_waiting_address(program, address, unreadable,
                                                           success):
    """Not only an unreadable address line: a failure, a notice, anything."""
    for middle in ("Authentication failed for bob", "Didn't attempt authentication",
                   "session ended", "x"):
        pending = {}
        lines = two_line_attack(program, address, middle, success)
        found = [pb.match_login(line.rstrip("\n"), PATTERNS, NOW, pending)[0] for line in lines]
        assert found == [None, None, None], middle


@pytest.mark.parametrize("program,address,unreadable,success", TWO_LINE)
def test_same_session_still_pairs(program, address, unreadable, success):
    pending = {}
    lines = [f"{syslog_time(NOW - 100)} mail {program}[77]: {address.format(ip='192.0.2.33')}",
             f"{syslog_time(NOW - 99)} mail {program}[78]: {unreadable}",   # another PID
             f"{syslog_time(NOW - 98)} mail {program}[77]: {success}"]
    logins = [pb.match_login(line, PATTERNS, NOW, pending)[0] for line in lines]
    assert logins[:2] == [None, None] and logins[2].ip == "192.0.2.33"


###############################################################################
# A line cut short never reads as a success ###################################
###############################################################################

def result(sample, line):
    login, _ = pb.match_sample(pb.Sample(line=line, before=sample.before), PATTERNS, NOW)
    return login and (login.ip, login.user)


def message_start(line):
    prefix = pb.parse_prefix(line, NOW)
    return len(line) - len(prefix.message) if prefix else 0


# The servers' own lines that are no login (an injection sample is a crafted
# user name: cut short, it is a success line again, which the length bound
# below refuses).
NEGATIVES = [pytest.param(s, id=f"{p.name}:{s.desc}")
             for p in PATTERNS for s in p.samples if s.ip is None and not s.injection]


@pytest.mark.parametrize("sample", NEGATIVES)
def test_a_line_that_is_no_login_is_none_at_any_length(sample):
    """A failure (or any non-login) line cut at any length is still no
    login: no pattern may take a line as a success because the part that
    would say "failed" is missing."""
    line = sample.line
    if "cmd=Auth;" in line and "error=" in line:
        # Zimbra's audit.log says "failed" only by an error= after the
        # success form, and the user name comes before it: nothing in the
        # format can tell a cut line, so only the length bound protects it
        # (the test below).
        pytest.skip("Zimbra audit.log: the failure is only an error= at the end")
    found = {cut: result(sample, line[:cut])
             for cut in range(message_start(line), len(line))}
    assert {cut: got for cut, got in found.items() if got} == {}


# Where syslog daemons and servers cut a long line: RFC 3164's and old
# syslogds' 1024-byte packet, libvanessa-logger 2000-2002 (1023), perdition
# 1.17's buffer (4096), rsyslog's default maxMessageSize (8 KiB).
CUTS = (1022, 4094, 8191)
WITH_USER = [pytest.param(s, id=f"{p.name}:{s.desc}") for p in PATTERNS for s in p.samples
             if s.user and s.line.count(s.user) == 1]


@pytest.mark.parametrize("sample", WITH_USER)
def test_a_long_user_name_cut_anywhere_after_it_gives_no_login(sample):
    """The client chooses the user name's length, so it chooses where a
    buffer cuts the line: right after the user, inside a failure word, in
    the middle of the address. Cut at every position after the user field,
    at every real buffer size, a line gives no login, and nor does the whole
    long line."""
    line, user = sample.line, sample.user
    end = line.index(user) + len(user)
    tail = len(line) - end
    for size in CUTS:
        for after in range(tail + 1):
            padding = size - after - end
            long_line = line[:end - len(user)] + user + "a" * padding + line[end:]
            assert result(sample, long_line[:size]) is None, (size, after)
        assert result(sample, long_line) is None


@pytest.mark.parametrize("line", [
    # perdition 1.x: a failure line whose status= was cut off
    'Nov 24 22:13:34 mail perdition[26129]: Auth: 203.0.113.66->198.51.100.1 user="bob" '
    'server="pop.example.org" port="110" status="failed"',
    # Cyrus: an anonymous login (refused) cut inside its mechanism's name
    'Nov 24 22:41:04 mail cyrus/imap[3110]: login: [203.0.113.66] guest anonymous User logged in',
])
def test_named_failures_cut_short(line):
    sample = pb.Sample(line=line)
    assert [cut for cut in range(message_start(line), len(line) + 1)
            if result(sample, line[:cut])] == []


###############################################################################
# Linear time per line, whatever the line ####################################
###############################################################################

def tokens(text):
    """Where a text can be stretched: each field with its separator, and
    each pair of neighbouring fields, as (start, token)."""
    spans = [(m.start(), m.group()) for m in re.finditer(r"[^\s,;]*[\s,;]+|[^\s,;]+$", text)]
    pairs = [(a[0], a[1] + b[1]) for a, b in zip(spans, spans[1:])]
    return spans + pairs + [(i, c) for i, c in enumerate(text) if not c.isalnum()]


def stretched(text, n):
    """Adversarial inputs built from a sample: a token repeated n times in
    its own place, with the rest of the text after it and without."""
    seen = set()
    for start, token in tokens(text):
        for tail in (text[start:], ""):
            key = (start, token, bool(tail))
            if key not in seen:
                seen.add(key)
                yield key, text[:start] + token * n + tail


def best_time(function, text, runs):
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        function(text)
        best = min(best, time.perf_counter() - t0)
    return best


def superlinear(function, texts, n=200, growth=4, runs=3, slack=3.0):
    """The inputs whose time grows faster than linearly: time for growth*n
    repeats against n repeats, the best of several runs, with slack for a
    noisy machine (linear gives ~4, quadratic ~16). Cheap inputs are
    screened once, and only those that look bad are measured again."""
    small = {key: text for key, text in stretched_all(texts, n)}
    large = {key: text for key, text in stretched_all(texts, n * growth)}
    bad = []
    for key in small:
        for attempt in range(3):
            t_small = best_time(function, small[key], runs)
            t_large = best_time(function, large[key], runs)
            if t_large < 1e-4 or t_large <= growth * slack * max(t_small, 1e-6):
                break
            runs += 2                 # measure again, more carefully
        else:
            bad.append((key, round(t_large / max(t_small, 1e-6), 1)))
            break                     # one is enough to fail, and they are slow
    return bad


def stretched_all(texts, n):
    for i, text in enumerate(texts):
        for key, value in stretched(text, n):
            yield (i, *key), value


def regex_cases():
    for pattern in PATTERNS:
        messages = []
        for sample in pattern.samples:
            for line in (*sample.before, sample.line):
                prefix = pb.parse_prefix(line, NOW)
                if prefix is not None:
                    messages.append(prefix.message)
        for i, regex in enumerate((*pattern.regexes, *pattern.address)):
            yield pytest.param(regex, messages, id=f"{pattern.name}:{i}")


@pytest.mark.parametrize("regex,messages", list(regex_cases()))
def test_every_pattern_regex_is_linear(regex, messages):
    # A line is bounded by LINE_MAX before any regex sees it; repeats make
    # inputs of a few KiB at most, under that bound.
    texts = [m[:200] for m in messages]
    assert superlinear(regex.match, texts, n=250) == []


def test_the_prefix_parser_is_linear():
    lines = sorted({line for p in PATTERNS for s in p.samples for line in (*s.before, s.line)})
    assert superlinear(lambda text: pb.parse_prefix(text, NOW), lines, n=250) == []


###############################################################################
# Real log formats ############################################################
###############################################################################

@pytest.mark.parametrize("line,ip,user", [
    ("Nov 24 23:05:01 mail dovecot: imap-login: user=<alice>, method=PLAIN, rip=192.0.2.80, "
     "lip=192.0.2.1, TLS Login", "192.0.2.80", "alice"),
    ("Nov 24 23:05:02 mail dovecot: pop3-login: user=<bob>, method=PLAIN, rip=192.0.2.81, "
     "lip=192.0.2.1 Login", "192.0.2.81", "bob"),
    ("Nov 24 23:05:03 mail dovecot: imap-login: user=<carol>, method=PLAIN, rip=192.0.2.82, "
     "lip=192.0.2.1, secured Login", "192.0.2.82", "carol"),
    ("Nov 24 23:05:04 zimbra1 mailboxlog 2026-11-24 23:05:04,123 INFO  [ImapServer-7] "
     "[name=dave@example.org;ip=198.51.100.2;oip=192.0.2.83;] imap - user dave@example.org "
     "authenticated, mechanism=PLAIN [TLS]", "192.0.2.83", "dave@example.org"),
])
def test_dovecot_message_last_and_zimbra_through_syslog(line, ip, user):
    login, _ = pb.match_login(line, PATTERNS, NOW, {})
    assert login is not None and (login.ip, login.user) == (ip, user)


def test_dovecot_24_auth_rejections_are_not_offered_as_unmatched_logins():
    lines = [
        "Nov 24 23:06:01 mail dovecot: auth: Username character disallowed by "
        "auth_username_chars: 0x2c (username: x, rip=203.0.113.9, lip=192.0.2.1)",
        "Nov 24 23:06:02 mail dovecot: auth: passwd-file(x,203.0.113.9): request rejected "
        "(user=<x>, rip=203.0.113.9)",
        "Nov 24 23:06:03 mail dovecot: imap-login: Login aborted: Logged out (auth failed, "
        "1 attempts in 2 secs) (auth_failed): user=<u>, rip=203.0.113.9, lip=192.0.2.1",
        "Nov 24 23:06:04 mail newpop[7]: user carol logged in from 198.51.100.9",
    ]
    report = pb.check_log(lines, PATTERNS, NOW)
    assert report.unmatched == [lines[-1]]
