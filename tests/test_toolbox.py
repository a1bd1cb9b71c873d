"""--grant, --revoke, --explain and --check-postfix through the command line,
against the real postmap and postconf (click's CliRunner, a private site)."""

import json
import os
import pwd
import stat

import pytest

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login, require, write_main_cf
from runs import fill, invoke, query

pytestmark = pytest.mark.tools


def ok(result):
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def snapshot(site):
    """The map's bytes and every state file's bytes."""
    files = {}
    if site.state.exists():
        for path in sorted(site.state.iterdir()):
            files[path.name] = path.read_bytes()
    db = site.map.with_suffix(".db")
    return (db.read_bytes() if db.exists() else None), files


def manual(site):
    return json.loads((site.state / "manual").read_text())


###############################################################################
# --grant #####################################################################
###############################################################################

def test_a_grant_relays_until_it_ends_and_the_runs_that_follow_keep_it(site):
    result = ok(invoke(*site.args("--grant=192.0.2.10", "--grant-for=7200"),
                       env={"SUDO_USER": "alice"}))
    assert result.stdout == "granted 192.0.2.10 until 2026-11-25T01:30:00+00:00\n"
    # Written to expire when the grant ends: value + grace = the end.
    assert query(site, "192.0.2.10") == str(NOW + 7200 - 1800)
    st = os.stat(site.state / "manual")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert manual(site) == {"grants": {"192.0.2.10": {"at": NOW, "until": NOW + 7200,
                                                      "by": "alice"}}, "revokes": {}}
    # Cron runs past the grace window keep it; an older login does not shorten it.
    site.append(dovecot_login(NOW + 100, "192.0.2.10"))
    ok(invoke(*site.args(now=NOW + 1900)))
    ok(invoke(*site.args(now=NOW + 5000)))
    assert query(site, "192.0.2.10") == str(NOW + 5400)
    # A map lost and rebuilt from the logs gets it back from the state directory.
    os.unlink(f"{site.map}.db")
    ok(invoke(*site.args("--reprocess", now=NOW + 5100)))
    assert query(site, "192.0.2.10") == str(NOW + 5400)
    # Ended: the run after expires it like a login, and forgets the grant.
    ok(invoke(*site.args(now=NOW + 7201)))
    assert query(site, "192.0.2.10") is None
    assert manual(site) == {"grants": {}, "revokes": {}}


@pytest.mark.parametrize("in_place_from", [0, 10 ** 9])
def test_a_login_newer_than_a_grant_is_kept_by_the_runs_that_follow(site, monkeypatch,
                                                                     in_place_from):
    """A grant never lowers a newer login's time, whether a run updates the
    map in place or rebuilds it (a run merges in place only while no grant
    or revocation is in force: apply_manual needs every entry)."""
    monkeypatch.setattr(pb, "UPDATE_IN_PLACE_MIN", in_place_from)
    ip, other = "192.0.2.10", "192.0.2.20"
    site.append(dovecot_login(NOW - 10, other))
    ok(invoke(*site.args()))
    ok(invoke(*site.args(f"--grant={ip}", "--grant-for=600")))
    assert query(site, ip) == str(NOW + 600 - 1800)
    site.append(dovecot_login(NOW + 100, ip))
    ok(invoke(*site.args(now=NOW + 110)))
    assert query(site, ip) == str(NOW + 100)
    site.append(dovecot_login(NOW + 200, other))
    ok(invoke(*site.args(now=NOW + 210)))
    assert (query(site, ip), query(site, other)) == (str(NOW + 100), str(NOW + 200))


def test_a_grant_lasts_the_grace_window_by_default_and_grant_for_comes_from_everywhere(
        site, tmp_path):
    ok(invoke(*site.args("--grant=192.0.2.10", "--grace=900")))
    assert query(site, "192.0.2.10") == str(NOW)
    ok(invoke(*site.args("--grant=192.0.2.11"), env={"PBSMTP_GRANT_FOR": "3600"}))
    assert query(site, "192.0.2.11") == str(NOW + 3600 - 1800)
    config = tmp_path / "pbsmtp.conf"
    config.write_text("grant-for = 5400\n")
    ok(invoke(f"--config={config}", *site.args("--grant=192.0.2.12")))
    assert query(site, "192.0.2.12") == str(NOW + 5400 - 1800)


