"""Sessions, the pure part: pair_sessions, match_logout and the state file's text.

A login that names its session (Dovecot's session=<ID>) keeps its address in
the map until a line of the same pattern, host and program ends that very
session, and at most --max-session after the login; the grace window runs
from the end. A logout never opens or extends anything.
"""

import dataclasses

import pytest

import pbsmtp_batch as pb
from conftest import NOW, syslog_time

pytestmark = pytest.mark.unit

GRACE = 1800
MAX = 43200
PATTERNS = pb.load_patterns(pb.shipped_patterns_dir())


def login_line(epoch, ip, session, user="alice", host="mail", proto="imap"):
    return (f"{syslog_time(epoch)} {host} dovecot: {proto}-login: Login: user=<{user}>, "
            f"method=PLAIN, rip={ip}, lip=192.0.2.1, mpid=4242, TLS, session=<{session}>")


def end_line(epoch, session, user="alice", host="mail", tag="dovecot", proto="imap"):
    return (f"{syslog_time(epoch)} {host} {tag}: {proto}({user})<4242><{session}>: "
            f"Disconnected: Logged out in=10 out=20")


def login(epoch, ip, session, **kw):
    found, reason = pb.match_login(login_line(epoch, ip, session, **kw), PATTERNS, NOW)
    assert found is not None, reason
    return found


def end(epoch, session, **kw):
    found, reason = pb.match_logout(end_line(epoch, session, **kw), PATTERNS, NOW)
    assert found is not None, reason
    return found


def pair(events, now=NOW, sessions=None, grace=GRACE, max_session=MAX):
    return pb.pair_sessions(sessions or {}, events, now, grace, max_session)


# Reading the lines ############################################################

def test_login_names_its_session_and_the_end_the_same_key():
    a = login(NOW - 100, "192.0.2.10", "Sess0000A1")
    e = end(NOW - 50, "Sess0000A1")
    assert a.session == ("dovecot", "mail", "dovecot", "Sess0000A1")
    assert e == pb.SessionEnd(a.session, NOW - 50)


def test_a_login_without_session_element_opens_nothing():
    line = login_line(NOW - 100, "192.0.2.10", "X").replace(", session=<X>", "")
    found, _ = pb.match_login(line, PATTERNS, NOW)
    assert found.ip == "192.0.2.10" and found.session is None


def test_a_proxy_login_opens_no_session():
    """Its end is not a line this table reads: it counts for --grace only."""
    line = (f"{syslog_time(NOW - 10)} proxy1 dovecot: imap-login: proxy(oscar): started "
            f"proxying to 10.0.0.5:143: user=<oscar>, method=PLAIN, rip=203.0.113.90, "
            f"lip=203.0.113.2, secured, session=<GKEBFAwQMgDBAgFf>")
    found, _ = pb.match_login(line, PATTERNS, NOW)
    assert found.ip == "203.0.113.90" and found.session is None


def test_two_session_elements_open_nothing():
    line = login_line(NOW - 100, "192.0.2.10", "Sess0000A1") + ", session=<Sess0000A2>"
    found, _ = pb.match_login(line, PATTERNS, NOW)
    assert found is not None and found.session is None


def test_only_the_logout_table_of_the_loaded_patterns_counts():
    others = [p for p in PATTERNS if p.name != "dovecot"]
    assert pb.match_logout(end_line(NOW, "Sess0000A1"), others, NOW) == (None, None)


def test_logout_line_without_time_ends_nothing():
    line = "dovecot: imap(alice)<4242><Sess0000A1>: Disconnected: Logged out in=1 out=2"
    assert pb.match_logout(line, PATTERNS, NOW)[0] is None


# Pairing ######################################################################

def test_open_session_keeps_its_address_past_the_grace_window():
    a = login(NOW - 3 * GRACE, "192.0.2.10", "Sess0000A1")
    plan = pair([a])
    assert list(plan.sessions) == [a.session]
    # Written again at now: the address stays in the map.
    assert plan.logins == [pb.Login("192.0.2.10", NOW, "alice", "dovecot")]
    assert [s.ip for s in plan.kept] == ["192.0.2.10"]
    merged = pb.merge({}, plan.logins, NOW, GRACE)
    assert merged.entries == {"192.0.2.10": NOW}


