"""Sessions through whole runs: real postmap maps, the state file, the options.

A Dovecot login with session=<ID> keeps its address while the session is
open, across runs; its end line starts the grace window; --max-session
bounds it and 0 turns it off, from the command line, the environment and the
config file; --dry-run writes nothing; --list and the metrics file show the
open sessions.
"""

import json

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
import runs
from conftest import NOW, syslog_time
from runs import invoke, snapshot

pytestmark = pytest.mark.tools

GRACE = 1800
IP = "192.0.2.10"


def login_line(epoch, ip=IP, session="Sess0000A1", user="alice"):
    return (f"{syslog_time(epoch)} mail dovecot: imap-login: Login: user=<{user}>, "
            f"method=PLAIN, rip={ip}, lip=192.0.2.1, mpid=4242, TLS, session=<{session}>\n")


def end_line(epoch, session="Sess0000A1", user="alice", host="mail"):
    return (f"{syslog_time(epoch)} {host} dovecot: imap({user})<4242><{session}>: "
            f"Disconnected: Logged out in=10 out=20\n")


def ok(site, *extra, now=NOW, env=None):
    result = invoke(*site.args(*extra, now=now), env=env)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    return result


def query(site, ip=IP):
    return runs.query(site, ip)


def sessions_file(site):
    return pb.StateDir(str(site.state)).log(str(site.log)).sessions


def test_open_session_keeps_the_address_until_its_end_then_grace(site):
    site.append(login_line(NOW - 60))
    ok(site)
    assert query(site) == str(NOW - 60)
    with open(sessions_file(site)) as f:
        (saved,) = json.load(f)
    assert (saved["ip"], saved["key"]) == (IP, ["dovecot", "mail", "dovecot", "Sess0000A1"])
    # Hours later, no new line: still open, refreshed.
    ok(site, now=NOW + 4 * 3600)
    assert query(site) == str(NOW + 4 * 3600)
    # A quiet run soon after does not rewrite the map.
    before = snapshot(site)
    ok(site, now=NOW + 4 * 3600 + 60)
    assert snapshot(site) == before
    # An end from another host ends nothing; the real one starts the grace window.
    site.append(end_line(NOW + 5 * 3600, host="evil"))
    ok(site, now=NOW + 5 * 3600 + 10)
    assert json.load(open(sessions_file(site))) != []
    site.append(end_line(NOW + 5 * 3600 + 20))
    ok(site, now=NOW + 5 * 3600 + 30)
    assert query(site) == str(NOW + 5 * 3600 + 20)
    assert json.load(open(sessions_file(site))) == []
    ok(site, now=NOW + 5 * 3600 + 20 + GRACE + 1)
    assert query(site) is None


def test_explain_names_the_open_session_that_keeps_an_address(site):
    site.append(login_line(NOW - 60))
    ok(site)
    out = ok(site, f"--explain={IP}", now=NOW + 3600).output
    assert ("  session: Sess0000A1 (dovecot, mail dovecot) user=alice open since "
            "2026-11-24T23:29:00+00:00 (age 61m00s): keeps it in the map until it ends, "
            "at the latest 2026-11-25T11:29:00+00:00\n") in out
    site.append(end_line(NOW + 3700))
    ok(site, now=NOW + 3710)
    assert "session:" not in ok(site, f"--explain={IP}", now=NOW + 3720).output


@pytest.mark.parametrize("how", ["option", "environment", "config"])
def test_max_session_zero_turns_sessions_off(site, how, tmp_path):
    site.append(login_line(NOW - 60))
    extra, env = [], None
    if how == "option":
        extra = ["--max-session=0"]
    elif how == "environment":
        env = {"PBSMTP_MAX_SESSION": "0"}
    else:
        config = tmp_path / "pbsmtp.conf"
        config.write_text("max-session = 0\n")
        extra = [f"--config={config}"]
    ok(site, *extra, env=env)
    assert query(site) == str(NOW - 60)
    assert not pb.Path(sessions_file(site)).exists()
    ok(site, *extra, env=env, now=NOW + GRACE)
    assert query(site) is None


def test_max_session_ends_a_session_without_end_line(site):
    site.append(login_line(NOW - 60))
    ok(site, "--max-session=3600")
    ok(site, "--max-session=3600", now=NOW + 3000)
    assert query(site) == str(NOW + 3000)
    ok(site, "--max-session=3600", now=NOW + 3600)
    assert json.load(open(sessions_file(site))) == []
    # Ended at login + 3600: the grace window runs from there.
    assert query(site) == str(NOW - 60 + 3600)
    ok(site, "--max-session=3600", now=NOW - 60 + 3600 + GRACE - 1)
    assert query(site) == str(NOW - 60 + 3600)
    ok(site, "--max-session=3600", now=NOW - 60 + 3600 + GRACE + 1)
    assert query(site) is None


@pytest.mark.parametrize("value, message", [
    ("-1", "--max-session must be a whole number of seconds (0: no sessions), not '-1'"),
    ("12h", "--max-session must be a whole number of seconds (0: no sessions), not '12h'"),
])
def test_bad_max_session_is_one_error_line(site, value, message):
    site.append(login_line(NOW - 60))
    result = CliRunner().invoke(pb.cli, site.args(f"--max-session={value}"))
    assert result.exit_code == 1 and result.stderr == f"Error: {message}\n"
    assert snapshot(site) == {}


def test_bad_max_session_in_the_config_names_the_file(site, tmp_path):
    config = tmp_path / "pbsmtp.conf"
    config.write_text('max-session = "12h"\n')
    result = CliRunner().invoke(pb.cli, site.args(f"--config={config}"))
    assert result.exit_code == 1 and str(config) in result.stderr
    assert "'max-session'" in result.stderr and result.stderr.count("\n") == 1


