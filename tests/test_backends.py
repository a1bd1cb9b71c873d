"""The map stores besides Postfix's own maps that need no server (sendmail,
qmail, exim, sqlite; memcache when it is down), each against the real
program that reads what they write.

- sendmail: ``makemap`` from Debian's sendmail-bin, which conflicts with
  Postfix as a package, so it is unpacked once (``apt-get download`` +
  ``dpkg -x``, tests/debs.py), never installed;
- qmail: ``tcprules`` compiles the rules;
- exim: Exim itself (unpacked like sendmail) runs an SMTP session with -bh
  through the README's ACL line;
- sqlite: the stdlib sqlite3 writes one file.

A missing program is a skip, and a failure under CI (CI=true). The stores
with a server (tcpserver, PostgreSQL, memcached) are in test_backends_live.py,
the SQLite map through Postfix and MariaDB in test_backends_sql.py.
"""

import os
import pwd
import shutil
import sqlite3
import subprocess

import pytest
from click.testing import CliRunner

import daemons
import debs
import pbsmtp_batch as pb
import pbsmtp_stores as stores
from conftest import NOW, dovecot_login, noise, require, unavailable
from relay import RELAY_RCPT
from runs import invoke, listed, run_ok

pytestmark = pytest.mark.tools


###############################################################################
# Sendmail ####################################################################
###############################################################################

@pytest.fixture(scope="module")
def makemap():
    found = shutil.which("makemap", path=os.environ.get("PATH", "") + ":/usr/sbin")
    return found or debs.unpacked_file("sendmail-bin", "usr/libexec/sendmail/makemap")


def dump(makemap, dbfile):
    done = subprocess.run([makemap, "-C", "/dev/null", "-u", "hash", str(dbfile)],
                          capture_output=True, text=True, check=True)
    return sorted(done.stdout.splitlines())


def test_sendmail_access_db(site, makemap, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(makemap) + os.pathsep + os.environ["PATH"])
    site.append(noise(NOW - 70), dovecot_login(NOW - 60, "192.0.2.10"),
                dovecot_login(NOW - 50, "2001:db8::10"))
    run_ok(*site.args("--backend=sendmail"))
    db = f"{site.map}.db"
    with open(db, "rb") as f:                    # Berkeley DB hash magic
        assert f.read(16)[12:16] == bytes.fromhex("61150600")
    assert dump(makemap, site.map) == [
        "connect:192.0.2.10\tRELAY", "connect:ipv6:2001:db8:0:0:0:0:0:10\tRELAY",
        "connect:ipv6:2001:db8::10\tRELAY",
        f"pbsmtp-batch:192.0.2.10\t{NOW - 60}", f"pbsmtp-batch:2001:db8::10\t{NOW - 50}"]
    assert sorted(os.listdir(site.map.parent)) == ["pop-before-smtp.db"]
    assert listed(site, "--backend=sendmail", now=NOW) == {"192.0.2.10": NOW - 60,
                                                           "2001:db8::10": NOW - 50}
    inode = os.stat(db).st_ino
    # Past the grace window: purged, by a new file renamed into place.
    run_ok(*site.args("--backend=sendmail", now=NOW - 55 + pb.DEFAULT_GRACE))
    assert dump(makemap, site.map) == ["connect:ipv6:2001:db8:0:0:0:0:0:10\tRELAY",
                                       "connect:ipv6:2001:db8::10\tRELAY",
                                       f"pbsmtp-batch:2001:db8::10\t{NOW - 50}"]
    assert os.stat(db).st_ino != inode


