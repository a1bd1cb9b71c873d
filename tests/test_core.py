"""Pure functions, tested with tables of cases."""

import time

import pytest

import pbsmtp_batch as pb
from conftest import NOW

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1", "192.0.2.1"),
    ("255.255.255.255", "255.255.255.255"),
    ("0.0.0.0", "0.0.0.0"),
    ("2001:DB8::1", "2001:db8::1"),
    ("2001:db8:0:0:0:0:0:1", "2001:db8::1"),
    ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),      # longest zero run compressed
    ("2001:db8:1:0:1:1:1:1", "2001:db8:1:0:1:1:1:1"),  # a single zero group stays
    ("::ffff:192.0.2.9", "192.0.2.9"),                # IPv4-mapped becomes IPv4
    ("::FFFF:192.0.2.9", "192.0.2.9"),
    ("::ffff:c000:209", "192.0.2.9"),
    ("::1", "::1"),
    ("999.1.1.1", None),
    ("1.2.3", None),
    ("01.02.03.04", None),
    ("1.2.3.4.5", None),
    ("::ffff:999.0.0.1", None),
    ("fe80::1%eth0", None),
    ("mail.example.org", None),
    ("", None),
    ("192.0.2.1 ", None),
    ("2001:db8::1::2", None),
])
def test_normalise_ip(text, expected):
    assert pb.normalise_ip(text) == expected


def utc(text):
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))  # TZ is pinned to UTC


@pytest.mark.parametrize("line, when, host, program, pid, message", [
    ("Nov 24 23:01:02 mail dovecot: imap-login: Login: x",
     "2026-11-24 23:01:02", "mail", "dovecot", None, "imap-login: Login: x"),
    ("Nov  4 23:01:02 mail dovecot[812]: m",
     "2026-11-04 23:01:02", "mail", "dovecot", "812", "m"),
    ("Nov 4 23:01:02 mail dovecot[812]: m",
     "2026-11-04 23:01:02", "mail", "dovecot", "812", "m"),
    ("<22>Nov 24 23:01:02 mail dovecot: m",
     "2026-11-24 23:01:02", "mail", "dovecot", None, "m"),
    ("Nov 24 23:01:02 <mail.info> mail dovecot: m",
     "2026-11-24 23:01:02", "mail", "dovecot", None, "m"),
    ("Nov 24 23:01:02.123456 mail cyrus/imap[7]: m",            # journalctl short-precise
     "2026-11-24 23:01:02", "mail", "cyrus/imap", "7", "m"),
    ("2026-11-24T23:01:02.036349+00:00 mail dovecot: m",       # rsyslog precise
     "2026-11-24 23:01:02", "mail", "dovecot", None, "m"),
    ("2026-11-25T00:01:02.036349+01:00 mail dovecot: m",
     "2026-11-24 23:01:02", "mail", "dovecot", None, "m"),
    ("2026-11-24T23:01:02+0000 mail dovecot[9]: m",            # journalctl short-iso
     "2026-11-24 23:01:02", "mail", "dovecot", "9", "m"),
    ("2026-11-24T23:01:02.123456+0000 mail dovecot[9]: m",     # short-iso-precise
     "2026-11-24 23:01:02", "mail", "dovecot", "9", "m"),
    ("Tue 2026-11-24 23:01:02 UTC mail dovecot[9]: m",         # short-full
     "2026-11-24 23:01:02", "mail", "dovecot", "9", "m"),
    ("<22>1 2026-11-24T23:01:02.036349+00:00 mail dovecot 812 - - m",  # RFC 5424
     "2026-11-24 23:01:02", "mail", "dovecot", "812", "m"),
    ("<22>1 2026-11-24T23:01:02Z mail cyrus - - [x@1 a=\"]\"] m",
     "2026-11-24 23:01:02", "mail", "cyrus", None, "m"),
    ("Nov 24 23:01:02 imap-login: Info: Login: x",             # Dovecot log_path
     "2026-11-24 23:01:02", None, "imap-login", None, "Info: Login: x"),
    ("2026-11-24 23:01:02 imap-login: Info: Login: x",         # custom log_timestamp
     "2026-11-24 23:01:02", None, "imap-login", None, "Info: Login: x"),
    ("dovecot: 2026-11-24 23:01:02 Info: pop3-login: Login: x",  # Dovecot 1.x own log
     "2026-11-24 23:01:02", None, "dovecot", None, "Info: pop3-login: Login: x"),
])
def test_parse_prefix(line, when, host, program, pid, message):
    prefix = pb.parse_prefix(line, NOW)
    assert int(prefix.when) == utc(when)
    assert (prefix.host, prefix.program, prefix.pid, prefix.message) == (host, program, pid, message)


