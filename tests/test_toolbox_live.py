"""--grant and --revoke against a real Postfix smtpd (250 and 554 for a
loopback client), --check-postfix on that smtpd's own configuration, and the
syslog record of each through a real rsyslogd."""

import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

import daemons
import pbsmtp_batch as pb
from conftest import NOW, require

pytestmark = pytest.mark.live

RELAY_RCPT = "someone@example.net"
CLIENT = "127.0.0.61"                  # outside mynetworks (127.0.0.1/32 only)


def invoke(*args, env=None):
    return CliRunner().invoke(pb.cli, list(args), env=env, catch_exceptions=False)


def ok(result):
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


@pytest.fixture
def relay():
    """A private Postfix whose smtpd_relay_restrictions ask a hash map, the
    map's first version written by a run, and the tool's arguments for it."""
    require("postfix")
    if os.geteuid() != 0:
        pytest.fail("Postfix must be started as root") if os.environ.get("CI") == "true" \
            else pytest.skip("Postfix must be started as root")
    workdir = daemons.make_workdir()
    try:
        maps = os.path.join(workdir, "maps")
        os.mkdir(maps, 0o755)
        postfix = daemons.Postfix(workdir, "hash", os.path.join(maps, "pop-before-smtp"))
        postfix.configure()
        log = os.path.join(workdir, "mail.log")
        open(log, "w").close()
        args = [f"--logfile={log}", f"--dbfile={postfix.map_path}", "--map-type=hash",
                f"--state-dir={workdir}/state", f"--postfix-config={postfix.config_dir}"]
        ok(invoke(*args))
        with postfix:
            yield postfix, args
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rcpt(postfix):
    return daemons.smtp_rcpt("127.0.0.1", postfix.port, RELAY_RCPT, CLIENT)


def test_a_grant_relays_through_a_real_smtpd_and_a_revoke_stops_it(relay):
    postfix, args = relay
    assert rcpt(postfix)[0] == 554
    ok(invoke(*args, f"--grant={CLIENT}"))
    assert rcpt(postfix)[0] == 250, daemons.read_text(postfix.maillog)[-2000:]
    # The map is wired as --check-postfix says a map must be.
    result = ok(invoke(*args, "--check-postfix"))
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["ok"] * 5
    # smtpd opens the map as root before it drops privileges: a map that
    # user postfix cannot read still works (--check-postfix only warns),
    # also in the smtpd started afresh after the map was replaced.
    os.chmod(postfix.map_file(), 0o600)
    result = ok(invoke(*args, "--check-postfix"))
    assert result.stdout.splitlines()[-1].startswith("warning: user postfix cannot read")
    ok(invoke(*args, "--grant=127.0.0.62"))
    assert os.stat(postfix.map_file()).st_mode & 0o777 == 0o600
    assert rcpt(postfix)[0] == 250
    ok(invoke(*args, f"--revoke={CLIENT}"))
    code, text = rcpt(postfix)
    assert code == 554 and "Relay access denied" in text
    assert "has changed -- restarting" in daemons.read_text(postfix.maillog)


def test_grant_and_revoke_are_logged_through_syslog_with_the_invoking_user(site, monkeypatch):
    require("rsyslogd", "rsyslog")
    workdir = daemons.make_workdir()
    rsyslog = daemons.Rsyslog(workdir, template=daemons.TRADITIONAL)
    try:
        with rsyslog:
            monkeypatch.setattr(pb, "SYSLOG_SOCKET", rsyslog.socket)
            ok(invoke(*site.args("--syslog", "--grant=192.0.2.10", "--grant-for=3600"),
                      env={"SUDO_USER": "alice"}))
            granted = (f"pbsmtp-batch[{os.getpid()}]: grant=192.0.2.10 "
                       f"until=2026-11-25T00:30:00+00:00 by=alice")
            daemons.wait_for_log(rsyslog.maillog, granted)
            # A user name that tries to write a login line of its own.
            crafted = "eve dovecot: imap-login: Login: user=<x>, rip=203.0.113.9, lip=1"
            ok(invoke(*site.args("--syslog", "--revoke=192.0.2.10", now=NOW + 60),
                      env={"SUDO_USER": crafted}))
            ok(invoke(*site.args("--nosyslog", "--grant=192.0.2.11"), env={"SUDO_USER": "x"}))
            rsyslog.send("pbsmtp-harness", "flush")
            daemons.wait_for_log(rsyslog.maillog, "pbsmtp-harness[", "flush")
            lines = [line for line in daemons.read_text(rsyslog.maillog).splitlines()
                     if "pbsmtp-batch[" in line]
            assert len(lines) == 2 and lines[0].endswith(granted)
            assert lines[1].endswith(
                f"pbsmtp-batch[{os.getpid()}]: revoke=192.0.2.10 until=next-login "
                f"by=eve?dovecot??imap-login??Login??user??x???rip?203.0.113.9??lip?1")
            # The records in the mail log are never read as logins.
            result = ok(invoke(*site.args("--dry-run", f"--logfile={rsyslog.maillog}",
                                          "--reprocess", now=NOW + 120)))
            assert "would add" not in result.stdout
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_grant_and_check_postfix_with_the_memcache_backend(site, memcached):
    """A real memcached on loopback: a grant is a key Postfix's memcache:
    table finds, and --check-postfix checks that table's key_format."""
    cf = str(site.root / "pbs.memcache.cf")
    with open(cf, "w") as f:
        f.write(f"memcache = inet:{memcached}\nkey_format = pbsmtp:%s\n")
    os.chmod(cf, 0o644)
    (site.conf / "main.cf").write_text(
        f"mynetworks = 127.0.0.1/32\nsmtpd_relay_restrictions = permit_mynetworks, "
        f"check_client_access memcache:{cf}, reject_unauth_destination\n")
    os.utime(site.conf / "main.cf", (NOW, NOW))
    args = ["--backend=memcache", f"--memcache-server={memcached}",
            f"--state-dir={site.state}", f"--postfix-config={site.conf}",
            f"--logfile={site.log}"]
    ok(invoke(*args, "--grant=192.0.2.10"))
    found = subprocess.run([pb.find_tool("postmap"), "-c", str(site.conf), "-q",
                            "192.0.2.10", f"memcache:{cf}"], capture_output=True,
                           text=True)
    assert found.returncode == 0 and found.stdout.strip().isdigit(), found
    result = ok(invoke(*args, "--check-postfix"))
    assert f"ok: postmap -q reads memcache:{cf}" in result.stdout.splitlines()
    assert "FAIL" not in result.stdout
    result = invoke(*args, "--memcache-prefix=relay:", "--check-postfix")
    assert result.exit_code == 1
    assert (f"FAIL: {cf}: key_format = pbsmtp:%s, but --memcache-prefix is relay: "
            f"(key_format must be relay:%s)") in result.stdout.splitlines()
    # A revocation takes the key away at once (not when its TTL ends),
    # and out of the index that --list reads.
    ok(invoke(*args, "--revoke=192.0.2.10"))
    found = subprocess.run([pb.find_tool("postmap"), "-c", str(site.conf), "-q",
                            "192.0.2.10", f"memcache:{cf}"], capture_output=True,
                           text=True)
    assert (found.returncode, found.stdout) == (1, ""), found
    assert "192.0.2.10" not in ok(invoke(*args, "--list")).stdout