def test_the_end_starts_the_grace_window():
    a = login(NOW - 3 * GRACE, "192.0.2.10", "Sess0000A1")
    plan = pair([a, end(NOW - 60, "Sess0000A1")])
    assert plan.sessions == {}
    assert [(s.ip, when, why) for s, when, why in plan.ended] == [
        ("192.0.2.10", NOW - 60, "logout")]
    assert plan.logins == [pb.Login("192.0.2.10", NOW - 60, "alice", "dovecot")]
    # Grace later, it has expired like any login.
    later = pb.merge(pb.merge({}, plan.logins, NOW, GRACE).entries, [], NOW + GRACE,
                     GRACE, checked=True)
    assert later.entries == {} and later.expired == {"192.0.2.10": NOW - 60}


def test_the_end_in_a_later_run():
    a = login(NOW - 600, "192.0.2.10", "Sess0000A1")
    first = pair([a], now=NOW - 500)
    assert first.logins == [] and list(first.sessions) == [a.session]   # seen is recent
    second = pair([end(NOW - 100, "Sess0000A1")], now=NOW, sessions=first.sessions)
    assert second.sessions == {} and second.logins == [
        pb.Login("192.0.2.10", NOW - 100, "alice", "dovecot")]


@pytest.mark.parametrize("other", [
    {"host": "evil"},                       # same id, another host
    {"tag": "Info"},                        # same id, another program
])
def test_an_end_from_elsewhere_ends_nothing(other):
    a = login(NOW - 3 * GRACE, "192.0.2.10", "Sess0000A1")
    plan = pair([a, end(NOW - 60, "Sess0000A1", **other)])
    assert list(plan.sessions) == [a.session] and plan.ended == []


def test_an_end_of_another_pattern_ends_nothing():
    a = login(NOW - 3 * GRACE, "192.0.2.10", "Sess0000A1")
    forged = pb.SessionEnd(("courier", *a.session[1:]), NOW - 60)
    plan = pair([a, forged])
    assert list(plan.sessions) == [a.session] and plan.ended == []


def test_an_end_never_opens_or_extends():
    # No session open: an end line opens nothing and gives no login.
    plan = pair([end(NOW - 60, "Sess0000A1")])
    assert (plan.sessions, plan.logins, plan.ended) == ({}, [], [])
    # Repeated ends of an ended session: the second finds nothing.
    a = login(NOW - 600, "192.0.2.10", "Sess0000A1")
    plan = pair([a, end(NOW - 500, "Sess0000A1"), end(NOW - 10, "Sess0000A1")])
    assert [when for _, when, _ in plan.ended] == [NOW - 500]
    assert plan.logins == [pb.Login("192.0.2.10", NOW - 500, "alice", "dovecot")]


def test_an_end_older_than_its_login_ends_nothing():
    a = login(NOW - 600, "192.0.2.10", "Sess0000A1")
    plan = pair([a, end(NOW - 700, "Sess0000A1")])
    assert list(plan.sessions) == [a.session] and plan.ended == []


def test_max_session_ends_a_session_without_end_line():
    a = login(NOW - 1000, "192.0.2.10", "Sess0000A1")
    kept = pair([a], now=NOW - 950, max_session=900).sessions
    assert list(kept) == [a.session]
    plan = pair([], sessions=kept, max_session=900)
    assert plan.sessions == {}
    assert [(when, why) for _, when, why in plan.ended] == [(NOW - 100, "--max-session")]
    assert plan.logins == [pb.Login("192.0.2.10", NOW - 100, "alice", "dovecot")]


def test_an_end_after_max_session_counts_from_max_session():
    a = login(NOW - 1000, "192.0.2.10", "Sess0000A1")
    kept = pair([a], now=NOW - 950, max_session=900).sessions
    plan = pair([end(NOW - 10, "Sess0000A1")], sessions=kept, max_session=900)
    assert [when for _, when, _ in plan.ended] == [NOW - 100]


def test_login_older_than_max_session_opens_nothing():
    a = login(NOW - 1000, "192.0.2.10", "Sess0000A1")
    plan = pair([a], max_session=1000)
    assert (plan.sessions, plan.logins) == ({}, [])


def test_max_session_zero_opens_nothing():
    a = login(NOW - 10, "192.0.2.10", "Sess0000A1")
    assert pair([a], max_session=0).sessions == {}