@pytest.mark.parametrize("args, error", [
    (["--grant=192.0.2.0/24"], "Error: --grant: '192.0.2.0/24' is a network, not one address"),
    (["--grant=mail.example.com"], "Error: --grant: 'mail.example.com' is a host name"),
    (["--grant=junk!"], "Error: --grant: 'junk!' is not an IP address"),
    (["--revoke=192.0.2"], "Error: --revoke: '192.0.2' is not a full IPv4 address"),
    (["--explain=2001:db8::/48"], "Error: --explain: '2001:db8::/48' is a network"),
    (["--grant=192.0.2.10", "--dry-run"], "Error: --grant changes the map: it cannot be a dry "
                                          "run"),
    (["--revoke=192.0.2.10", "--nowrite"], "Error: --revoke changes the map: it cannot be a "
                                           "dry run"),
    (["--grant=192.0.2.10", "--grant-for=0"], "Error: --grant-for must be a whole number"),
    (["--grant=224.0.0.1"], "Error: cannot grant 224.0.0.1: unspecified or multicast address"),
    (["--grant=198.51.100.7", "--ignore-net=198.51.100.0/24"],
     "Error: cannot grant 198.51.100.7: in --ignore-net"),
])
def test_refused_inputs_are_one_error_line_and_change_nothing(site, args, error):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    ok(invoke(*site.args("--grant=192.0.2.20")))
    ok(invoke(*site.args()))
    before = snapshot(site)
    result = invoke(*site.args(*args))
    assert result.exit_code == 1
    assert result.stderr.startswith(error) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    assert snapshot(site) == before


def test_an_address_in_mynetworks_is_not_granted_postfix_relays_it_anyway(site):
    result = ok(invoke(*site.args("--grant=127.0.0.1")))
    assert result.stdout == ""
    assert result.stderr == ("pbsmtp-batch: warning: 127.0.0.1 is in Postfix's mynetworks, "
                             "which relays anyway: nothing to grant\n")
    assert snapshot(site) == (None, {})


def test_grant_and_revoke_are_actions_not_read_from_the_environment(site, tmp_path):
    ok(invoke(*site.args(), env={"PBSMTP_GRANT": "192.0.2.10", "PBSMTP_EXPLAIN": "192.0.2.10",
                                 "PBSMTP_CHECK_POSTFIX": "1"}))
    assert query(site, "192.0.2.10") is None
    config = tmp_path / "pbsmtp.conf"
    config.write_text('grant = "192.0.2.10"\n')
    result = invoke(f"--config={config}", *site.args())
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: config file {config}: unknown setting 'grant'")


@pytest.mark.parametrize("args, message", [
    (["--grant=192.0.2.10", "--revoke=192.0.2.11"], "--grant and --revoke"),
    (["--list", "--revoke=192.0.2.11"], "--list and --revoke"),
    (["--dumpconfig", "--grant=192.0.2.10"], "--dumpconfig and --grant"),
    (["--check-patterns", "--explain=192.0.2.10"], "--check-patterns and --explain"),
])
def test_one_mode_at_a_time(site, args, message):
    """A mode left over is never ignored: a --revoke beside --list would
    print the list and revoke nothing."""
    before = snapshot(site)
    result = invoke(*site.args(*args))
    assert result.exit_code == 2 and f"{message}: one at a time" in result.stderr
    assert snapshot(site) == before


###############################################################################
# --revoke ####################################################################
###############################################################################

