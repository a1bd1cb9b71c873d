"""Sessions keyed by the login's process (a [logout] table with key = "process").

Cyrus names no session on any end line, and one service process serves one
client at a time: the session is the login line's host, program tag and PID,
and a line of that same process that says the connection ended (or the
process's next client) ends it. The key comes from the tag only: nothing in
a message, which may carry a user name the client chose, can pick it. A
logout never opens or extends a session.
"""

import re

import pytest

import pbsmtp_batch as pb
from conftest import NOW, syslog_time

pytestmark = pytest.mark.unit

GRACE = 1800
MAX = 43200
PATTERNS = pb.load_patterns(pb.shipped_patterns_dir())


def cyrus_login(epoch, ip, pid, user="alice", host="mail", tag="cyrus/imap"):
    return (f"{syslog_time(epoch)} {host} {tag}[{pid}]: login: [{ip}] {user} plaintext "
            f"User logged in SESSIONID=<{host}-{int(epoch)}-{pid}-1-42>")


def cyrus_line(epoch, message, pid, host="mail", tag="cyrus/imap"):
    return f"{syslog_time(epoch)} {host} {tag}[{pid}]: {message}"


def login(epoch, ip, pid, **kw):
    found, reason = pb.match_login(cyrus_login(epoch, ip, pid, **kw), PATTERNS, NOW)
    assert found is not None, reason
    return found


def end(epoch, message, pid, **kw):
    found, reason = pb.match_logout(cyrus_line(epoch, message, pid, **kw), PATTERNS, NOW)
    assert reason is None
    return found


def pair(events, now=NOW, sessions=None, grace=GRACE, max_session=MAX):
    return pb.pair_sessions(sessions or {}, events, now, grace, max_session)


USAGE = "USAGE alice user: 0.020006 sys: 0.048783"


def test_the_login_and_its_end_name_the_process():
    a = login(NOW - 100, "192.0.2.10", 6031)
    assert a.session == ("cyrus", "mail", "cyrus/imap", "pid=6031")
    assert end(NOW - 50, USAGE, 6031) == pb.SessionEnd(a.session, NOW - 50)


@pytest.mark.parametrize("message", [
    USAGE,
    "Connection reset by peer, closing connection",
    "idle for too long, closing connection",
    "counts: retr=<0> top=<0> dele=<0>",
    "graceful shutdown",
    "badlogin: [203.0.113.9] plaintext (bob) [SASL(-13): authentication failure: checkpass failed]",
    "accepted connection",
])
def test_each_end_line_of_the_process_ends_its_session(message):
    a = login(NOW - 3 * GRACE, "192.0.2.10", 6031)
    plan = pair([a, end(NOW - 60, message, 6031)])
    assert plan.sessions == {}
    assert [(s.ip, when, why) for s, when, why in plan.ended] == [
        ("192.0.2.10", NOW - 60, "logout")]
    assert plan.logins == [pb.Login("192.0.2.10", NOW - 60, "alice", "cyrus")]


@pytest.mark.parametrize("message", [
    "autocreateinbox: User alice, INBOX was successfully created",
    "imaps TLS negotiation failed: localhost [127.0.0.1]",
    "USAGE alice user: 0.02 sys: 0.04 and more",
    "inittls: Loading hard-coded DH parameters",
])
def test_other_lines_of_the_process_end_nothing(message):
    a = login(NOW - 3 * GRACE, "192.0.2.10", 6031)
    assert end(NOW - 60, message, 6031) is None
    plan = pair([a])
    assert list(plan.sessions) == [a.session]


@pytest.mark.parametrize("other", [
    {"pid": 6032},                          # another process
    {"host": "evil"},                       # the same PID on another host
    {"tag": "cyrus/pop3"},                  # the same PID, another program
])
def test_an_end_of_another_process_ends_nothing(other):
    a = login(NOW - 3 * GRACE, "192.0.2.10", 6031)
    args = {"pid": 6031} | other
    plan = pair([a, end(NOW - 60, USAGE, **args)])
    assert list(plan.sessions) == [a.session] and plan.ended == []
    assert plan.logins == [pb.Login("192.0.2.10", NOW, "alice", "cyrus")]   # kept open