def test_dry_run_shows_session_effects_and_writes_nothing(site):
    site.append(login_line(NOW - 3 * GRACE), login_line(NOW - 2 * GRACE, "192.0.2.11",
                                                         "Sess0000B1", "bob"),
                end_line(NOW - 60, "Sess0000B1", "bob"))
    result = ok(site, "--dry-run")
    out = result.output
    assert f"would open session Sess0000A1 of {IP} user=alice (dovecot)" in out
    assert f"would keep session Sess0000A1 of {IP} (dovecot) open: refresh {IP}" in out
    assert "would end session Sess0000B1 of 192.0.2.11 (dovecot) by logout" in out
    assert f"would add {IP} {NOW} " in out and f"would add 192.0.2.11 {NOW - 60} " in out
    assert "open sessions: 1" in out
    assert snapshot(site) == {}


def test_list_and_metrics_show_open_sessions(site, tmp_path):
    prom = tmp_path / "pbsmtp.prom"
    site.append(login_line(NOW - 60), login_line(NOW - 30, "2001:db8::10", "Sess0000C1"))
    ok(site, f"--metrics-file={prom}")
    assert "pbsmtp_batch_open_sessions 2\n" in prom.read_text()
    text = ok(site, "--list").output.splitlines()
    assert text[1].startswith("  session Sess0000A1 (dovecot, mail dovecot) user=alice "
                              "open since 2026-11-24T23:29:00+00:00 (age 1m00s), ends by "
                              "2026-11-25T11:29:00+00:00 at the latest")
    data = json.loads(ok(site, "--list", "--json").output)
    assert [(row["ip"], [s["id"] for s in row["sessions"]]) for row in data] == [
        (IP, ["Sess0000A1"]), ("2001:db8::10", ["Sess0000C1"])]
    assert data[0]["sessions"][0] | {} == {
        "id": "Sess0000A1", "pattern": "dovecot", "host": "mail", "program": "dovecot",
        "user": "alice", "start": NOW - 60, "age": 60, "ends_by": NOW - 60 + 43200,
        "start_iso": "2026-11-24T23:29:00+00:00", "ends_by_iso": "2026-11-25T11:29:00+00:00"}
    # The end of both: the gauge falls to 0.
    site.append(end_line(NOW + 10), end_line(NOW + 11, "Sess0000C1"))
    ok(site, f"--metrics-file={prom}", now=NOW + 20)
    assert "pbsmtp_batch_open_sessions 0\n" in prom.read_text()


def test_a_user_name_carrying_an_end_line_ends_nothing(site):
    site.append(login_line(NOW - 60))
    ok(site)
    crafted = (f"{syslog_time(NOW - 10)} mail dovecot: imap(x)<1><Sess0000A1>: Disconnected: "
               f"Logged out y)<4243><Sess0000Z9>: Disconnected: Logged out in=1 out=2\n")
    site.append(crafted)
    result = ok(site, "--debug", now=NOW + GRACE)
    assert "logout line with ')<' more than once" in result.output
    assert query(site) == str(NOW + GRACE)
    assert len(json.load(open(sessions_file(site)))) == 1


###############################################################################
# What may keep an address in the map may end a session too ###################
###############################################################################

@pytest.mark.parametrize("revoke_for", [None, 600])
def test_a_revocation_ends_the_session_it_came_after(site, revoke_for):
    """A session that began before --revoke (a stolen password, still
    connected) never brings the address back: not while the revocation
    lasts, not after it."""
    site.append(login_line(NOW - 60))
    ok(site)
    extra = [] if revoke_for is None else [f"--revoke-for={revoke_for}"]
    ok(site, f"--revoke={IP}", *extra, now=NOW + 10)
    assert query(site) is None
    for later in (NOW + 20, NOW + GRACE, NOW + 2 * GRACE, NOW + 4 * 3600):
        ok(site, now=later)
        assert query(site) is None, later
    assert json.load(open(sessions_file(site))) == []
    # A new login after the revocation lifts it, and opens a session again.
    site.append(login_line(NOW + 4 * 3600 + 5, session="Sess0000B2"))
    ok(site, now=NOW + 4 * 3600 + 10)
    assert query(site) == str(NOW + 4 * 3600 + 5)


def test_ignore_net_ends_the_sessions_it_covers(site):
    site.append(login_line(NOW - 60))
    ok(site)
    ok(site, "--ignore-net=192.0.2.0/24", now=NOW + 3600)
    assert json.load(open(sessions_file(site))) == []
    ok(site, "--ignore-net=192.0.2.0/24", now=NOW + 2 * 3600)
    assert query(site) is None


def test_a_damaged_sessions_file_is_repaired_by_the_next_run(site):
    site.append(login_line(NOW - 60))
    ok(site)
    with open(sessions_file(site), "w") as f:
        f.write("{not json")
    result = invoke(*site.args(now=NOW + 60))
    assert result.exit_code == 0 and "damaged" in result.stderr
    assert json.load(open(sessions_file(site))) == []
    assert invoke(*site.args(now=NOW + 120)).stderr == ""
    listed = invoke(*site.args("--list", now=NOW + 130))
    assert listed.exit_code == 0 and listed.stderr == ""


def test_a_revoked_session_counts_no_login(site):
    site.append(login_line(NOW - 60))
    ok(site)
    ok(site, f"--revoke={IP}", "--revoke-for=3600", now=NOW + 10)
    assert " 0 logins" in ok(site, "-v", now=NOW + GRACE // 2).output