def test_refresh_only_when_half_a_grace_window_old():
    a = login(NOW - GRACE // 2 + 5, "192.0.2.10", "Sess0000A1")
    assert pair([a]).logins == []
    b = login(NOW - GRACE // 2, "192.0.2.10", "Sess0000A1")
    plan = pair([b])
    assert plan.logins == [pb.Login("192.0.2.10", NOW, "alice", "dovecot")]
    assert plan.sessions[b.session].seen == NOW
    assert plan.sessions[b.session].start == NOW - GRACE // 2


def test_a_new_login_with_the_same_key_replaces_the_session():
    a = login(NOW - 600, "192.0.2.10", "Sess0000A1")
    b = login(NOW - 300, "192.0.2.99", "Sess0000A1")
    plan = pair([a, b])
    (only,) = plan.sessions.values()
    assert (only.ip, only.start, only.seen) == ("192.0.2.99", NOW - 300, NOW - 300)


def test_bounded_oldest_forgotten(monkeypatch):
    monkeypatch.setattr(pb, "SESSIONS_MAX", 3)
    logins = [login(NOW - 100 + i, f"192.0.2.{10 + i}", f"Sess0000B{i}") for i in range(5)]
    plan = pair(logins)
    assert plan.dropped == 2
    assert sorted(s.ip for s in plan.sessions.values()) == [
        "192.0.2.12", "192.0.2.13", "192.0.2.14"]
    assert sorted(s.ip for s in plan.opened) == ["192.0.2.12", "192.0.2.13", "192.0.2.14"]


def test_session_state_text_round_trip(tmp_path):
    a = login(NOW - 600, "2001:db8::10", "Sess0000A1", user='x"y')
    sessions = pair([a]).sessions
    path = tmp_path / "log.sessions"
    path.write_text(pb.sessions_text(sessions))
    path.chmod(0o600)
    assert pb.load_sessions(str(path)) == (sessions, None)
    assert pb.load_sessions(str(tmp_path / "absent")) == ({}, None)


@pytest.mark.parametrize("text", [
    "not json", '[{"key": ["a"], "ip": "192.0.2.1", "user": null, "start": 1, "seen": 1}]',
    '[{"key": ["a", "b", "c", "d"], "ip": "192.0.2.0/24", "user": null, "start": 1, '
    '"seen": 1}]',
    '[{"key": ["a", "b", "c", "d"], "ip": "192.0.2.1", "user": null, "start": "x", '
    '"seen": 1}]',
    '{"a": 1}',
])
def test_a_damaged_state_file_forgets_the_sessions(tmp_path, text):
    path = tmp_path / "log.sessions"
    path.write_text(text)
    path.chmod(0o600)
    sessions, problem = pb.load_sessions(str(path))
    assert sessions == {} and "damaged" in problem


def test_the_reader_finds_the_end_lines():
    """The read path's anchors must let every logout sample through."""
    anchors = pb.pattern_anchors(PATTERNS)
    for pattern in PATTERNS:
        for sample in pattern.logout.samples if pattern.logout else ():
            if sample.session:
                block = (sample.line + "\n").encode()
                assert pb.candidate_lines(block, anchors) == [sample.line.encode()]


def test_logout_table_errors_name_the_file(tmp_path):
    source = (pb.Path(pb.shipped_patterns_dir()) / "dovecot.toml").read_text()
    for bad, message in [
        ("regex = [\n  '^(?:Info: )?(?:imap|pop3)\\((?P<user>[^()<>]*)\\)",
         "regex = [\n  '^.*(?:imap|pop3)\\((?P<user>[^()<>]*)\\)"),
    ]:
        path = tmp_path / "dovecot.toml"
        path.write_text(source.replace(bad, message, 1))
        with pytest.raises(pb.PbsmtpError, match=r"\[logout\]: regex .* greedy"):
            pb.load_pattern(str(path))
    path.write_text(source.replace("[[logout.sample]]\ndesc", "[[logout.sample]]\nip = '1'\ndesc",
                                   1))
    with pytest.raises(pb.PbsmtpError, match="unknown key 'ip' in a \\[\\[logout.sample\\]\\]"):
        pb.load_pattern(str(path))
    path.write_text(source.replace("session = '^(?:Info", "session = '(?:Info", 1)
                    .replace("(?P<session>[A-Za-z0-9+/]+)>?(?:,|$)'", "[A-Za-z0-9+/]+)'", 1))
    with pytest.raises(pb.PbsmtpError, match="'session' must be a regex with a"):
        pb.load_pattern(str(path))


def test_sample_failures_report_a_wrong_logout_sample():
    dovecot = next(p for p in PATTERNS if p.name == "dovecot")
    sample = next(s for s in dovecot.logout.samples if s.session)
    wrong = dataclasses.replace(sample, session="NotThisOne")
    rules = dataclasses.replace(dovecot.logout, samples=(wrong,))
    patterns = [dataclasses.replace(dovecot, logout=rules, samples=())]
    (failure,) = pb.sample_failures(patterns, NOW)
    assert "expected NotThisOne" in failure and sample.session in failure
