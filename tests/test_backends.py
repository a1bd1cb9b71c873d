"""The map stores besides Postfix's own maps (sendmail, qmail, exim, pgsql,
memcache), each against the real program it talks to.

- sendmail: ``makemap`` from Debian's sendmail-bin, which conflicts with
  Postfix as a package, so it is unpacked once (``apt-get download`` +
  ``dpkg -x``, tests/debs.py), never installed;
- qmail: ``tcprules`` compiles the rules and a real ``tcpserver`` hands
  RELAYCLIENT to the process it starts for a loopback client;
- exim: Exim itself (unpacked like sendmail) runs an SMTP session with -bh
  through the README's ACL line;
- pgsql: a private PostgreSQL server on 127.0.0.1, and a private Postfix
  whose ``pgsql:`` map (the README's) reads the table that "host A" wrote;
- memcache: a private memcached on 127.0.0.1 and a Postfix ``memcache:`` map.

A missing program is a skip, and a failure under CI (CI=true).
"""

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import daemons
import debs
import pbsmtp_batch as pb
import pbsmtp_stores as stores
from conftest import NOW, dovecot_login, noise

RELAY_RCPT = "someone@example.net"


###############################################################################
# Helpers #####################################################################
###############################################################################

def missing(message):
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def program(name, package):
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path) or missing(
        f"{name} is not installed (Debian: apt-get install {package})")


def invoke(*args, env=None):
    return CliRunner().invoke(pb.cli, list(args), env=env, catch_exceptions=False)


def run_ok(*args, env=None):
    result = invoke(*args, env=env)
    assert (result.exit_code, result.output) == (0, ""), result.output
    return result


def listed(site, *backend_args, now=None):
    args = [f"--dbfile={site.map}", *backend_args, f"--postfix-config={site.conf}", "--list",
            "--json"]
    if now is not None:
        args.append(f"--now={now}")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return {row["ip"]: row["login"] for row in json.loads(result.output)}


def local_args(site, *extra, grace=None):
    """Like Site.args, but on the real clock (for stores whose readers use it)."""
    args = [f"--logfile={site.log}", f"--dbfile={site.map}", f"--state-dir={site.state}",
            f"--postfix-config={site.conf}", *extra]
    if grace is not None:
        args.append(f"--grace={grace}")
    return args


