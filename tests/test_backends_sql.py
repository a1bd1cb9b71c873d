"""The SQLite and MariaDB/MySQL stores, against the real servers that read them.

- sqlite: a private Postfix reads the file a run wrote through the README's
  ``sqlite:`` map (Debian postfix-sqlite) as user postfix (the store alone:
  test_backends.py).
- mysql: a private MariaDB server (Debian mariadb-server) started by the test
  on 127.0.0.1 and a unix socket in a temp dir, stopped by its PID; two
  writer "hosts"; a private Postfix reads the table through the README's
  ``mysql:`` map (Debian postfix-mysql).

A missing program is a skip, and a failure under CI (CI=true). The errors
that need nothing but Python are in test_backends_unit.py.
"""

import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

import daemons
import pbsmtp_batch as pb
import pbsmtp_stores as stores
from conftest import NOW, Site, dovecot_login, require_map_type, unavailable
from relay import assert_accepted, assert_refused, postfix_with_map
from runs import invoke, listed, local_args, run_ok

pytestmark = pytest.mark.live


###############################################################################
# SQLite ######################################################################
###############################################################################

README = Path(__file__).resolve().parent.parent / "README"


def readme_cf(after: str, **replace) -> str:
    """The README's Postfix .cf block that follows ``after``, with its
    example values replaced by the test's."""
    text = README.read_text()
    block = re.search(r"```\n(.*?)```", text[text.index(after):], re.DOTALL)[1]
    for old, new in replace.items():
        assert old in block, old
        block = block.replace(old, new)
    return block


def sqlite_cf(db, grace):
    return readme_cf("/etc/postfix/pop-before-smtp.sqlite.cf`:", **{
        "/var/lib/pbsmtp-batch/relay.sqlite": db, "- 1800": f"- {grace}"})