def test_a_revoked_address_stays_out_until_its_next_login(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 60, "192.0.2.11"))
    ok(invoke(*site.args()))
    assert query(site, "192.0.2.10") == str(NOW - 60)
    # A login logged before the revocation, not read yet by any run.
    site.append(dovecot_login(NOW + 5, "192.0.2.10"))
    result = ok(invoke(*site.args("--revoke=192.0.2.10", now=NOW + 10),
                       env={"SUDO_USER": "bob"}))
    assert result.stdout == "revoked 192.0.2.10 until its next login\n"
    assert query(site, "192.0.2.10") is None and query(site, "192.0.2.11") == str(NOW - 60)
    assert manual(site)["revokes"] == {"192.0.2.10": {"at": NOW + 10, "until": None,
                                                      "by": "bob"}}
    # Neither the next run nor one that reads the whole window again brings it back.
    result = ok(invoke(*site.args("-v", "--debug", now=NOW + 20)))
    assert "pbsmtp-batch: 1 lines read, 0 logins, 0 added" in result.stdout
    assert ("debug: skipped 192.0.2.10 (dovecot): revoked by bob at "
            "2026-11-24T23:30:10+00:00\n") in result.stdout
    ok(invoke(*site.args("--reprocess", now=NOW + 30)))
    assert query(site, "192.0.2.10") is None
    # Its next real login does.
    site.append(dovecot_login(NOW + 40, "192.0.2.10"))
    ok(invoke(*site.args(now=NOW + 50)))
    assert query(site, "192.0.2.10") == str(NOW + 40)