# README: the sendmail.mc lines (the rest of this .mc only makes sendmail -bt
# work in a sandbox: no FQDN, no DNS, maps below /tmp).
SENDMAIL_MC = """\
divert(0)dnl
OSTYPE(`linux')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confDOMAIN_NAME', `sendmail-test.localdomain')dnl
define(`confSERVICE_SWITCH_FILE', `{work}/service.switch')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit,MapInUnsafeDirPath')dnl
FEATURE(`access_db', `hash -T<TMPF> -o {map}')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


def sendmail_relay(workdir, access, clients):
    """sendmail's own check_rcpt ruleset (sendmail -bt) for a relay recipient,
    as each client address: RELAY, or the error it returns."""
    m4 = require("m4", "m4")
    sendmail = debs.unpacked_file("sendmail-bin", "usr/libexec/sendmail/sendmail")
    cf_dir = debs.unpacked_file("sendmail-cf", "usr/share/sendmail/cf") + "/"
    with open(os.path.join(workdir, "service.switch"), "w") as f:
        f.write("hosts files\naliases files\n")
    with open(os.path.join(workdir, "test.mc"), "w") as f:
        f.write(SENDMAIL_MC.format(work=workdir, map=access))
    cf = subprocess.run([m4, f"-D_CF_DIR_={cf_dir}", cf_dir + "m4/cf.m4",
                         os.path.join(workdir, "test.mc")],
                        capture_output=True, text=True, check=True).stdout
    with open(os.path.join(workdir, "test.cf"), "w") as f:
        f.write(cf)
    script = "".join(f".D{{client_addr}}{c}\ncheck_rcpt <{RELAY_RCPT}>\n" for c in clients)
    # sendmail sleeps a minute when the host name is not qualified: give it
    # one in a private UTS namespace.
    done = subprocess.run(
        ["unshare", "--uts", "--", "/bin/sh", "-c",
         'hostname sendmail-test.localdomain && exec "$@"', "sh",
         sendmail, "-C", os.path.join(workdir, "test.cf"), "-bt"],
        input=script, capture_output=True, text=True, timeout=60)
    results = [line.split("returns:", 1)[1].strip() for line in done.stdout.splitlines()
               if line.startswith("check_rcpt ") and "returns:" in line]
    assert len(results) == len(clients), (done.stdout[-3000:], done.stderr)
    return results


def test_sendmail_relays_for_the_access_db(site, makemap, monkeypatch, tmp_path):
    if os.geteuid() != 0:
        unavailable("unshare --uts needs root here")
    monkeypatch.setenv("PATH", os.path.dirname(makemap) + os.pathsep + os.environ["PATH"])
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "2001:db8::10"))
    run_ok(*site.args("--backend=sendmail"))
    # sendmail 8.17 (IPV6_FULL) looks IPv6 clients up uncompressed.
    clients = ["192.0.2.10", "192.0.2.11", "IPv6:2001:db8:0:0:0:0:0:10",
               "IPv6:2001:db8:0:0:0:0:0:11"]
    results = sendmail_relay(str(tmp_path), site.map, clients)
    assert results[0] == results[2] == "RELAY", results
    assert "Relaying denied" in results[1] and "Relaying denied" in results[3], results


def test_sendmail_without_makemap_names_the_package(site, monkeypatch, tmp_path):
    monkeypatch.setattr(pb, "SBIN_DIRS", ())
    monkeypatch.setattr(stores, "EXTRA_TOOL_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = CliRunner().invoke(pb.cli, site.args("--backend=sendmail"))
    assert result.exit_code == 1
    assert "makemap not found" in result.output and "'sendmail-bin'" in result.output


###############################################################################
# qmail / tcpserver ###########################################################
###############################################################################

RULES_HEAD = '# site rules\n127.:allow,RELAYCLIENT=""\n192.0.2.11:deny\n:allow\n'


def test_qmail_rules_keep_the_site_rules(site):
    require("tcprules", "ucspi-tcp")
    check = require("tcprulescheck", "ucspi-tcp")
    rules = site.map.parent / "tcp.smtp"
    rules.write_text(RULES_HEAD)
    args = [f"--dbfile={rules}", "--backend=qmail"]
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "192.0.2.11"),
                dovecot_login(NOW - 40, "2001:db8::10"))
    result = invoke(*site.args(), *args)
    assert result.exit_code == 0
    assert "IPv4 only: not written: 2001:db8::10" in result.output
    assert rules.read_text() == RULES_HEAD + (
        f'192.0.2.10:allow,RELAYCLIENT="",PBSMTP_LOGIN="{NOW - 60}"\n'
        f'192.0.2.11:allow,RELAYCLIENT="",PBSMTP_LOGIN="{NOW - 50}"\n')
    assert sorted(os.listdir(site.map.parent)) == ["tcp.smtp", "tcp.smtp.cdb"]

    def rule(ip):
        return subprocess.run([check, f"{rules}.cdb"], env={"TCPREMOTEIP": ip},
                              capture_output=True, text=True).stdout
    assert "set environment variable RELAYCLIENT=" in rule("192.0.2.10")
    assert "deny connection" in rule("192.0.2.11")           # the site's rule wins
    assert "RELAYCLIENT" not in rule("192.0.2.12")
    listing = invoke(*args, f"--now={NOW}", "--list", "--json").output
    assert '"ip": "192.0.2.10"' in listing and "2001:db8" not in listing
    run_ok(*site.args(now=NOW - 55 + pb.DEFAULT_GRACE), *args)  # 192.0.2.10 expires
    assert rules.read_text() == RULES_HEAD + (
        f'192.0.2.11:allow,RELAYCLIENT="",PBSMTP_LOGIN="{NOW - 50}"\n')
    assert "RELAYCLIENT" not in rule("192.0.2.10")


###############################################################################
# Exim ########################################################################
###############################################################################

EXIM_ACL = "  accept  hosts = net-iplsearch;{list}\n"


@pytest.fixture(scope="module")
def exim():
    found = shutil.which("exim4", path="/usr/sbin:/usr/bin") or shutil.which(
        "exim", path="/usr/sbin:/usr/bin")
    return found or debs.unpacked_file("exim4-daemon-light", "usr/sbin/exim4")


def exim_session(exim, workdir, listfile, client):
    """An SMTP session from CLIENT through Exim's RCPT ACL (exim -bh, which
    runs the ACLs and delivers nothing). Debian's exim is built for the user
    Debian-exim: where exim4 is not installed, a private mount namespace
    adds that user to a copy of /etc/passwd and /etc/group."""
    spool = os.path.join(workdir, "exim-spool")
    os.makedirs(spool, exist_ok=True)
    conf = os.path.join(workdir, "exim.conf")
    with open(conf, "w") as f:
        f.write(f"exim_user = root\nexim_group = root\nspool_directory = {spool}\n"
                f"log_file_path = {spool}/%slog\nprimary_hostname = exim-test.localdomain\n"
                f"domainlist local_domains = localhost\nacl_smtp_rcpt = acl_check_rcpt\n"
                f"begin acl\nacl_check_rcpt:\n"
                + EXIM_ACL.format(list=listfile) +
                "  require message = relay not permitted\n"
                "          domains = +local_domains\n  accept\n")
    argv = [exim, "-C", conf, "-bh", client]
    try:
        pwd.getpwnam("Debian-exim")
    except KeyError:
        for name, line in (("passwd", "Debian-exim:x:64999:64999::/nonexistent:/bin/false"),
                           ("group", "Debian-exim:x:64999:")):
            with open(f"/etc/{name}") as src, open(os.path.join(workdir, name), "w") as dst:
                dst.write(src.read() + line + "\n")
        script = ('mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && '
                  'shift 2 && exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                script, "sh", os.path.join(workdir, "passwd"), os.path.join(workdir, "group"),
                *argv]
    session = (f"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n"
               f"RCPT TO:<{RELAY_RCPT}>\r\nQUIT\r\n")
    done = subprocess.run(argv, input=session, capture_output=True, text=True, timeout=30)
    replies = [line for line in done.stdout.splitlines() if line[:3].isdigit()]
    assert replies, (done.stdout, done.stderr)
    return replies[-2]          # the RCPT reply; the last is QUIT's 221


def test_exim_acl_relays_listed_clients(site, exim, tmp_path):
    if os.geteuid() != 0:
        unavailable("exim -bh with a private config needs root here")
    listfile = site.map.parent / "pop-before-smtp"
    args = [f"--dbfile={listfile}", "--backend=exim"]
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "2001:db8::10"))
    run_ok(*site.args(), *args)
    assert listfile.read_text().splitlines()[1:] == [f"192.0.2.10: {NOW - 60}",
                                                     f'"2001:db8::10": {NOW - 50}']
    assert sorted(os.listdir(site.map.parent)) == ["pop-before-smtp"]
    work = str(tmp_path)
    assert exim_session(exim, work, listfile, "192.0.2.10").startswith("250")
    assert exim_session(exim, work, listfile, "2001:db8::10").startswith("250")
    assert exim_session(exim, work, listfile, "192.0.2.11").startswith("550")
    assert exim_session(exim, work, listfile, "2001:db8::10:1").startswith("550")
    assert listed(site, *args, now=NOW) == {"192.0.2.10": NOW - 60, "2001:db8::10": NOW - 50}
    run_ok(*site.args(now=NOW - 55 + pb.DEFAULT_GRACE), *args)
    assert exim_session(exim, work, listfile, "192.0.2.10").startswith("550")
    assert exim_session(exim, work, listfile, "2001:db8::10").startswith("250")


###############################################################################
# memcached ###################################################################
###############################################################################

def test_memcache_down_is_one_line(site):
    port = daemons.free_port()
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(*site.args("--backend=memcache", f"--memcache-server=127.0.0.1:{port}"))
    assert result.exit_code == 1
    assert f"cannot connect to memcached 127.0.0.1:{port}" in result.output


###############################################################################
# Switching backends ##########################################################
###############################################################################

def test_switch_backend_with_reprocess(site, tmp_path):
    """README: --reprocess into the new store (its own state dir), then switch."""
    site.append(dovecot_login(NOW - 4000, "192.0.2.9"), dovecot_login(NOW - 60, "192.0.2.10"),
                dovecot_login(NOW - 50, "2001:db8::10"))
    run_ok(*site.args())                                   # the hash map, as before
    listfile = tmp_path / "exim-list"
    config = tmp_path / "pbsmtp.conf"
    config.write_text(f'backend = "exim"\ndbfile = "{listfile}"\n'
                      f'state-dir = "{tmp_path / "state-exim"}"\n')
    run_ok(f"--config={config}", f"--logfile={site.log}", f"--postfix-config={site.conf}",
           f"--now={NOW}", "--reprocess")
    assert listed(site, f"--config={config}", f"--dbfile={listfile}", now=NOW) == {
        "192.0.2.10": NOW - 60, "2001:db8::10": NOW - 50}
    assert listed(site, "--map-type=hash", now=NOW) == {"192.0.2.10": NOW - 60,
                                                        "2001:db8::10": NOW - 50}


###############################################################################
# SQLite ######################################################################
###############################################################################

def sqlite_rows(path):
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT ip, last_login FROM pbsmtp_relay ORDER BY ip"))


def test_sqlite_keeps_the_newest_login_and_purges(site):
    db = site.root / "relay.sqlite"
    args = ["--backend=sqlite", f"--dbfile={db}"]
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "2001:db8::10"))
    run_ok(*site.args(*args))
    assert sqlite_rows(db) == {"192.0.2.10": NOW - 60, "2001:db8::10": NOW - 50}
    assert oct(os.stat(db).st_mode & 0o777) == oct(stores.SqliteStore.MODE)
    with sqlite3.connect(db) as conn:                     # rollback journal, not WAL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert listed(site, *args, now=NOW) == {"192.0.2.10": NOW - 60, "2001:db8::10": NOW - 50}
    # Another writer refreshed a row since this host read it: the purge keeps it.
    store = stores.SqliteStore(str(db))
    plan = pb.merge(store.read(), [], NOW + pb.DEFAULT_GRACE - 15, pb.DEFAULT_GRACE)
    assert sorted(plan.expired) == ["192.0.2.10", "2001:db8::10"]
    other = stores.SqliteStore(str(db), host="host-b")
    other.publish(pb.merge(other.read(), [pb.Login("192.0.2.10", NOW + 100, "a", "dovecot")],
                           NOW + 100, pb.DEFAULT_GRACE))
    # An older login never lowers a newer one.
    other.publish(pb.merge({}, [pb.Login("192.0.2.10", NOW + 50, "a", "dovecot")],
                           NOW + 100, pb.DEFAULT_GRACE))
    store.publish(plan)
    assert sqlite_rows(db) == {"192.0.2.10": NOW + 100}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT host FROM pbsmtp_relay").fetchone()[0] == "host-b"


def test_sqlite_drops_rows_that_are_not_addresses(site):
    db = site.root / "relay.sqlite"
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    run_ok(*site.args("--backend=sqlite", f"--dbfile={db}"))
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO pbsmtp_relay VALUES ('192.0.2', ?, 'x')", (NOW - 5,))
    site.append(dovecot_login(NOW - 30, "192.0.2.11"))
    result = invoke(*site.args("--backend=sqlite", f"--dbfile={db}"))
    assert result.exit_code == 0
    assert "dropped 1 map entries that are not an address" in result.output
    assert sqlite_rows(db) == {"192.0.2.10": NOW - 60, "192.0.2.11": NOW - 30}


def test_sqlite_errors_are_one_line_and_change_nothing(site, tmp_path):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(*site.args("--backend=sqlite", f"--dbfile={tmp_path}/nodir/r.sqlite"))
    assert result.exit_code == 1
    assert result.output == f"Error: directory {tmp_path}/nodir does not exist\n"
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_text("this is not a database\n" * 100)
    result = invoke(*site.args("--backend=sqlite", f"--dbfile={bad}"))
    assert result.exit_code == 1
    assert result.output == f"Error: SQLite database {bad}: file is not a database\n"
    assert not (site.state / "offset").exists() and len(result.output.splitlines()) == 1