def test_a_user_name_cannot_choose_the_key():
    """A user name that is a SESSIONID of another process, or an end line
    that names another PID, changes nothing: the key is the tag's."""
    a = login(NOW - 100, "192.0.2.10", 6031, user="SESSIONID=<mail-1-6182-1-1>")
    assert a.session[3] == "pid=6031"
    crafted = end(NOW - 50, "badlogin: [203.0.113.9] plaintext (cyrus/imap[6031]: "
                  f"{USAGE}) [SASL(-13): user not found: checkpass failed]", 6182)
    assert crafted.key == ("cyrus", "mail", "cyrus/imap", "pid=6182")
    victim = login(NOW - 100, "192.0.2.11", 6031)
    plan = pair([victim, crafted])
    assert list(plan.sessions) == [victim.session]


def test_an_end_never_opens_or_extends():
    e = end(NOW - 60, USAGE, 6031)
    assert pair([e]).sessions == {} and pair([e]).logins == []
    a = login(NOW - 3 * GRACE, "192.0.2.10", 6031)
    first = pair([a, end(NOW - 2 * GRACE, USAGE, 6031)])
    again = pair([end(NOW - 60, USAGE, 6031)], sessions=first.sessions)
    assert again.sessions == {} and again.logins == []


def test_the_next_login_of_the_process_ends_the_session():
    """An IMAP client that drops its connection makes Cyrus log nothing; the
    process's next client logs in: the first session ended by then."""
    a = login(NOW - 3 * GRACE, "192.0.2.10", 6031)
    b = login(NOW - 120, "192.0.2.20", 6031, user="bob")
    plan = pair([a, b])
    assert [(s.ip, when, why) for s, when, why in plan.ended] == [
        ("192.0.2.10", NOW - 120, "next login")]
    (only,) = plan.sessions.values()
    assert (only.ip, only.user, only.start) == ("192.0.2.20", "bob", NOW - 120)
    assert pb.Login("192.0.2.10", NOW - 120, "alice", "cyrus") in plan.logins
    assert [s.ip for s in plan.opened] == ["192.0.2.20"]


def test_the_next_login_from_an_excluded_address_ends_the_session():
    """Webmail on localhost (in mynetworks) logs in on the process whose
    client dropped: that login goes into no map and opens no session, and
    still ends the session the process served before."""
    lines = [cyrus_login(NOW - 3 * GRACE, "192.0.2.10", 6031),
             cyrus_login(NOW - 120, "127.0.0.1", 6031, user="webmail")]
    mynetworks, _ = pb.parse_mynetworks("127.0.0.0/8")
    events = []
    logins = pb.collect_logins(lines, PATTERNS, mynetworks,
                               pb.Options(logfile="/dev/null", grace=GRACE), NOW, pb.Summary(),
                               pb.quiet, None, events)
    assert logins == []
    plan = pair(events)
    assert [(s.ip, when, why) for s, when, why in plan.ended] == [
        ("192.0.2.10", NOW - 120, "logout")]
    assert plan.sessions == {}


def test_the_next_login_in_a_later_run_ends_the_session():
    a = login(NOW - 3 * GRACE, "192.0.2.10", 6031)
    first = pair([a], now=NOW - 2 * GRACE)
    b = login(NOW - 120, "192.0.2.20", 6031, user="bob")
    second = pair([b], sessions=first.sessions)
    assert [(s.ip, when, why) for s, when, why in second.ended] == [
        ("192.0.2.10", NOW - 120, "next login")]
    assert [s.ip for s in second.sessions.values()] == ["192.0.2.20"]


def test_an_older_login_does_not_replace_the_newer_session():
    b = login(NOW - 120, "192.0.2.20", 6031, user="bob")
    a = login(NOW - 600, "192.0.2.10", 6031)
    plan = pair([b, a])
    assert plan.ended == [] and [s.ip for s in plan.sessions.values()] == ["192.0.2.20"]


