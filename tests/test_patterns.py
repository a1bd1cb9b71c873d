"""The pattern library, tested the fail2ban way: every sample is a test case.

Each ``patterns/*.toml`` carries its own sample lines. Here every positive
sample must give exactly its ip and user, matched against *all* files (so no
other family steals it); every negative sample must give nothing. On top:
every regex needs a sample that hits it, every file needs a positive, a
negative and an injection sample, and each positive message must still be
found behind every log prefix its family can be written with.
"""

import re
import time
from pathlib import Path

import pytest

import pbsmtp_batch as pb
from conftest import NOW

pytestmark = pytest.mark.unit

PATTERNS_DIR = Path(__file__).resolve().parent.parent / "patterns"

# The guard: adding or removing a family must be deliberate.
EXPECTED_FILES = [
    "courier", "cucipop", "cyrus", "dovecot", "dovecot-log", "dovecot-old", "gnu-pop3d",
    "nginx-mail", "perdition", "popa3d", "qpopper", "solid-pop3d", "teapop", "tpop3d",
    "uw-imap", "vm-pop3d", "vpopmail", "qpopper-trace", "zimbra",
    "imapproxy",
    "kopano-gateway", "dbmail-imapd",
]

PATTERNS = pb.load_patterns(str(PATTERNS_DIR))

# Tags that belong to other daemons. A login pattern whose program regex
# accepts any of them would read lines an attacker can influence (a MAIL FROM
# in a postfix/smtpd reject, a user name in an sshd failure).
FOREIGN_TAGS = [
    "sshd", "postfix/smtpd", "postfix/submission/smtpd", "postfix/smtps/smtpd",
    "postfix/cleanup", "postfix/qmgr", "kernel", "CRON", "cron", "systemd", "sudo", "su",
    "login", "sendmail", "sm-mta", "exim", "opendkim", "amavis", "spamd", "roundcube",
    "HORDE", "sogod", "pbsmtp-batch", "pop-before-smtp", "mail", "x", "-",
]


def samples(*, positive=None):
    return [pytest.param(pattern, sample, id=f"{pattern.name}:{sample.desc}")
            for pattern in PATTERNS for sample in pattern.samples
            if positive is None or (sample.ip is not None) == positive]


def regex_hit(pattern, line):
    """Index of the first regex of *pattern* that matches the line, or None."""
    prefix = pb.parse_prefix(line, NOW)
    if prefix is None or not pattern.program.fullmatch(prefix.program):
        return None
    if pattern.pid and prefix.pid is None:
        return None
    for i, regex in enumerate(pattern.regexes):
        if regex.match(prefix.message):
            return i
    return None


# The library as a whole #######################################################

def test_expected_pattern_files():
    names = sorted(p.stem for p in PATTERNS_DIR.glob("*.toml"))
    assert names == sorted(EXPECTED_FILES)
    assert len(PATTERNS) == len(EXPECTED_FILES) == 22


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_file_has_positive_negative_and_injection_samples(pattern):
    kinds = {"positive": 0, "negative": 0, "injection": 0}
    for s in pattern.samples:
        kinds["positive" if s.ip else "negative"] += 1
        kinds["injection"] += s.injection
    assert all(kinds.values()), f"{pattern.path}: {kinds}"
    assert not any(s.injection and s.ip for s in pattern.samples), \
        "an injection sample must be a non-match"


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_sample_descriptions_are_unique(pattern):
    descs = [s.desc for s in pattern.samples]
    assert all(descs), f"{pattern.path}: every sample needs a desc"
    assert len(descs) == len(set(descs)), f"{pattern.path}: duplicate desc"


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_every_regex_has_a_positive_sample(pattern):
    hit = {regex_hit(pattern, s.line) for s in pattern.samples if s.ip}
    unhit = [r.pattern for i, r in enumerate(pattern.regexes) if i not in hit]
    assert not unhit, f"{pattern.path}: no positive sample for {unhit}"


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_lint(pattern):
    for regex in pattern.regexes:
        assert pb.pattern_problems(regex.pattern, needs_ip=not pattern.address) == []
        assert "user" in regex.groupindex, f"{regex.pattern}: capture the user too"
    for regex in pattern.address:
        assert pb.pattern_problems(regex.pattern) == []
    for tag in FOREIGN_TAGS:
        assert not pattern.program.fullmatch(tag), \
            f"{pattern.path}: program {pattern.program.pattern!r} accepts {tag!r}"
    assert all(c.strip() for c in pattern.contains)
    assert all(u.strip() for u in pattern.unique)
    assert pattern.description and pattern.version
    # The file opens with a comment naming where its formats come from.
    head = Path(pattern.path).read_text().splitlines()[0]
    assert head.startswith("# "), f"{pattern.path}: start with a comment on the source"