def start_daemon(argv, logfile, **kwargs):
    with open(logfile, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def stop_daemon(proc):
    if proc is not None:
        daemons.stop_pid(proc.pid, proc)
        daemons.stop_session(proc.pid)


def postfix_with_map(workdir, map_type, cf_text):
    """A private Postfix (daemons.Postfix) whose relay map is MAP_TYPE:CF."""
    if os.geteuid() != 0:
        missing("Postfix must be started as root")
    if map_type not in daemons.supported_map_types():
        missing(f"Postfix has no {map_type} map support "
                f"(Debian: apt-get install {daemons.map_package(map_type)})")
    cf = os.path.join(workdir, f"{map_type}-relay.cf")
    with open(cf, "w") as f:
        f.write(cf_text)
    return daemons.Postfix(workdir, map_type, cf)


def rcpt(postfix, source):
    return daemons.smtp_rcpt("127.0.0.1", postfix.port, RELAY_RCPT, source)


def assert_accepted(postfix, source):
    code, text = rcpt(postfix, source)
    assert code == 250, (source, code, text, daemons.read_text(postfix.maillog)[-2000:])


def assert_refused(postfix, source):
    code, text = rcpt(postfix, source)
    assert code == 554 and "Relay access denied" in text, (
        source, code, text, daemons.read_text(postfix.maillog)[-2000:])


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
    m4 = program("m4", "m4")
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
        missing("unshare --uts needs root here")
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
    program("tcprules", "ucspi-tcp")
    check = program("tcprulescheck", "ucspi-tcp")
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


@pytest.mark.daemons
def test_qmail_tcpserver_sets_relayclient(site):
    """A real tcpserver reads the compiled rules for each connection."""
    tcpserver = program("tcpserver", "ucspi-tcp")
    program("tcprules", "ucspi-tcp")
    rules = site.map.parent / "tcp.smtp"
    args = [f"--dbfile={rules}", "--backend=qmail"]
    now = int(time.time())
    site.append(dovecot_login(now - 5, "127.0.0.31"))
    run_ok(*local_args(site, *args))
    port = daemons.free_port()
    # "env" stands in for qmail-smtpd: it prints the environment tcpserver gave it.
    proc = start_daemon([tcpserver, "-H", "-R", "-x", f"{rules}.cdb", "127.0.0.1", str(port),
                         "/usr/bin/env"], site.root / "tcpserver.log")
    try:
        daemons.wait_for_port("127.0.0.1", port, proc.pid)

        def env_for(source):
            with socket.create_connection(("127.0.0.1", port), timeout=5,
                                          source_address=(source, 0)) as s:
                return b"".join(iter(lambda: s.recv(4096), b"")).decode()
        assert "RELAYCLIENT=\n" in env_for("127.0.0.31")
        assert f"PBSMTP_LOGIN={now - 5}\n" in env_for("127.0.0.31")
        assert "RELAYCLIENT" not in env_for("127.0.0.32")
        site.append(dovecot_login(now - 4, "127.0.0.32"))
        run_ok(*local_args(site, *args))
        assert "RELAYCLIENT=\n" in env_for("127.0.0.32")    # no restart
    finally:
        stop_daemon(proc)


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
        missing("exim -bh with a private config needs root here")
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
# PostgreSQL ##################################################################
###############################################################################

class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1:port, run as postgres."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            missing("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing("no postgres user (Debian: apt-get install postgresql)")
        if os.geteuid() != 0:
            missing("the PostgreSQL test server is started as root (then as postgres)")
        self.bin = os.path.dirname(found[-1])
        self.dir = daemons.make_workdir("pbsmtp-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = daemons.free_port()
        self.proc = None

    def dsn(self, user="postgres", dbname="postgres"):
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def start(self):
        shutil.chown(self.dir, "postgres", "postgres")
        as_pg = dict(user="postgres", group="postgres", extra_groups=[], cwd=self.dir)
        subprocess.run([os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, **as_pg)
        self.proc = start_daemon([os.path.join(self.bin, "postgres"), "-D", self.data,
                                  "-p", str(self.port), "-k", self.dir,
                                  "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                                 os.path.join(self.dir, "postgres.log"), **as_pg)
        psycopg = pytest.importorskip("psycopg")

        def ready():
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                if self.proc.poll() is not None:
                    raise daemons.DaemonError(daemons.read_text(
                        os.path.join(self.dir, "postgres.log")))
                return False
        daemons.wait_until(ready, "PostgreSQL to accept connections", timeout=30)

    def stop(self):
        stop_daemon(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# README: the grants of the two roles.
PG_ROLES = """\
CREATE ROLE pbsmtp LOGIN;         -- the POP/IMAP hosts
CREATE ROLE postfix_relay LOGIN;  -- the Postfix relays
GRANT SELECT, INSERT, UPDATE, DELETE ON pbsmtp_relay TO pbsmtp;
GRANT SELECT ON pbsmtp_relay TO postfix_relay;
"""


@pytest.fixture(scope="module")
def pg():
    if os.environ.get("CI") == "true":
        import psycopg  # noqa: F401  (CI must install the pgsql extra)
    else:
        pytest.importorskip("psycopg")
    server = PostgresServer()
    try:
        server.start()
        import psycopg
        with psycopg.connect(server.dsn(), autocommit=True) as db:
            db.execute("CREATE DATABASE mail")
        with psycopg.connect(server.dsn(dbname="mail"), autocommit=True) as db:
            db.execute(stores.PGSQL_SCHEMA)
            db.execute(PG_ROLES)
        yield server
    finally:
        server.stop()


def pg_rows(server):
    import psycopg
    with psycopg.connect(server.dsn(dbname="mail")) as db:
        return dict(db.execute("SELECT ip, extract(epoch FROM last_login)::bigint "
                               "FROM pbsmtp_relay ORDER BY ip").fetchall())


def pg_clear(server):
    import psycopg
    with psycopg.connect(server.dsn(dbname="mail"), autocommit=True) as db:
        db.execute("DELETE FROM pbsmtp_relay")


@pytest.mark.daemons
def test_pgsql_hosts_share_one_table(pg, site, tmp_path):
    from conftest import Site
    pg_clear(pg)
    env = {"PBSMTP_PG_DSN": pg.dsn(user="pbsmtp", dbname="mail")}   # the variable works
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "2001:db8::10"))
    run_ok(*site.args("--backend=pgsql"), env=env)
    assert pg_rows(pg) == {"192.0.2.10": NOW - 60, "2001:db8::10": NOW - 50}
    # Host B: its own log and state; an older login never lowers a newer one.
    (tmp_path / "b").mkdir()
    host_b = Site(tmp_path / "b")
    host_b.append(dovecot_login(NOW - 70, "192.0.2.10"), dovecot_login(NOW - 20, "2001:db8::10"),
                  dovecot_login(NOW - 10, "192.0.2.20"))
    run_ok(*host_b.args("--backend=pgsql"), env=env)
    assert pg_rows(pg) == {"192.0.2.10": NOW - 60, "2001:db8::10": NOW - 20,
                           "192.0.2.20": NOW - 10}
    assert listed(site, "--backend=pgsql", f"--pg-dsn={pg.dsn(dbname='mail')}",
                  now=NOW) == pg_rows(pg)
    # Any host purges; a row refreshed since it was read is left alone.
    store = stores.PgsqlStore(pg.dsn(user="pbsmtp", dbname="mail"))
    plan = pb.merge(store.read(), [], NOW + pb.DEFAULT_GRACE - 15, pb.DEFAULT_GRACE)
    assert sorted(plan.expired) == ["192.0.2.10", "2001:db8::10"]
    store2 = stores.PgsqlStore(pg.dsn(user="pbsmtp", dbname="mail"))
    login = pb.Login("192.0.2.10", NOW + 100, "alice", "dovecot")
    store2.publish(pb.merge(store2.read(), [login], NOW + 100, pb.DEFAULT_GRACE))
    store.publish(plan)
    assert pg_rows(pg) == {"192.0.2.10": NOW + 100, "192.0.2.20": NOW - 10}


@pytest.mark.daemons
def test_pgsql_drops_rows_that_are_not_addresses(pg, site):
    """A key like 192.0.2 would open a whole /24 to Postfix's shortened lookups."""
    import psycopg
    pg_clear(pg)
    with psycopg.connect(pg.dsn(dbname="mail"), autocommit=True) as db:
        db.execute("INSERT INTO pbsmtp_relay VALUES ('192.0.2', to_timestamp(%s), 'x'), "
                   "('unknown', to_timestamp(%s), 'x')", (NOW - 5, NOW - 5))
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(*site.args("--backend=pgsql", f"--pg-dsn={pg.dsn('pbsmtp', 'mail')}"))
    assert result.exit_code == 0
    assert "dropped 2 map entries that are not an address" in result.output
    assert pg_rows(pg) == {"192.0.2.10": NOW - 60}


@pytest.mark.daemons
def test_pgsql_errors_are_one_line(pg, site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(*site.args("--backend=pgsql"))
    assert result.exit_code == 1 and "needs --pg-dsn" in result.output
    result = invoke(*site.args("--backend=pgsql", "--pg-table=nosuch",
                               f"--pg-dsn={pg.dsn(dbname='mail')}"))
    assert result.exit_code == 1
    assert 'relation "nosuch" does not exist' in result.output
    assert "schema in the README" in result.output
    result = invoke(*site.args("--backend=pgsql", "--pg-dsn=host=127.0.0.1 port=1 dbname=x"))
    assert result.exit_code == 1 and "cannot connect to PostgreSQL" in result.output


def test_pgsql_without_psycopg_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(pb.PbsmtpError, match=r"Debian: python3-psycopg; in a venv: "
                                             r"pip install '\.\[pgsql\]'"):
        stores.PgsqlStore("host=127.0.0.1").read()


PGSQL_CF = """\
hosts = inet:127.0.0.1:{port}
user = postfix_relay
dbname = mail
query = SELECT extract(epoch FROM last_login)::bigint FROM pbsmtp_relay
    WHERE ip = '%s' AND last_login > now() - interval '{grace} seconds'
"""


@pytest.mark.daemons
def test_pgsql_map_grants_relay_through_postfix(pg, site):
    """Host A logs the login and runs pbsmtp-batch; a Postfix relay reads the
    same table through the README's pgsql: map."""
    pg_clear(pg)
    grace = 300
    workdir = daemons.make_workdir()
    postfix = postfix_with_map(workdir, "pgsql", PGSQL_CF.format(port=pg.port, grace=grace))
    try:
        postfix.configure()
        with postfix:
            assert_refused(postfix, "127.0.0.41")
            now = int(time.time())
            site.append(dovecot_login(now - 5, "127.0.0.41"))
            run_ok(*local_args(site, "--backend=pgsql", f"--pg-dsn={pg.dsn('pbsmtp', 'mail')}",
                               f"--postfix-config={postfix.config_dir}", grace=grace))
            assert_accepted(postfix, "127.0.0.41")
            assert_refused(postfix, "127.0.0.42")
            # A row past the grace window that nobody purged never grants relay.
            import psycopg
            with psycopg.connect(pg.dsn(dbname="mail"), autocommit=True) as db:
                db.execute("INSERT INTO pbsmtp_relay VALUES ('127.0.0.42', "
                           "now() - interval '310 seconds', 'host-b')")
            assert_refused(postfix, "127.0.0.42")
            log = daemons.read_text(postfix.maillog)
            assert "warning" not in log and "error" not in log, log[-2000:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


###############################################################################
# memcached ###################################################################
###############################################################################

@pytest.fixture(scope="module")
def memcached():
    binary = program("memcached", "memcached")
    workdir = daemons.make_workdir("pbsmtp-mc-")
    port = daemons.free_port()
    proc = None
    try:
        proc = start_daemon([binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1",
                             "-m", "16", "-u", "nobody"], os.path.join(workdir, "memcached.log"))
        daemons.wait_for_port("127.0.0.1", port, proc.pid)
        yield f"127.0.0.1:{port}"
    finally:
        stop_daemon(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def mc_get(server, key):
    host, port = server.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"get {key}\r\n".encode())
        data = b""
        while not data.endswith(b"END\r\n"):
            data += s.recv(4096)
    lines = data.decode().split("\r\n")
    return lines[1] if lines[0].startswith("VALUE") else None


@pytest.mark.daemons
def test_memcache_entries_expire_by_ttl(memcached, site):
    prefix = f"t{os.getpid()}:"
    args = ["--backend=memcache", f"--memcache-server={memcached}",
            f"--memcache-prefix={prefix}"]
    now = int(time.time())
    site.append(dovecot_login(now - 1, "192.0.2.10"), dovecot_login(now - 1, "2001:db8::10"),
                dovecot_login(now - 20, "192.0.2.11"))
    run_ok(*local_args(site, *args, grace=3))     # 192.0.2.11 is already too old
    assert mc_get(memcached, prefix + "192.0.2.10") == str(now - 1)
    assert mc_get(memcached, prefix + "2001:db8::10") == str(now - 1)
    assert mc_get(memcached, prefix + "192.0.2.11") is None
    assert listed(site, *args, "--grace=3") == {"192.0.2.10": now - 1, "2001:db8::10": now - 1}
    time.sleep(max(0, now + 3 - time.time()) + 1.1)
    # Gone without any run: memcached expired them.
    assert mc_get(memcached, prefix + "192.0.2.10") is None
    assert listed(site, *args, "--grace=3") == {}


@pytest.mark.daemons
def test_memcache_index_is_merged_between_hosts(memcached):
    prefix = f"m{os.getpid()}:"
    now = int(time.time())
    a = stores.MemcacheStore(memcached, prefix, 600)
    b = stores.MemcacheStore(memcached, prefix, 600)
    a.publish(pb.merge(a.read(), [pb.Login("192.0.2.1", now - 5, None, "x")], now, 600))
    seen_by_b = b.read()
    a.publish(pb.merge(a.read(), [pb.Login("192.0.2.2", now - 4, None, "x")], now, 600))
    b.publish(pb.merge(seen_by_b, [pb.Login("192.0.2.3", now - 3, None, "x")], now, 600))
    assert a.read() == {"192.0.2.1": str(now - 5), "192.0.2.2": str(now - 4),
                        "192.0.2.3": str(now - 3)}


def test_memcache_down_is_one_line(site):
    port = daemons.free_port()
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(*site.args("--backend=memcache", f"--memcache-server=127.0.0.1:{port}"))
    assert result.exit_code == 1
    assert f"cannot connect to memcached 127.0.0.1:{port}" in result.output


MEMCACHE_CF = """\
memcache = inet:{server}
key_format = {prefix}%s
"""


@pytest.mark.daemons
def test_memcache_map_grants_relay_through_postfix(memcached, site):
    prefix = f"pf{os.getpid()}:"
    grace = 4
    workdir = daemons.make_workdir()
    postfix = postfix_with_map(workdir, "memcache",
                               MEMCACHE_CF.format(server=memcached, prefix=prefix))
    try:
        postfix.configure()
        with postfix:
            assert_refused(postfix, "127.0.0.51")
            now = int(time.time())
            site.append(dovecot_login(now - 1, "127.0.0.51"))
            run_ok(*local_args(site, "--backend=memcache", f"--memcache-server={memcached}",
                               f"--memcache-prefix={prefix}",
                               f"--postfix-config={postfix.config_dir}", grace=grace))
            assert_accepted(postfix, "127.0.0.51")
            assert_refused(postfix, "127.0.0.52")
            # No purge runs: the entry's TTL ends the grace window.
            time.sleep(max(0, now - 1 + grace - time.time()) + 1.1)
            assert_refused(postfix, "127.0.0.51")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