def test_sqlite_map_grants_relay_through_postfix(site):
    """smtpd, as user postfix, reads the file that a root run wrote in a
    root-owned directory, through the README's sqlite: map."""
    require_map_type("sqlite")
    grace = 300
    workdir = daemons.make_workdir()
    store_dir = os.path.join(workdir, "store")
    os.mkdir(store_dir, 0o755)
    db = os.path.join(store_dir, "relay.sqlite")
    postfix = postfix_with_map(workdir, "sqlite", sqlite_cf(db, grace))
    try:
        postfix.configure()
        args = ["--backend=sqlite", f"--dbfile={db}", f"--postfix-config={postfix.config_dir}"]
        run_ok(*local_args(site, *args, grace=grace))         # creates the empty table
        with postfix:
            assert_refused(postfix, "127.0.0.61")
            now = int(time.time())
            site.append(dovecot_login(now - 5, "127.0.0.61"))
            run_ok(*local_args(site, *args, grace=grace))
            assert_accepted(postfix, "127.0.0.61")
            assert_refused(postfix, "127.0.0.62")
            # A row past the grace window that nobody purged never grants relay.
            with sqlite3.connect(db) as conn:
                conn.execute("INSERT INTO pbsmtp_relay VALUES ('127.0.0.62', ?, 'host-b')",
                             (now - grace - 10,))
            assert_refused(postfix, "127.0.0.62")
            # Updates are per row: the next login is seen by the running smtpd.
            site.append(dovecot_login(int(time.time()) - 1, "127.0.0.63"))
            run_ok(*local_args(site, *args, grace=grace))
            assert_accepted(postfix, "127.0.0.63")
            log = daemons.read_text(postfix.maillog)
            assert "warning" not in log and "error" not in log, log[-2000:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


###############################################################################
# MariaDB / MySQL #############################################################
###############################################################################

class MariaDBServer:
    """A private MariaDB server on 127.0.0.1:port and a unix socket in its
    temp dir, run as the mysql user, stopped by its PID."""

    def __init__(self):
        self.mariadbd = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or unavailable(
            "mariadbd is not installed (Debian: apt-get install mariadb-server)")
        self.install_db = shutil.which("mariadb-install-db") or unavailable(
            "mariadb-install-db is not installed (Debian: apt-get install mariadb-server)")
        if os.geteuid() != 0:
            unavailable("the MariaDB test server is started as root (then as mysql)")
        self.dir = daemons.make_workdir("pbsmtp-mysql-")
        self.data = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.port = daemons.free_port()
        self.proc = None

    def url(self, user="root", password="", database="mail", via="tcp"):
        auth = f"{user}:{password}" if password else user
        if via == "socket":
            return f"mysql://{auth}@localhost/{database}?unix_socket={self.socket}"
        return f"mysql://{auth}@127.0.0.1:{self.port}/{database}"

    def start(self):
        shutil.chown(self.dir, "mysql", "mysql")
        subprocess.run([self.install_db, "--no-defaults", f"--datadir={self.data}",
                        "--user=mysql", "--auth-root-authentication-method=normal",
                        "--skip-test-db"], check=True, capture_output=True)
        self.proc = daemons.start_process(
            [self.mariadbd, "--no-defaults", f"--datadir={self.data}", "--user=mysql",
             f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--pid-file={self.dir}/mysqld.pid", "--skip-log-bin", "--skip-name-resolve",
             "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
             f"--log-error={self.dir}/error.log"], os.path.join(self.dir, "stdout.log"))
        pymysql = pytest.importorskip("pymysql")

        def ready():
            try:
                pymysql.connect(unix_socket=self.socket, user="root", connect_timeout=2).close()
                return True
            except pymysql.err.OperationalError:
                if self.proc.poll() is not None:
                    raise daemons.DaemonError(daemons.read_text(f"{self.dir}/error.log"))
                return False
        daemons.wait_until(ready, "MariaDB to accept connections", timeout=60)

    def sql(self, *statements, database=None):
        import pymysql
        conn = pymysql.connect(unix_socket=self.socket, user="root", database=database,
                               autocommit=True)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                return cur.fetchall()
        finally:
            conn.close()

    def stop(self):
        daemons.stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# README: the two accounts.
MYSQL_ROLES = (
    "CREATE USER 'pbsmtp'@'127.0.0.1' IDENTIFIED BY 'writer-pw'",
    "CREATE USER 'pbsmtp'@'localhost' IDENTIFIED BY 'writer-pw'",
    "CREATE USER 'postfix_relay'@'127.0.0.1' IDENTIFIED BY 'reader-pw'",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON mail.pbsmtp_relay TO 'pbsmtp'@'127.0.0.1'",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON mail.pbsmtp_relay TO 'pbsmtp'@'localhost'",
    "GRANT SELECT ON mail.pbsmtp_relay TO 'postfix_relay'@'127.0.0.1'",
)


@pytest.fixture(scope="module")
def mariadb():
    if os.environ.get("CI") == "true":
        import pymysql  # noqa: F401  (CI must install the mysql extra)
    else:
        pytest.importorskip("pymysql")
    server = MariaDBServer()
    try:
        server.start()
        server.sql("CREATE DATABASE mail")
        server.sql(stores.MYSQL_SCHEMA, database="mail")
        server.sql(*MYSQL_ROLES)
        yield server
    finally:
        server.stop()


def mysql_rows(server):
    return dict(server.sql("SELECT ip, last_login FROM pbsmtp_relay ORDER BY ip",
                           database="mail"))


def mysql_clear(server):
    server.sql("DELETE FROM pbsmtp_relay", database="mail")


def test_mysql_hosts_share_one_table(mariadb, site, tmp_path):
    mysql_clear(mariadb)
    writer = mariadb.url("pbsmtp", "writer-pw")
    env = {"PBSMTP_MYSQL_URL": writer}                         # the variable works
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "2001:db8::10"))
    run_ok(*site.args("--backend=mysql"), env=env)
    assert mysql_rows(mariadb) == {"192.0.2.10": NOW - 60, "2001:db8::10": NOW - 50}
    # Host B: its own log and state, over the unix socket; an older login
    # never lowers a newer one.
    (tmp_path / "b").mkdir()
    host_b = Site(tmp_path / "b")
    host_b.append(dovecot_login(NOW - 70, "192.0.2.10"), dovecot_login(NOW - 20, "2001:db8::10"),
                  dovecot_login(NOW - 10, "192.0.2.20"))
    run_ok(*host_b.args("--backend=mysql",
                        f"--mysql-url={mariadb.url('pbsmtp', 'writer-pw', via='socket')}"))
    assert mysql_rows(mariadb) == {"192.0.2.10": NOW - 60, "2001:db8::10": NOW - 20,
                                   "192.0.2.20": NOW - 10}
    assert listed(site, "--backend=mysql", f"--mysql-url={writer}", now=NOW) == \
        mysql_rows(mariadb)
    # Any host purges; a row refreshed since it was read is left alone.
    store = stores.MysqlStore(writer, host="host-a")
    plan = pb.merge(store.read(), [], NOW + pb.DEFAULT_GRACE - 15, pb.DEFAULT_GRACE)
    assert sorted(plan.expired) == ["192.0.2.10", "2001:db8::10"]
    store2 = stores.MysqlStore(writer, host="host-b")
    login = pb.Login("192.0.2.10", NOW + 100, "alice", "dovecot")
    store2.publish(pb.merge(store2.read(), [login], NOW + 100, pb.DEFAULT_GRACE))
    store.publish(plan)
    assert mysql_rows(mariadb) == {"192.0.2.10": NOW + 100, "192.0.2.20": NOW - 10}
    assert mariadb.sql("SELECT host FROM pbsmtp_relay WHERE ip = '192.0.2.10'",
                       database="mail") == (("host-b",),)