# Every sample #################################################################

@pytest.mark.parametrize("pattern, sample", samples())
def test_sample(pattern, sample):
    login, reason = pb.match_sample(sample, PATTERNS, NOW)
    if sample.ip is None:
        assert login is None, f"matched by {login.pattern}: {login}"
        return
    assert login is not None, f"no login ({reason})"
    assert (login.pattern, login.ip, login.user) == (pattern.name, sample.ip, sample.user)
    assert login.when <= NOW, "sample dates must lie before the fixed now"
    if sample.session is not None:
        assert login.session == (pattern.name, pb.parse_prefix(sample.line, NOW).host or "",
                                 pb.parse_prefix(sample.line, NOW).program, sample.session)


@pytest.mark.parametrize("pattern, sample", samples(positive=True))
def test_positive_sample_needs_only_its_own_file(pattern, sample):
    """The `contains` pre-filter of the file itself must let the line through:
    an admin may load only this one family."""
    login, reason = pb.match_sample(sample, [pattern], NOW)
    assert login is not None and login.ip == sample.ip, reason


@pytest.mark.parametrize("pattern, sample", samples(positive=True))
def test_success_message_smuggled_into_another_daemon_is_no_login(pattern, sample):
    """CVE-2001-1075: a MAIL FROM that carries a whole login line lands in
    Postfix's log. Anchoring on the program tag must make it worthless."""
    prefix = pb.parse_prefix(sample.line, NOW)
    tag = prefix.program + (f"[{prefix.pid}]" if prefix.pid else "")
    lines = [
        f"Nov 20 10:11:12 mail postfix/smtpd[3131]: NOQUEUE: reject: RCPT from "
        f"unknown[198.51.100.7]: 554 5.7.1 <x@example.net>: Relay access denied; "
        f'from=<"{tag}: {prefix.message}"@example.net> to=<x@example.net> proto=ESMTP helo=<x>',
        f"Nov 20 10:11:12 mail sshd[77]: Invalid user {tag}: {prefix.message} "
        f"from 198.51.100.7 port 4242",
        f"Nov 20 10:11:12 mail postfix/smtpd[3131]: {tag}: {prefix.message}",
    ]
    for line in lines:
        assert pb.match_login(line, PATTERNS, NOW)[0] is None, line


# The same message behind every prefix its family is written with ##############

def syslog_forms(tag, program, pid, message):
    """The prefixes parse_prefix supports for a syslog line (see its comment)."""
    return {
        "rfc3164": f"Nov 20 10:11:12 mail {tag}: {message}",
        "rfc3164-unpadded-day": f"Nov 2 10:11:12 mail {tag}: {message}",
        "rfc3164-pri": f"<22>Nov 20 10:11:12 mail {tag}: {message}",
        "freebsd-facility": f"Nov 20 10:11:12 <mail.info> mail {tag}: {message}",
        "rfc5424": f"<22>1 2026-11-20T10:11:12.036349+00:00 mail {program} {pid or '-'} "
                   f"- - {message}",
        "rsyslog-precise": f"2026-11-20T10:11:12.036349+01:00 mail {tag}: {message}",
        "journal-short-precise": f"Nov 20 10:11:12.036349 mail {tag}: {message}",
        "journal-short-iso": f"2026-11-20T10:11:12+0100 mail {tag}: {message}",
        "journal-short-full": f"Fri 2026-11-20 10:11:12 UTC mail {tag}: {message}",
    }