@pytest.mark.parametrize("line", [
    "dovecot: imap-login: Login: user=<a>, rip=192.0.2.1",     # no time
    "garbage",
    "",
    "\x00\x00\x00",
    "Nov 24 23:01:02",
])
def test_parse_prefix_refuses(line):
    prefix = pb.parse_prefix(line, NOW)
    assert prefix is None or prefix.when is None


@pytest.mark.parametrize("now, month_day, expected", [
    ("2026-11-24 23:30:00", (11, 24), "2026-11-24 23:01:02"),
    ("2026-11-24 23:30:00", (11, 25), "2026-11-25 23:01:02"),   # up to a day ahead: this year
    ("2026-11-24 23:30:00", (11, 26), "2025-11-26 23:01:02"),   # further: last year
    ("2027-01-01 00:00:10", (12, 31), "2026-12-31 23:01:02"),   # New Year
    ("2028-03-01 00:00:00", (2, 29), "2028-02-29 23:01:02"),    # leap day
    ("2027-03-01 00:00:00", (2, 29), None),                     # no Feb 29 in 2027 or 2026
])
def test_bsd_time_infers_the_year(now, month_day, expected):
    got = pb.bsd_time(*month_day, "23:01:02", utc(now))
    assert got == (None if expected is None else utc(expected))