def test_a_revocation_for_a_time_keeps_even_new_logins_out_until_it_ends(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    ok(invoke(*site.args()))
    result = ok(invoke(*site.args("--revoke=192.0.2.10", "--revoke-for=600")))
    assert result.stdout == "revoked 192.0.2.10 until 2026-11-24T23:40:00+00:00\n"
    site.append(dovecot_login(NOW + 100, "192.0.2.10"))
    ok(invoke(*site.args(now=NOW + 200)))
    assert query(site, "192.0.2.10") is None
    ok(invoke(*site.args(now=NOW + 700)))
    assert query(site, "192.0.2.10") is None
    assert manual(site) == {"grants": {}, "revokes": {}}
    site.append(dovecot_login(NOW + 800, "192.0.2.10"))
    ok(invoke(*site.args(now=NOW + 810)))
    assert query(site, "192.0.2.10") == str(NOW + 800)


def test_a_revoke_replaces_a_grant_and_a_grant_a_revoke(site):
    ok(invoke(*site.args("--grant=192.0.2.10", "--grant-for=86400")))
    ok(invoke(*site.args("--revoke=192.0.2.10", now=NOW + 10)))
    assert query(site, "192.0.2.10") is None
    assert manual(site)["grants"] == {}
    ok(invoke(*site.args("--grant=192.0.2.10", now=NOW + 20)))
    assert query(site, "192.0.2.10") == str(NOW + 20)
    assert manual(site)["revokes"] == {}


def test_a_corrupt_state_file_stops_grants_and_warns_runs(site):
    ok(invoke(*site.args()))
    (site.state / "manual").write_text("{not json")
    os.chmod(site.state / "manual", 0o600)
    before = snapshot(site)
    result = invoke(*site.args("--grant=192.0.2.10"))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {site.state}/manual (the grants and revocations made by "
                             f"hand) is corrupt: fix or remove it first\n")
    assert snapshot(site) == before
    site.append(dovecot_login(NOW - 60, "192.0.2.11"))
    result = ok(invoke(*site.args()))
    assert "is corrupt; no grant or revocation made by hand applies" in result.stderr
    assert query(site, "192.0.2.11") == str(NOW - 60)
    assert (site.state / "manual").read_text() == "{not json"


###############################################################################
# --explain ###################################################################
###############################################################################

def test_explain_says_what_is_known_and_writes_nothing(site):
    site.append(
        dovecot_login(NOW - 7200, "192.0.2.10", user="old"),
        dovecot_login(NOW - 120, "192.0.2.10", user="al\x1bice"),
        dovecot_login(NOW - 60, "192.0.2.10"),
        # A crafted user name that repeats the address field: refused.
        dovecot_login(NOW - 30, "192.0.2.10", user="x>, rip=192.0.2.10, lip=<y"))
    before = snapshot(site)
    result = ok(invoke(*site.args("--explain=192.0.2.10")))
    assert snapshot(site) == before == (None, {})     # no state directory, no map
    out = result.stdout.splitlines()
    assert out[:3] == ["address 192.0.2.10", "  map: not in the map",
                       "  logins in " + str(site.log) + " since 2026-11-23T23:00:00+00:00: 3"]
    assert out[3] == ("    2026-11-24T21:30:00+00:00 user=old pattern=dovecot: too old: "
                      "the grace window ended at 2026-11-24T22:00:00+00:00")
    assert out[5] == ("    2026-11-24T23:28:00+00:00 user=al\\x1bice pattern=dovecot: counts: "
                      "relays until 2026-11-24T23:58:00+00:00")
    assert out[6] == "      " + dovecot_login(NOW - 120, "192.0.2.10",
                                              user="al\\x1bice").rstrip("\n")
    assert out[9] == "  lines naming it that were refused as unsafe: 1"
    assert "'rip=' occurs more than once" in out[10]
    # After a run: in the map; the saved position is not moved by --explain.
    ok(invoke(*site.args()))
    before = snapshot(site)
    result = ok(invoke(*site.args("--explain=192.0.2.10", now=NOW + 60)))
    assert snapshot(site) == before
    assert result.stdout.splitlines()[1] == (
        "  map: in the map, login 2026-11-24T23:29:00+00:00 (age 2m00s, left 28m00s): "
        "relays until 2026-11-24T23:59:00+00:00")


def test_explain_says_why_an_address_is_left_out(site):
    site.append(dovecot_login(NOW - 60, "127.0.0.1"), dovecot_login(NOW - 60, "198.51.100.7"))
    out = ok(invoke(*site.args("--explain=127.0.0.1"))).stdout
    assert "  left out: in mynetworks (relays anyway)\n" in out
    assert "pattern=dovecot: left out: in mynetworks (relays anyway)\n" in out
    out = ok(invoke(*site.args("--explain=198.51.100.7", "--ignore-net=198.51.100.0/24"))).stdout
    assert "  left out: in --ignore-net\n" in out
    out = ok(invoke(*site.args("--explain=2001:db8::1", "--ipv6-shared-keys=skip"))).stdout
    assert "  left out: its key would also match other clients' shortened lookups" in out
    ok(invoke(*site.args("--revoke=192.0.2.44")))
    out = ok(invoke(*site.args("--explain=192.0.2.44"))).stdout
    assert ("  by hand: revoked by " in out and "out until its next login (in force)" in out)


def test_explain_names_the_shared_ipv6_key_a_client_relays_through(site):
    site.append(dovecot_login(NOW - 60, "2001:db8::1"))
    ok(invoke(*site.args()))
    out = ok(invoke(*site.args("--explain=2001:db8::1:5"))).stdout
    assert ("  map: Postfix's shortened lookup of this client also hits the key 2001:db8::1, "
            "which relays until 2026-11-24T23:59:00+00:00\n") in out


###############################################################################
# --check-postfix #############################################################
###############################################################################

def relay_conf(site, relay, recipient=None):
    text = f"mynetworks = 127.0.0.1/32\nsmtpd_relay_restrictions = {relay}\n"
    if recipient is not None:
        text += f"smtpd_recipient_restrictions = {recipient}\n"
    write_main_cf(site.conf, text)


def can_read_as(user, path):
    """Whether USER really opens PATH for reading (a forked child)."""
    account = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(os.getgrouplist(user, account.pw_gid))
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            os.close(os.open(path, os.O_RDONLY))
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def checked(site, *extra):
    result = invoke(*site.args("--check-postfix", *extra))
    lines = result.stdout.splitlines()
    return result, [line.split(":", 1)[0] for line in lines], lines


def test_check_postfix_passes_a_map_wired_and_readable(nobody_site):
    site = nobody_site
    require("postconf")
    relay_conf(site, f"permit_mynetworks, check_client_access hash:{site.map}, "
                     f"reject_unauth_destination")
    ok(invoke(*site.args()))
    result, labels, lines = checked(site)
    assert result.exit_code == 0 and result.stderr == ""
    assert labels == ["ok"] * 5, lines
    assert lines[1] == (f"ok: check_client_access hash:{site.map} is in "
                        f"smtpd_relay_restrictions, before reject_unauth_destination")
    assert lines[4] == f"ok: user postfix (mail_owner) can read {site.map}.db"
    assert can_read_as("postfix", f"{site.map}.db")


@pytest.mark.parametrize("relay, recipient, says", [
    ("permit_mynetworks, reject_unauth_destination, check_client_access hash:{map}", None,
     "comes after reject_unauth_destination in smtpd_relay_restrictions"),
    ("permit_mynetworks, reject_unauth_destination", None,
     "is not in smtpd_relay_restrictions, which refuses relay with reject_unauth_destination"),
    ("permit_mynetworks, check_client_access lmdb:{map}, reject_unauth_destination", None,
     "has check_client_access lmdb:{map}, but pbsmtp-batch writes hash:{map}"),
    ("permit_mynetworks, defer_unauth_destination",
     "permit_mynetworks, check_client_access hash:{map}, reject_unauth_destination",
     "\"454 4.7.1 Relay access denied\""),
])
def test_check_postfix_fails_a_map_wired_wrong(nobody_site, relay, recipient, says):
    site = nobody_site
    relay_conf(site, relay.format(map=site.map),
               recipient and recipient.format(map=site.map))
    ok(invoke(*site.args()))
    result, labels, lines = checked(site)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.endswith(
        "of the checks failed\n") and result.stderr.count("\n") == 1
    assert any(line.startswith("FAIL: ") and says.format(map=site.map) in line
               for line in lines), lines


def test_check_postfix_on_a_map_the_postfix_user_cannot_read(nobody_site):
    """smtpd opens the map as root (test_toolbox_live proves it relays): a
    warning; through proxy:, which proxymap reads as postfix, a failure."""
    site = nobody_site
    relay_conf(site, f"check_client_access hash:{site.map}, reject_unauth_destination")
    ok(invoke(*site.args()))
    os.chmod(f"{site.map}.db", 0o600)
    result, labels, lines = checked(site)
    assert result.exit_code == 0
    assert lines[-1] == (f"warning: user postfix cannot read {site.map}.db (mode 0600, "
                         f"owner 0:0): smtpd opens the map as root, so it works, but nothing "
                         f"running as postfix can read it (proxy:, postmap -q)")
    assert not can_read_as("postfix", f"{site.map}.db")
    os.chmod(f"{site.map}.db", 0o644)
    os.chmod(site.map.parent, 0o700)
    relay_conf(site, f"check_client_access proxy:hash:{site.map}, reject_unauth_destination")
    result, labels, lines = checked(site)
    assert result.exit_code == 1
    assert lines[-1].startswith(f"FAIL: user postfix cannot enter directory {site.map.parent}")
    assert lines[-1].endswith("proxymap, which reads proxy: tables as postfix, cannot")
    assert not can_read_as("postfix", f"{site.map}.db")


def test_check_postfix_fails_a_missing_or_broken_map(nobody_site):
    site = nobody_site
    relay_conf(site, f"check_client_access hash:{site.map}, reject_unauth_destination")
    result, labels, lines = checked(site)
    assert result.exit_code == 1 and lines[-1].startswith(f"FAIL: map file {site.map}.db "
                                                          f"does not exist")
    with open(f"{site.map}.db", "wb") as f:
        f.write(b"this is no Berkeley DB file" * 100)
    os.chmod(f"{site.map}.db", 0o644)
    result, labels, lines = checked(site)
    assert result.exit_code == 1
    assert any(line.startswith(f"FAIL: postmap -q cannot read hash:{site.map}")
               for line in lines), lines


def test_check_postfix_for_the_sqlite_backend(nobody_site):
    site = nobody_site
    from conftest import require_map_type
    require_map_type("sqlite")
    db = site.root / "relay.sqlite"
    cf = site.root / "pbs.sqlite.cf"
    cf.write_text(f"dbpath = {db}\nquery = SELECT last_login FROM pbsmtp_relay "
                  f"WHERE ip = '%s' AND last_login > CAST(strftime('%%s', 'now') AS INTEGER) "
                  f"- 1800\n")
    os.chmod(cf, 0o644)
    relay_conf(site, f"permit_mynetworks, check_client_access sqlite:{cf}, "
                     f"reject_unauth_destination")
    args = ["--backend=sqlite", f"--dbfile={db}", f"--postfix-config={site.conf}",
            f"--state-dir={site.state}", f"--logfile={site.log}"]
    ok(invoke(*args))
    result = invoke(*args, "--check-postfix")
    assert result.exit_code == 0, result.stdout
    assert f"ok: postmap -q reads sqlite:{cf}" in result.stdout.splitlines()
    result = invoke(*args[:1], f"--dbfile={site.root}/other.sqlite", *args[2:],
                    "--check-postfix")
    assert result.exit_code == 1
    assert f"FAIL: {cf}: dbpath = {db}, but pbsmtp-batch writes {site.root}/other.sqlite" \
        in result.stdout


def test_check_postfix_refuses_other_mtas(site):
    result = invoke(*site.args("--check-postfix", "--backend=exim"))
    assert result.exit_code == 1
    assert result.stderr == ("Error: --check-postfix checks Postfix's configuration; "
                             "--backend=exim is read by another MTA\n")


def test_explain_reads_the_journal_and_names_forged_entries(site):
    from journal import DOVECOT, LOGGER, Journal
    journal = Journal(site.root / "journal")
    login = ("imap-login: Login: user=<alice>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.1, "
             "mpid=4242, TLS, session=<AbCdEf012345>")
    journal.write((NOW - 300, login, DOVECOT), (NOW - 200, login, LOGGER))
    args = [f"--journal-directory={journal.dir}", f"--dbfile={site.map}",
            f"--state-dir={site.state}", f"--postfix-config={site.conf}", "--map-type=hash",
            f"--now={NOW}"]
    before = snapshot(site)
    out = ok(invoke(*args, "--explain=192.0.2.10")).stdout.splitlines()
    assert snapshot(site) == before
    assert out[2] == "  logins in the journal since 2026-11-23T23:00:00+00:00: 1"
    assert out[3] == ("    2026-11-24T23:25:00+00:00 user=alice pattern=dovecot: counts: "
                      "relays until 2026-11-24T23:55:00+00:00")
    assert out[5] == "  lines naming it that were refused as unsafe: 1"
    assert out[6].startswith("    refused journal entry from 'dovecot': ")
    assert out[6].endswith(login)


###############################################################################
# Crash safety: state staged, map published, state committed ##################
###############################################################################

def test_a_grant_that_cannot_write_the_map_keeps_no_record(site, tmpfs):
    tmpfs(site.map.parent, "128k")
    ok(invoke(*site.args("--grant=192.0.2.10")))
    filler = fill(site.map.parent)
    before = snapshot(site)
    result = invoke(*site.args("--grant=192.0.2.11", now=NOW + 10))
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot write map {site.map}.db: No space left on device\n"
    assert snapshot(site)[0] == before[0]
    assert {k: v for k, v in snapshot(site)[1].items() if k != "lock"} == \
        {k: v for k, v in before[1].items() if k != "lock"}
    assert list(manual(site)["grants"]) == ["192.0.2.10"]
    filler.unlink()
    ok(invoke(*site.args("--grant=192.0.2.11", now=NOW + 20)))
    assert query(site, "192.0.2.11") == str(NOW + 20)


def test_a_revoke_that_cannot_stage_its_record_leaves_the_map_alone(site, tmpfs):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    ok(invoke(*site.args()))
    tmpfs(site.state, "64k")          # the state directory, empty and mounted afresh
    os.chmod(site.state, 0o700)
    ok(invoke(*site.args()))
    filler = fill(site.state)
    result = invoke(*site.args("--revoke=192.0.2.10", now=NOW + 10))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: cannot write {site.state}/manual: No space left on "
                             f"device\n")
    assert query(site, "192.0.2.10") == str(NOW - 60)
    assert not (site.state / "manual").exists()
    filler.unlink()
    ok(invoke(*site.args("--revoke=192.0.2.10", now=NOW + 20)))
    assert query(site, "192.0.2.10") is None