_DOVECOT_LOGIN = re.compile(r"(?:Info: )?((?:imap|pop3)-login): (?:Info: )?(.*)", re.DOTALL)


def dovecot_parts(prefix):
    """(service, rest) of a Dovecot login-process line, whichever form it has."""
    if prefix.program in ("imap-login", "pop3-login"):
        return prefix.program, re.sub(r"^Info: ", "", prefix.message)
    if prefix.program in ("dovecot", "Info"):
        m = _DOVECOT_LOGIN.fullmatch(prefix.message)
        if m:
            return m[1], m[2]
    return None


def dovecot_forms(svc, rest, pid):
    tag = "dovecot" + (f"[{pid}]" if pid else "")
    forms = syslog_forms(tag, "dovecot", pid, f"{svc}: {rest}")
    forms.update({
        "dovecot-log_path": f"Nov 20 10:11:12 {svc}: Info: {rest}",
        "dovecot-log_timestamp-iso": f"2026-11-20 10:11:12 {svc}: Info: {rest}",
        "dovecot1-own-log": f"dovecot: 2026-11-20 10:11:12 Info: {svc}: {rest}",
        "dovecot1.0-log_path": f"Nov 20 10:11:12 Info: {svc}: {rest}",
    })
    return forms


# Dovecot 1.1+ writes the same login line through syslog and into its own
# files; dovecot.toml and dovecot-log.toml split those forms between them.
DOVECOT_FILES = {"dovecot", "dovecot-log"}


def family(name):
    return "dovecot" if name in DOVECOT_FILES else name


def forms_of(pattern, line):
    prefix = pb.parse_prefix(line, NOW)
    parts = dovecot_parts(prefix) if pattern.name in DOVECOT_FILES else None
    if parts:
        return dovecot_forms(*parts, prefix.pid)
    tag = prefix.program + (f"[{prefix.pid}]" if prefix.pid else "")
    return syslog_forms(tag, prefix.program, prefix.pid, prefix.message)


def prefix_cases():
    cases = []
    for pattern, sample in (p.values for p in samples(positive=True)):
        # A two-line server's earlier lines go behind the same prefix.
        befores = [forms_of(pattern, line) for line in sample.before]
        for form, line in forms_of(pattern, sample.line).items():
            cases.append(pytest.param(pattern, sample, form, [b[form] for b in befores], line,
                                      id=f"{pattern.name}:{sample.desc}:{form}"))
    return cases


@pytest.mark.parametrize("pattern, sample, form, before, line", prefix_cases())
def test_prefix_matrix(pattern, sample, form, before, line):
    pending = {}
    for earlier in before:
        pb.match_login(earlier, PATTERNS, NOW, pending)
    login, reason = pb.match_login(line, PATTERNS, NOW, pending)
    assert login is not None, f"{line!r}: {reason}"
    assert (family(login.pattern), login.ip, login.user) == \
        (family(pattern.name), sample.ip, sample.user)
    day = 2 if form == "rfc3164-unpadded-day" else 20
    # Within an hour: some forms carry +01:00, the others are UTC (pinned TZ).
    assert login.when == pytest.approx(time.mktime((2026, 11, day, 10, 11, 12, 0, 0, -1)),
                                       abs=3600)


# Forms beyond the prefix matrix ##############################################

def more_forms(pattern, prefix):
    tag = prefix.program + (f"[{prefix.pid}]" if prefix.pid else "")
    forms = {
        # rsyslog RSYSLOG_SyslogProtocol23Format, seen live (test_daemon_logins).
        "rsyslog-rfc5424": f"<22>1 2026-11-20T10:11:12.036349+00:00 mail {prefix.program} "
                           f"{prefix.pid or '-'} - -  {prefix.message}",
        # Solaris syslogd with msgid: "[ID n facility.level]" after the tag.
        "solaris-msgid": f"Nov 20 10:11:12 mail {tag}: [ID 583609 mail.info] {prefix.message}",
    }
    if pattern.name == "nginx-mail":
        # nginx's own error.log: its own time, no syslog prefix.
        forms["nginx-error-log"] = re.sub(r"^(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?",
                                          "2026/11/20 10:11:12 ", prefix.message)
    return forms


