"""The stores that need a server, each against the real one started by the
test on loopback:

- qmail: a real ``tcpserver`` hands RELAYCLIENT to the process it starts for
  a loopback client;
- pgsql: a private PostgreSQL server on 127.0.0.1, and a private Postfix
  whose ``pgsql:`` map (the README's) reads the table that "host A" wrote;
- memcache: a private memcached on 127.0.0.1 and a Postfix ``memcache:`` map.

A missing program is a skip, and a failure under CI (CI=true). The stores
that need only their tools are in test_backends.py, the SQLite map through
Postfix and MariaDB in test_backends_sql.py.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time

import pytest

import daemons
import pbsmtp_batch as pb
import pbsmtp_stores as stores
from conftest import NOW, dovecot_login, require, unavailable
from relay import assert_accepted, assert_refused, postfix_with_map
from runs import invoke, listed, local_args, run_ok

pytestmark = pytest.mark.live


###############################################################################
# qmail / tcpserver ###########################################################
###############################################################################

def test_qmail_tcpserver_sets_relayclient(site):
    """A real tcpserver reads the compiled rules for each connection."""
    tcpserver = require("tcpserver", "ucspi-tcp")
    require("tcprules", "ucspi-tcp")
    rules = site.map.parent / "tcp.smtp"
    args = [f"--dbfile={rules}", "--backend=qmail"]
    now = int(time.time())
    site.append(dovecot_login(now - 5, "127.0.0.31"))
    run_ok(*local_args(site, *args))
    port = daemons.free_port()
    # "env" stands in for qmail-smtpd: it prints the environment tcpserver gave it.
    proc = daemons.start_process([tcpserver, "-H", "-R", "-x", f"{rules}.cdb", "127.0.0.1",
                                  str(port), "/usr/bin/env"], site.root / "tcpserver.log")
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
        daemons.stop_process(proc)


###############################################################################
# PostgreSQL ##################################################################
###############################################################################

class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1:port, run as postgres."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            unavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("no postgres user (Debian: apt-get install postgresql)")
        if os.geteuid() != 0:
            unavailable("the PostgreSQL test server is started as root (then as postgres)")
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
        self.proc = daemons.start_process(
            [os.path.join(self.bin, "postgres"), "-D", self.data, "-p", str(self.port),
             "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
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
        daemons.stop_process(self.proc)
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


PGSQL_CF = """\
hosts = inet:127.0.0.1:{port}
user = postfix_relay
dbname = mail
query = SELECT extract(epoch FROM last_login)::bigint FROM pbsmtp_relay
    WHERE ip = '%s' AND last_login > now() - interval '{grace} seconds'
"""


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

def mc_get(server, key):
    host, port = server.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"get {key}\r\n".encode())
        data = b""
        while not data.endswith(b"END\r\n"):
            data += s.recv(4096)
    lines = data.decode().split("\r\n")
    return lines[1] if lines[0].startswith("VALUE") else None


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


MEMCACHE_CF = """\
memcache = inet:{server}
key_format = {prefix}%s
"""


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