def test_bsd_time_honours_tz(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    # 23:01:02 in Berlin (CET, UTC+1) is 22:01:02 UTC.
    assert pb.bsd_time(11, 24, "23:01:02", NOW) == NOW - 28 * 60 - 58 - 3600


def test_dst_changeover_hour_parses(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    # 02:30 on 2026-03-29 does not exist in Berlin; 02:30 on 2026-10-25 exists twice.
    spring = pb.bsd_time(3, 29, "02:30:00", NOW)
    autumn = pb.bsd_time(10, 25, "02:30:00", NOW)
    assert spring is not None and abs(spring - 1774747800) <= 3600
    assert autumn is not None and abs(autumn - 1792895400) <= 3600


@pytest.mark.parametrize("source, problem", [
    (r"^Login: rip=(?P<ip>\S+)", None),
    (r"Login: rip=(?P<ip>\S+)", "does not start with ^"),
    (r"^Login: rip=\S+", "has no (?P<ip>...) group"),
    (r"^Login: .*rip=(?P<ip>\S+)", "greedy"),
    (r"^Login: .+rip=(?P<ip>\S+)", "greedy"),
    (r"^Login: .*?rip=(?P<ip>\S+)", None),
    (r"^Login: \.*rip=(?P<ip>\S+)", None),
    (r"^Login: rip=(?P<ip>\S+).*", None),
])
def test_pattern_problems(source, problem):
    problems = pb.pattern_problems(source)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def nets(*texts):
    return [pb.parse_network(t) for t in texts]


def test_parse_mynetworks_reads_files_and_skips_tables():
    files = {"/etc/postfix/nets": "# office\n198.51.100.0/24  # vpn\n\n!203.0.113.7\n"}
    value = "127.0.0.0/8 [::ffff:127.0.0.0]/104, [::1]/128 /etc/postfix/nets cidr:/x mail.example"
    got, notes = pb.parse_mynetworks(value, read_file=files.__getitem__)
    assert got == [(False, n) for n in nets("127.0.0.0/8", "::ffff:127.0.0.0/104", "::1/128",
                                              "198.51.100.0/24")] + [(True, nets("203.0.113.7")[0])]
    assert len(notes) == 2 and "cidr:/x" in notes[0] and "mail.example" in notes[1]


@pytest.mark.parametrize("ip, reason", [
    ("192.0.2.10", None),
    ("10.1.2.3", "in mynetworks"),
    ("10.9.9.9", None),             # excluded by the earlier "!10.9.9.9"
    ("2001:db8::5", "in --ignore-net"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
])
def test_excluded_reason(ip, reason):
    mynetworks = [(True, nets("10.9.9.9")[0]), (False, nets("10.0.0.0/8")[0])]
    got = pb.excluded_reason(ip, mynetworks, nets("2001:db8::/64"))
    assert (got is None) if reason is None else (reason in got)


def login(ip, when):
    return pb.Login(ip, when, "u", "test")


def test_merge_keeps_newest_and_purges():
    existing = {"192.0.2.1": str(NOW - 100), "192.0.2.2": str(NOW - 2000),
                "192.0.2.3": str(NOW - 500)}
    logins = [login("192.0.2.1", NOW - 200),      # older than the map's: ignored
              login("192.0.2.3", NOW - 10),       # newer: refreshed
              login("192.0.2.4", NOW - 50),       # new: added
              login("192.0.2.4", NOW - 40),       # same batch, newer: still "added"
              login("192.0.2.5", NOW - 1801),     # outside the grace window
              login("192.0.2.6", NOW + 3600)]     # clock skew: clamped to now
    plan = pb.merge(existing, logins, NOW, 1800)
    assert plan.entries == {"192.0.2.1": NOW - 100, "192.0.2.3": NOW - 10,
                            "192.0.2.4": NOW - 40, "192.0.2.6": NOW}
    assert plan.added == {"192.0.2.4": NOW - 40, "192.0.2.6": NOW}
    assert plan.refreshed == {"192.0.2.3": NOW - 10}
    assert plan.expired == {"192.0.2.2": NOW - 2000}
    assert plan.changed


def test_merge_expired_entry_logging_in_again_is_added_not_expired():
    plan = pb.merge({"192.0.2.1": str(NOW - 4000)}, [login("192.0.2.1", NOW - 5)], NOW, 1800)
    assert plan.entries == {"192.0.2.1": NOW - 5}
    assert plan.added == {"192.0.2.1": NOW - 5} and not plan.expired


@pytest.mark.parametrize("key, value", [
    ("192.0.2.1", "1795563000 alice"),   # not all-digit: would never expire
    ("192.0.2.1", ""),
    ("192.0.2", str(NOW)),               # a partial key opens a /24
    ("mail.example.org", str(NOW)),      # host names are matched first
    ("2001:DB8::1", str(NOW)),           # not the form Postfix looks up
    ("", str(NOW)),
])
def test_merge_drops_invalid_entries(key, value):
    plan = pb.merge({key: value, "192.0.2.9": str(NOW)}, [], NOW, 1800)
    assert plan.invalid == {key: value}
    assert plan.entries == {"192.0.2.9": NOW}


def test_merge_without_change_is_unchanged():
    plan = pb.merge({"192.0.2.1": str(NOW - 5)}, [login("192.0.2.1", NOW - 5)], NOW, 1800)
    assert not plan.changed


def test_read_span_stops_at_the_last_complete_line(tmp_path):
    log = tmp_path / "log"
    log.write_bytes(b"one\n\xff\xfe bad\x00\ntwo\nhalf")
    marks = []
    lines = list(pb.read_span(str(log), 0, marks))
    assert [pb.decode(l) for l in lines] == ["one", "\ufffd\ufffd bad\x00", "two"]
    head = log.read_bytes()[:16]
    assert marks == [pb.Offset(log.stat().st_ino, 16, pb.fingerprint(head), 16)]


@pytest.mark.parametrize("text, offset", [
    ('{"inode": 5, "offset": 10}', pb.LogState(pb.Offset(5, 10))),
    ('{"inode": 5, "offset": 10, "fingerprint": "ab", "length": 2, "previous": '
     '{"inode": 4, "offset": 9}}', pb.LogState(pb.Offset(5, 10, "ab", 2), pb.Offset(4, 9))),
    ("5\n10\n", pb.LogState(pb.Offset(5, 10))),   # pygtail's / logtail's own format
    ('{"inode": 5}', None),
    ('[1, 2]', None),
    ('{"inode": 5, "offset": 10, "previous": 7}', None),
    ("", None),
    ("garbage", None),
    ('{"inode": -1, "offset": 3}', None),
    ("5\n", None),
    ("\xff\xfe", None),
])
def test_load_offset(tmp_path, text, offset):
    path = tmp_path / "offset"
    path.write_text(text, errors="surrogateescape")
    got, warning = pb.load_offset(str(path))
    assert got == offset
    assert (warning is None) == (offset is not None)


def test_load_offset_missing_is_not_a_warning(tmp_path):
    assert pb.load_offset(str(tmp_path / "none")) == (None, None)