@pytest.mark.parametrize("form", ["rsyslog-rfc5424", "solaris-msgid", "nginx-error-log"])
def test_more_prefix_forms(form):
    missed = []
    for pattern, sample in (p.values for p in samples(positive=True)):
        if sample.before:
            continue                          # two-line forms: see test_prefix_matrix
        prefix = pb.parse_prefix(sample.line, NOW)
        if pattern.name in DOVECOT_FILES and dovecot_parts(prefix):
            svc, rest = dovecot_parts(prefix)
            prefix = pb.parse_prefix(f"Nov 20 10:11:12 mail dovecot: {svc}: {rest}", NOW)
        line = more_forms(pattern, prefix).get(form)
        if line is None:
            continue
        login, _ = pb.match_login(line, PATTERNS, NOW)
        if login is None or login.ip != sample.ip:
            missed.append(line)
    assert not missed, f"{len(missed)} lines not read, e.g. {missed[0]!r}"


# Logout patterns: the [logout] table of a file ###############################

LOGOUT_PATTERNS = [p for p in PATTERNS if p.logout is not None]


def logout_samples():
    return [pytest.param(pattern, sample, id=f"{pattern.name}:logout:{sample.desc}")
            for pattern in LOGOUT_PATTERNS for sample in pattern.logout.samples]


def test_dovecot_has_logout_patterns():
    assert "dovecot" in [p.name for p in LOGOUT_PATTERNS]


@pytest.mark.parametrize("pattern", LOGOUT_PATTERNS, ids=lambda p: p.name)
def test_logout_positive_negative_and_injection_samples(pattern):
    samples_ = pattern.logout.samples
    assert any(s.session for s in samples_), f"{pattern.path}: no logout sample that ends"
    assert any(not s.session and not s.injection for s in samples_), "no negative sample"
    assert any(s.injection for s in samples_), f"{pattern.path}: no logout injection sample"
    assert not any(s.injection and s.session for s in samples_)
    descs = [s.desc for s in samples_]
    assert all(descs) and len(descs) == len(set(descs))
    # Every session a positive login sample opens is one that a logout regex can name.
    for regex in pattern.logout.regexes:
        assert pb.logout_problems(regex.pattern, pattern.logout.process) == []
        hits = [s for s in samples_ if s.session and regex.match(
            pb.parse_prefix(s.line, NOW).message)]
        assert hits, f"{pattern.path}: no logout sample for {regex.pattern}"


@pytest.mark.parametrize("pattern, sample", logout_samples())
def test_logout_sample(pattern, sample):
    assert pb.match_logout_sample(sample, PATTERNS, NOW) == sample.session
    end, _ = pb.match_logout(sample.line, PATTERNS, NOW)
    if sample.session:
        assert end.key[0] == pattern.name and end.when <= NOW
    # A logout line is never a login.
    assert pb.match_login(sample.line, PATTERNS, NOW) == (None, None)


@pytest.mark.parametrize("pattern, sample", [p for p in logout_samples()
                                             if p.values[1].session])
def test_logout_smuggled_into_another_daemon_ends_nothing(pattern, sample):
    """An end line inside a Postfix reject (a MAIL FROM the client chose)."""
    prefix = pb.parse_prefix(sample.line, NOW)
    smuggled = (f"Nov 24 23:20:00 mail postfix/smtpd[999]: NOQUEUE: reject: from=<"
                f"{prefix.message}>")
    assert pb.match_logout(smuggled, PATTERNS, NOW) == (None, None)


def test_sample_failures_covers_logout_samples():
    assert pb.sample_failures(PATTERNS, NOW) == []