def test_the_next_login_from_the_same_address_keeps_one_session():
    a = login(NOW - 600, "192.0.2.10", 6031)
    b = login(NOW - 120, "192.0.2.10", 6031)
    plan = pair([a, b])
    assert plan.ended == []
    (only,) = plan.sessions.values()
    assert (only.ip, only.start) == ("192.0.2.10", NOW - 120)


def test_a_process_keyed_session_ends_at_most_max_session_after_the_login():
    a = login(NOW - MAX - 600, "192.0.2.10", 6031)
    assert pair([a]).sessions == {}          # older than --max-session: opens nothing
    b = login(NOW - 600, "192.0.2.10", 6031)
    first = pair([b])
    later = pair([], now=NOW + MAX, sessions=first.sessions)
    assert [(when, why) for _, when, why in later.ended] == [(NOW - 600 + MAX, "--max-session")]


def test_rfc5424_lines_pair_by_the_procid():
    line = ("<22>1 2026-11-24T22:23:22.365781+00:00 mail cyrus 6031 - - login: "
            "[192.0.2.61] alice plaintext User logged in SESSIONID=<mail-1-6031-2-4>")
    a, _ = pb.match_login(line, PATTERNS, NOW)
    e, _ = pb.match_logout("<22>1 2026-11-24T22:23:23.0+00:00 mail cyrus 6031 - - " + USAGE,
                           PATTERNS, NOW)
    assert a.session == e.key == ("cyrus", "mail", "cyrus", "pid=6031")


def test_a_line_without_pid_opens_and_ends_nothing():
    line = cyrus_login(NOW - 100, "192.0.2.10", 6031).replace("[6031]", "")
    assert pb.match_login(line, PATTERNS, NOW) == (None, None)
    assert pb.match_logout(cyrus_line(NOW - 50, USAGE, 6031).replace("[6031]", ""),
                           PATTERNS, NOW) == (None, None)


def test_process_key_table_errors_name_the_file(tmp_path):
    source = (pb.Path(pb.shipped_patterns_dir()) / "cyrus.toml").read_text()
    path = tmp_path / "cyrus.toml"
    for old, new, message in [
        ('\nkey = "process"', '\nkey = "pid"', "'key' must be"),
        ('\nkey = "process"', "\nkey = \"process\"\nsession = '^login: (?P<session>x)'",
         "no 'session' regex"),
        ("'^graceful shutdown$'", "'^graceful (?P<session>shutdown)$'",
         "captures a session"),
        ("'^graceful shutdown$'", "'graceful shutdown$'", "does not start with"),
        ("\npid = true", "\npid = false", "pairs by PID: set pid = true"),
        ('\nkey = "process"\n', "\n", "'session' must be a regex"),
    ]:
        assert old in source
        path.write_text(source.replace(old, new, 1))
        with pytest.raises(pb.PbsmtpError, match=str(path).replace(".", r"\.") + ".*" + message):
            pb.load_pattern(str(path))


def test_programs_says_whose_logins_open_a_session(tmp_path):
    """courier.toml: only the IMAP daemons' logins open a session; a table
    whose programs is not a regex is refused, naming the file."""
    courier = pb.load_patterns(pb.shipped_patterns_dir(), ["courier"])
    line = ("Nov 24 22:32:50 mail {}[30609]: LOGIN, user=alice, ip=[::ffff:192.0.2.156], "
            "port=[46299], protocol=IMAP")
    imap, _ = pb.match_login(line.format("imapd"), courier, NOW)
    pop3, _ = pb.match_login(line.format("pop3d"), courier, NOW)
    assert imap.session is not None and pop3.session is None and pop3.ip == imap.ip
    source = (pb.Path(pb.shipped_patterns_dir()) / "courier.toml").read_text()
    path = tmp_path / "courier.toml"
    for new, message in [("programs = 5", "'programs' must be a regex"),
                         ("programs = '(unclosed'", "programs")]:
        path.write_text(re.sub(r"(?m)^programs = .*$", new, source, count=1))
        with pytest.raises(pb.PbsmtpError, match=str(path).replace(".", r"\.") + ".*" + message):
            pb.load_pattern(str(path))