def test_mysql_drops_rows_that_are_not_addresses(mariadb, site):
    mysql_clear(mariadb)
    mariadb.sql(f"INSERT INTO pbsmtp_relay VALUES ('192.0.2', {NOW - 5}, 'x'), "
                f"('unknown', {NOW - 5}, 'x')", database="mail")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(*site.args("--backend=mysql",
                               f"--mysql-url={mariadb.url('pbsmtp', 'writer-pw')}"))
    assert result.exit_code == 0
    assert "dropped 2 map entries that are not an address" in result.output
    assert mysql_rows(mariadb) == {"192.0.2.10": NOW - 60}


def test_mysql_errors_are_one_line(mariadb, site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(*site.args("--backend=mysql"))
    assert result.exit_code == 1 and "needs --mysql-url" in result.output
    result = invoke(*site.args("--backend=mysql", "--mysql-table=nosuch",
                               f"--mysql-url={mariadb.url()}"))
    assert result.exit_code == 1
    assert "doesn't exist" in result.output and "schema in the README" in result.output
    result = invoke(*site.args("--backend=mysql",
                               f"--mysql-url={mariadb.url('pbsmtp', 'wrong')}"))
    assert result.exit_code == 1 and "cannot connect to MySQL: (1045)" in result.output
    assert "wrong" not in result.output
    result = invoke(*site.args("--backend=mysql", "--mysql-url=postgres://x/y"))
    assert result.exit_code == 1 and "--mysql-url must look like" in result.output
    for output in (r.output for r in [result]):
        assert len(output.splitlines()) == 1


def mysql_cf(port, grace):
    return readme_cf("/etc/postfix/pop-before-smtp.mysql.cf` (mode 0640", **{
        "hosts = db.example.com": f"hosts = inet:127.0.0.1:{port}",
        "password = secret": "password = reader-pw", "- 1800": f"- {grace}"})


def test_mysql_map_grants_relay_through_postfix(mariadb, site, tmp_path):
    """Two POP/IMAP hosts write one table; a Postfix relay reads it through
    the README's mysql: map."""
    require_map_type("mysql")
    mysql_clear(mariadb)
    grace = 300
    workdir = daemons.make_workdir()
    postfix = postfix_with_map(workdir, "mysql", mysql_cf(mariadb.port, grace))
    (tmp_path / "b").mkdir()
    host_b = Site(tmp_path / "b")
    try:
        postfix.configure()
        with postfix:
            assert_refused(postfix, "127.0.0.71")
            now = int(time.time())
            site.append(dovecot_login(now - 5, "127.0.0.71"))
            host_b.append(dovecot_login(now - 3, "127.0.0.72"))
            for host in (site, host_b):
                run_ok(*local_args(host, "--backend=mysql",
                                   f"--mysql-url={mariadb.url('pbsmtp', 'writer-pw')}",
                                   f"--postfix-config={postfix.config_dir}", grace=grace))
            assert_accepted(postfix, "127.0.0.71")
            assert_accepted(postfix, "127.0.0.72")
            assert_refused(postfix, "127.0.0.73")
            # A row past the grace window that nobody purged never grants relay.
            mariadb.sql(f"INSERT INTO pbsmtp_relay VALUES ('127.0.0.73', "
                        f"{now - grace - 10}, 'host-c')", database="mail")
            assert_refused(postfix, "127.0.0.73")
            log = daemons.read_text(postfix.maillog)
            assert "warning" not in log and "error" not in log, log[-2000:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
