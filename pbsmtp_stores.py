"""pbsmtp-batch's optional stores: Sendmail, qmail, Exim, PostgreSQL, memcached,
SQLite and MySQL, each a class with the Store interface of pbsmtp_batch.

pbsmtp_batch.store_class() imports this module the first time a run names
one of these backends (pbsmtp_batch.BACKEND_NAMES lists them), and each
class registers itself with @backend beside it. A run with the Postfix map
never imports it. This module imports the core, never the reverse.

The file stores keep the login time next to each address (a second key, an
environment variable, the data field) because the value their MTA needs is
not a time; the shared stores keep it as the value itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pbsmtp_batch import (DEFAULT_TABLE, Options, PbsmtpError, Plan, backend, check_dir,
                          find_tool, normalise_ip, replace_file, run_tool)


class UnstampedStore:
    """What the stores here share: a run needs no Postfix on this host for
    them (Postfix's mynetworks is left out when it can be read); they have
    no stamp for the map cache, so every run reads them, and publish a whole
    plan; one that cannot be read is an error (never set aside)."""
    needs_postfix: ClassVar[bool] = False
    rebuildable: ClassVar[bool] = False      # an unreadable store is an error

    def stamp(self) -> list[int] | None:
        return None

    def updates_by_key(self) -> bool:
        return False

    def set_aside(self) -> str:
        raise NotImplementedError


###############################################################################
# Other MTAs' files: Sendmail, qmail, Exim ####################################
###############################################################################

SENDMAIL_TIME_TAG = "pbsmtp-batch:"     # never a tag sendmail looks up
EXTRA_TOOL_DIRS = ("/usr/libexec/sendmail", "/usr/lib/sendmail")


def find_program(name: str, package: str) -> str:
    return find_tool(name, package, EXTRA_TOOL_DIRS)


def _write_text(text: str):
    def build(tmp: str) -> None:
        with open(tmp, "x") as f:
            f.write(text)
    return build


@backend("sendmail")
@dataclasses.dataclass(frozen=True)
class SendmailAccess(UnstampedStore):
    """Sendmail's access db (FEATURE(`access_db')), built by ``makemap hash``.

    Each address gets ``Connect:IP RELAY`` and ``pbsmtp-batch:IP EPOCH``, a
    key sendmail never looks up, for the login time. An IPv6 address is
    written as ``Connect:IPv6:ADDR`` twice: in the uncompressed form that
    sendmail 8.16+ (IPV6_FULL, the default) looks up, and in the compressed
    form of older builds. The db is pbsmtp-batch's own file, rebuilt whole
    each time.
    """
    dbfile: str

    @classmethod
    def from_options(cls, opts: Options):
        return cls(opts.dbfile)

    @property
    def path(self) -> str:
        return self.dbfile + ".db"

    def _makemap(self, *args: str) -> list[str]:
        # makemap reads sendmail.cf only for TrustedUser; without one it fails.
        cf = [] if os.path.exists("/etc/mail/sendmail.cf") else ["-C", "/dev/null"]
        return [find_program("makemap", "sendmail-bin"), *cf, *args]

    def read(self) -> dict[str, str]:
        if not os.path.exists(self.path):
            return {}
        out = run_tool(self._makemap("-u", "hash", self.dbfile),
                       f"reading {self.path} (makemap -u)")
        relay, times = {}, {}
        for line in out.splitlines():
            key, _, value = line.partition("\t")
            key = key.lower()                  # makemap folds keys; be sure
            if key.startswith("connect:"):
                ip = key[len("connect:"):]
                ip = ip[5:] if ip.startswith("ipv6:") else ip
                relay[normalise_ip(ip) or ip] = value.strip()
            elif key.startswith(SENDMAIL_TIME_TAG):
                times[key[len(SENDMAIL_TIME_TAG):]] = value.strip()
        # An address without its time reads as its RHS, which merge() drops.
        return {**relay, **times}

    def publish(self, plan: Plan) -> list[str]:
        lines = []
        for ip, when in sorted(plan.entries.items()):
            if ":" in ip:
                groups = struct.unpack("!8H", socket.inet_pton(socket.AF_INET6, ip))
                full = ":".join(f"{g:x}" for g in groups)
                lines.append(f"Connect:IPv6:{full}\tRELAY\n")
                lines.append(f"Connect:IPv6:{ip}\tRELAY\n" if full != ip else "")
            else:
                lines.append(f"Connect:{ip}\tRELAY\n")
            lines.append(f"{SENDMAIL_TIME_TAG}{ip}\t{when}\n")
        text = "".join(lines)

        def build(tmp: str) -> None:
            stem = tmp + ".mk"           # makemap appends ".db" to the name
            try:
                run_tool(self._makemap("hash", stem), f"building {self.path} (makemap)", input=text)
                os.replace(stem + ".db", tmp)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stem + ".db")
        return replace_file(self.path, build)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def check(self) -> None:
        check_dir(self.path)
        find_program("makemap", "sendmail-bin")


# What pbsmtp-batch writes in tcp.smtp: the login time rides along as an
# environment variable, which qmail-smtpd ignores.
_QMAIL_RULE = re.compile(r'(?P<ip>[0-9.]+):allow,RELAYCLIENT="",PBSMTP_LOGIN="(?P<when>\d*)"')


@backend("qmail")
@dataclasses.dataclass(frozen=True)
class QmailRules(UnstampedStore):
    """tcpserver rules for qmail-smtpd: ``--dbfile`` is the text (tcp.smtp),
    compiled by ``tcprules FILE.cdb FILE.tmp`` (its own atomic rename).

    pbsmtp-batch owns only its lines, ``IP:allow,RELAYCLIENT="",PBSMTP_LOGIN="EPOCH"``,
    at the end of the file; every other line (the site's own rules) is kept
    as it is, and wins for the same address, since tcprules keeps the first
    rule for a key. tcpserver (ucspi-tcp) is IPv4 only: IPv6 logins are not
    written.
    """
    dbfile: str

    @classmethod
    def from_options(cls, opts: Options):
        return cls(opts.dbfile)

    @property
    def cdb(self) -> str:
        return self.dbfile + ".cdb"

    def _lines(self) -> list[str]:
        try:
            return Path(self.dbfile).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise PbsmtpError(f"cannot read {self.dbfile}: {e.strerror}") from None

    def read(self) -> dict[str, str]:
        entries = {}
        for line in self._lines():
            m = _QMAIL_RULE.fullmatch(line.strip())
            if m:
                entries[m["ip"]] = m["when"]
        return entries

    def publish(self, plan: Plan) -> list[str]:
        own = [line for line in self._lines() if not _QMAIL_RULE.fullmatch(line.strip())]
        v6 = [ip for ip in plan.added if ":" in ip]
        ours = [f'{ip}:allow,RELAYCLIENT="",PBSMTP_LOGIN="{when}"'
                for ip, when in sorted(plan.entries.items()) if ":" not in ip]
        text = "\n".join(own + ours) + "\n" if own or ours else ""
        # The cdb first: if tcprules fails, neither file changes, and the
        # offset is not committed, so the next run tries again.
        run_tool([find_program("tcprules", "ucspi-tcp"), self.cdb, self.dbfile + ".tmp"],
                 f"compiling {self.cdb} (tcprules)", input=text)
        warnings = replace_file(self.dbfile, _write_text(text))
        if v6:
            warnings.append(f"tcpserver rules are IPv4 only: not written: {', '.join(v6)}")
        return warnings

    def exists(self) -> bool:
        return os.path.exists(self.cdb)

    def check(self) -> None:
        check_dir(self.dbfile)
        find_program("tcprules", "ucspi-tcp")


@backend("exim")
@dataclasses.dataclass(frozen=True)
class EximList(UnstampedStore):
    """A plain address list for Exim's ``hosts = net-iplsearch;FILE``:
    ``IP: EPOCH`` per line (IPv6 keys quoted, as iplsearch requires),
    rewritten whole and renamed into place."""
    dbfile: str

    @classmethod
    def from_options(cls, opts: Options):
        return cls(opts.dbfile)

    def read(self) -> dict[str, str]:
        try:
            text = Path(self.dbfile).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise PbsmtpError(f"cannot read {self.dbfile}: {e.strerror}") from None
        entries = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r'"([^"]*)"\s*:?\s*(.*)|([^\s:]+)\s*:?\s*(.*)', line)
            key, value = (m[1], m[2]) if m[1] is not None else (m[3], m[4])
            entries[key] = value.strip()
        return entries

    def publish(self, plan: Plan) -> list[str]:
        lines = ["# pbsmtp-batch: POP/IMAP clients allowed to relay (address: login time)\n"]
        for ip, when in sorted(plan.entries.items()):
            lines.append(f'"{ip}": {when}\n' if ":" in ip else f"{ip}: {when}\n")
        return replace_file(self.dbfile, _write_text("".join(lines)))

    def exists(self) -> bool:
        return os.path.exists(self.dbfile)

    def check(self) -> None:
        check_dir(self.dbfile)


###############################################################################
# Tables: PostgreSQL, memcached, SQLite, MySQL ################################
###############################################################################

PGSQL_SCHEMA = """\
CREATE TABLE pbsmtp_relay (
    ip         text PRIMARY KEY,       -- as Postfix looks it up: text, not inet
    last_login timestamptz NOT NULL,
    host       text NOT NULL           -- the POP/IMAP host that saw the login
);
CREATE INDEX pbsmtp_relay_last_login ON pbsmtp_relay (last_login);
"""
_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")


@backend("pgsql")
class PgsqlStore(UnstampedStore):
    """One PostgreSQL table shared by every POP/IMAP host (see PGSQL_SCHEMA).

    Each host upserts its logins, keeping the newest time whoever wrote it,
    and deletes a stale row only if it is still as old as when it was read,
    so hosts never undo each other's work. Postfix's ``pgsql:`` query checks
    the grace window itself, so a stale row never grants relay.
    """

    def __init__(self, dsn: str | None, table: str = DEFAULT_TABLE,
                 host: str | None = None):
        if not dsn:
            raise PbsmtpError("the pgsql backend needs --pg-dsn (or PBSMTP_PG_DSN), "
                              "e.g. 'host=db.example.com dbname=mail user=pbsmtp'")
        if not _SQL_NAME.fullmatch(table):
            raise PbsmtpError(f"--pg-table {table!r} is not a plain [schema.]table name")
        self.dsn, self.table = dsn, table
        self.host = host or socket.gethostname()
        self._conn = None

    @classmethod
    def from_options(cls, opts: Options) -> PgsqlStore:
        return cls(opts.pg_dsn, opts.pg_table)

    def _db(self):
        if self._conn is None:
            try:
                import psycopg
            except ImportError:
                raise PbsmtpError("the pgsql backend needs psycopg 3 (Debian: python3-psycopg; "
                                  "in a venv: pip install '.[pgsql]')") from None
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10,
                                             application_name="pbsmtp-batch")
            except psycopg.Error as e:
                raise PbsmtpError(f"cannot connect to PostgreSQL: {_pg_message(e)}") from None
        return self._conn

    def _do(self, what: str, work):
        db = self._db()
        import psycopg
        try:
            return work(db)
        except psycopg.errors.UndefinedTable as e:
            raise PbsmtpError(f"PostgreSQL {what}: {_pg_message(e)} (create it with the "
                              f"schema in the README)") from None
        except psycopg.Error as e:
            raise PbsmtpError(f"PostgreSQL {what} on {self.table}: {_pg_message(e)}") from None

    def read(self) -> dict[str, str]:
        sql = f"SELECT ip, extract(epoch FROM last_login)::bigint FROM {self.table}"
        rows = self._do("read", lambda db: db.execute(sql).fetchall())
        return {ip: str(when) for ip, when in rows}

    def publish(self, plan: Plan) -> list[str]:
        t = self.table
        upsert = (f"INSERT INTO {t} AS t (ip, last_login, host) "
                  f"VALUES (%s, to_timestamp(%s), %s) ON CONFLICT (ip) DO UPDATE SET "
                  f"last_login = GREATEST(t.last_login, EXCLUDED.last_login), "
                  f"host = CASE WHEN EXCLUDED.last_login > t.last_login "
                  f"THEN EXCLUDED.host ELSE t.host END")
        stale = f"DELETE FROM {t} WHERE ip = %s AND last_login <= to_timestamp(%s)"
        invalid = f"DELETE FROM {t} WHERE ip = %s"
        fresh, gone = sql_row_changes(plan, stale, invalid)

        # Two transactions, each taking its row locks in address order, so
        # hosts that publish at the same time cannot deadlock.
        def work(db):
            with db.transaction(), db.cursor() as cur:
                if fresh:
                    cur.executemany(upsert, [(ip, when, self.host) for ip, when in fresh])
            with db.transaction(), db.cursor() as cur:
                for sql, args in gone:
                    cur.execute(sql, args)
        self._do("update", work)
        return []

    def exists(self) -> bool:
        return True          # a missing row is a plain "not found" for Postfix

    def check(self) -> None:
        self._do("check", lambda db: db.execute(
            f"SELECT ip, last_login, host FROM {self.table} LIMIT 0"))


def sql_row_changes(plan: Plan, stale_sql: str, invalid_sql: str
                    ) -> tuple[list[tuple[str, int]], list[tuple[str, tuple]]]:
    """A plan as rows to upsert, (ip, login time), and deletions, (sql, args):
    each list in address order, so that hosts publishing at the same time
    take their row locks in one order. An expired row is deleted only while
    it is as old as this host saw it (stale_sql gets ip and that time); a
    row that is not an address goes whatever its time (invalid_sql gets ip)."""
    fresh = sorted({**plan.added, **plan.refreshed}.items())
    gone = sorted([(ip, stale_sql, (ip, when)) for ip, when in plan.expired.items()]
                  + [(ip, invalid_sql, (ip,)) for ip in plan.invalid])
    return fresh, [(sql, args) for _, sql, args in gone]


def _pg_message(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class MemcacheClient:
    """The part of memcached's text protocol that MemcacheStore uses (get,
    gets, set, add, cas, delete, version), over one connection opened on
    first use. Protocol: github.com/memcached/memcached, doc/protocol.txt.
    Every failure is a PbsmtpError naming the server."""

    def __init__(self, server: str, timeout: float = 5.0):
        self.server, self.timeout = server, timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            spec = self.server.removeprefix("inet:")
            try:
                if spec.startswith("unix:") or spec.startswith("/"):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.settimeout(self.timeout)
                    s.connect(spec.removeprefix("unix:"))
                else:
                    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s]+):(\d+)|([^:\s]+)", spec)
                    if not m:
                        raise PbsmtpError(f"--memcache-server {self.server!r} is not "
                                          f"HOST:PORT, [IPV6]:PORT or unix:/PATH")
                    host = m[1] or m[3] or m[5]
                    port = int(m[2] or m[4] or 11211)
                    s = socket.create_connection((host, port), timeout=self.timeout)
            except OSError as e:
                raise PbsmtpError(f"cannot connect to memcached {self.server}: "
                                  f"{e.strerror or e}") from None
            self._sock, self._buf = s, b""
        return self._sock

    def _receive(self, size: int | None = None) -> bytes:
        """The next reply line without its CRLF; or, with size, the next
        size bytes of a data block and the CRLF that ends it."""
        while (b"\r\n" not in self._buf if size is None else len(self._buf) < size + 2):
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError("connection closed by memcached")
            self._buf += chunk
        if size is None:
            line, self._buf = self._buf.split(b"\r\n", 1)
            return line
        data, self._buf = self._buf[:size], self._buf[size + 2:]
        return data

    def _exchange(self, command: str, data: bytes | None, reply):
        """Send one command (and its data block); return reply(), which
        reads the answer. A broken connection is closed, to be opened again
        by the next command."""
        sock = self._connect()
        try:
            sock.sendall(command.encode() + b"\r\n" + (b"" if data is None else data + b"\r\n"))
            return reply()
        except OSError as e:
            with contextlib.suppress(OSError):
                sock.close()
            self._sock = None
            raise PbsmtpError(f"memcached {self.server}: {e.strerror or e}") from None

    def call(self, command: str, data: bytes | None = None) -> str:
        """A storage, delete or version command; its status line (STORED,
        EXISTS, NOT_FOUND, ...). An error reply raises."""
        def status() -> str:
            line = self._receive().decode("ascii", "replace")
            if line.startswith(("ERROR", "CLIENT_ERROR", "SERVER_ERROR")):
                raise PbsmtpError(f"memcached {self.server}: {command.split()[0]}: {line}")
            return line
        return self._exchange(command, data, status)

    def get(self, keys: Sequence[str], cas: bool = False) -> dict[str, tuple[str, str | None]]:
        """{key: (value, cas unique or None)} for the keys that are there,
        asked for 100 at a time."""
        def values() -> dict[str, tuple[str, str | None]]:
            found = {}
            while True:
                line = self._receive().decode("ascii", "replace")
                if line == "END":
                    return found
                parts = line.split()
                if parts[:1] != ["VALUE"] or len(parts) < 4:
                    raise PbsmtpError(f"memcached {self.server}: unexpected reply {line!r}")
                value = self._receive(int(parts[3]))
                found[parts[1]] = (value.decode("utf-8", "replace"),
                                   parts[4] if len(parts) > 4 else None)
        found = {}
        verb = "gets" if cas else "get"
        for i in range(0, len(keys), 100):
            found.update(self._exchange(f"{verb} {' '.join(keys[i:i + 100])}", None, values))
        return found


@backend("memcache")
class MemcacheStore(UnstampedStore):
    """memcached, read by Postfix's ``memcache:`` table.

    Each address is the key ``PREFIX + IP`` (Postfix: ``key_format =
    PREFIX%s``) with the login time as its value, set to expire when the
    grace window ends: expiry needs no purge, and a stale entry cannot grant
    relay. The key ``PREFIX#index`` lists the addresses, for --list and for
    merging; hosts that share one memcached update it with gets/cas.
    """
    MAX_RELATIVE_TTL = 2592000   # memcached reads larger exptimes as epoch times

    def __init__(self, server: str, prefix: str, grace: int, timeout: float = 5.0):
        if any(c.isspace() for c in prefix) or len(prefix) > 200:
            raise PbsmtpError(f"--memcache-prefix {prefix!r} cannot be a memcached key prefix")
        self.server, self.prefix, self.grace = server, prefix, grace
        self.index_key = prefix + "#index"
        self.client = MemcacheClient(server, timeout)

    @classmethod
    def from_options(cls, opts: Options) -> MemcacheStore:
        return cls(opts.memcache_server, opts.memcache_prefix, opts.grace)

    def _index(self) -> tuple[dict[str, int], str | None]:
        got = self.client.get([self.index_key], cas=True).get(self.index_key)
        if got is None:
            return {}, None
        entries = {}
        for line in got[0].splitlines():
            ip, _, when = line.partition(" ")
            if when.isdigit():
                entries[ip] = int(when)
        return entries, got[1]

    def read(self) -> dict[str, str]:
        index, _ = self._index()
        keys = [self.prefix + ip for ip in sorted(index)]
        values = self.client.get(keys) if keys else {}
        # What Postfix would find: an address whose key has expired is gone.
        return {key[len(self.prefix):]: value for key, (value, _) in values.items()}

    def publish(self, plan: Plan) -> list[str]:
        now = time.time()
        for ip, when in sorted({**plan.added, **plan.refreshed}.items()):
            left = int(when + self.grace - now)
            if left <= 0:
                continue
            exptime = left if left <= self.MAX_RELATIVE_TTL else when + self.grace
            value = str(when).encode()
            reply = self.client.call(f"set {self.prefix}{ip} 0 {exptime} {len(value)}", value)
            if reply != "STORED":
                raise PbsmtpError(f"memcached {self.server}: set {ip}: {reply}")
        for ip in sorted(plan.invalid):
            if ip and not any(c.isspace() for c in ip):
                self.client.call(f"delete {self.prefix}{ip}")
        # An expired entry whose key is still there (taken out early: a
        # revocation) goes, unless another host has refreshed it since: a
        # cas with a negative exptime expires it only if it is unchanged.
        gone = set()
        keys = [self.prefix + ip for ip in sorted(plan.expired)]
        for key, (value, cas) in (self.client.get(keys, cas=True) if keys else {}).items():
            ip = key[len(self.prefix):]
            if not value.isdigit() or int(value) > plan.expired[ip]:
                continue
            reply = self.client.call(f"cas {key} 0 -1 {len(value)} {cas}", value.encode())
            if reply == "STORED":
                gone.add(ip)
            elif reply not in ("EXISTS", "NOT_FOUND"):
                raise PbsmtpError(f"memcached {self.server}: expire {ip}: {reply}")
        # The index: merged with what other hosts wrote meanwhile (cas).
        for _ in range(20):
            index, cas = self._index()
            for ip, when in {**plan.added, **plan.refreshed}.items():
                index[ip] = max(index.get(ip, 0), when)
            keep = {ip: when for ip, when in index.items()
                    if when + self.grace > now and ip not in plan.invalid
                    and not (ip in gone and when <= plan.expired[ip])}
            data = "".join(f"{ip} {when}\n" for ip, when in sorted(keep.items())).encode()
            if cas is None:
                reply = self.client.call(f"add {self.index_key} 0 0 {len(data)}", data)
            else:
                reply = self.client.call(f"cas {self.index_key} 0 0 {len(data)} {cas}", data)
            if reply == "STORED":
                return []
            if reply not in ("EXISTS", "NOT_STORED", "NOT_FOUND"):
                raise PbsmtpError(f"memcached {self.server}: index update: {reply}")
        raise PbsmtpError(f"memcached {self.server}: index kept changing; try again")

    def exists(self) -> bool:
        return True          # a missing key is a plain "not found" for Postfix

    def check(self) -> None:
        self.client.call("version")


SQLITE_SCHEMA = """\
CREATE TABLE IF NOT EXISTS pbsmtp_relay (
    ip         TEXT PRIMARY KEY,      -- as Postfix looks it up
    last_login INTEGER NOT NULL,      -- epoch seconds: all digits, which access(5) reads as OK
    host       TEXT NOT NULL          -- the POP/IMAP host that saw the login
);
CREATE INDEX IF NOT EXISTS pbsmtp_relay_last_login ON pbsmtp_relay (last_login);
"""
# Writers wait this long for a reader's or another writer's lock.
SQLITE_BUSY_MS = 10000


@backend("sqlite")
class SqliteStore(UnstampedStore):
    """One SQLite file (--dbfile), read by Postfix's ``sqlite:`` map, updated
    row by row instead of rebuilt.

    The same rules as PgsqlStore: an upsert keeps the newest login, a purge
    deletes a row only while it is still as old as when it was read, and
    Postfix's query checks the grace window itself. The database stays in
    rollback-journal mode, not WAL: a WAL database can only be read by a
    process that may write its -shm file beside it, which smtpd (user
    postfix, maybe chrooted) cannot do in a root-owned directory; with a
    rollback journal a reader needs only read access to the file. Writers
    wait SQLITE_BUSY_MS for the lock (busy timeout), and each publish is one
    short write transaction.
    """
    MODE = 0o644                 # smtpd reads the file after dropping privileges

    def __init__(self, path: str, host: str | None = None):
        self.path = path
        self.host = host or socket.gethostname()

    @classmethod
    def from_options(cls, opts: Options) -> SqliteStore:
        return cls(opts.dbfile)

    def _db(self, create: bool = False):
        import sqlite3
        if not create and not os.path.exists(self.path):
            return None
        try:
            if create and not os.path.exists(self.path):
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.MODE))
            db = sqlite3.connect(self.path, timeout=SQLITE_BUSY_MS / 1000,
                                 isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                db.execute("PRAGMA journal_mode = DELETE")
            if create:
                db.executescript(SQLITE_SCHEMA)
            return db
        except (sqlite3.Error, OSError) as e:
            raise PbsmtpError(f"SQLite database {self.path}: {e}") from None

    def _do(self, what: str, work, create: bool = False):
        import sqlite3
        db = self._db(create)
        if db is None:
            return None
        try:
            return work(db)
        except sqlite3.Error as e:
            raise PbsmtpError(f"SQLite {what} of {self.path}: {e}") from None
        finally:
            db.close()

    def read(self) -> dict[str, str]:
        rows = self._do("read", lambda db: db.execute(
            "SELECT ip, last_login FROM pbsmtp_relay").fetchall()) or []
        return {ip: str(when) for ip, when in rows}

    def publish(self, plan: Plan) -> list[str]:
        fresh, gone = sql_row_changes(
            plan, "DELETE FROM pbsmtp_relay WHERE ip = ? AND last_login <= ?",
            "DELETE FROM pbsmtp_relay WHERE ip = ?")

        def work(db):
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO pbsmtp_relay (ip, last_login, host) VALUES (?, ?, ?) "
                    "ON CONFLICT (ip) DO UPDATE SET "
                    "host = CASE WHEN excluded.last_login > last_login "
                    "THEN excluded.host ELSE host END, "
                    "last_login = max(last_login, excluded.last_login)",
                    [(ip, when, self.host) for ip, when in fresh])
                for sql, args in gone:
                    db.execute(sql, args)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._do("update", work, create=True)
        return []

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def check(self) -> None:
        check_dir(self.path)
        self._do("check", lambda db: db.execute(
            "SELECT ip, last_login, host FROM pbsmtp_relay LIMIT 0"))


MYSQL_SCHEMA = """\
CREATE TABLE pbsmtp_relay (
    ip         VARCHAR(45) CHARACTER SET ascii NOT NULL PRIMARY KEY,  -- as Postfix looks it up
    last_login BIGINT NOT NULL,       -- epoch seconds: no time zone to get wrong
    host       VARCHAR(255) NOT NULL, -- the POP/IMAP host that saw the login
    KEY pbsmtp_relay_last_login (last_login)
) ENGINE=InnoDB;
"""


def parse_mysql_url(url: str) -> dict:
    """``mysql://USER[:PASSWORD]@HOST[:PORT]/DB[?unix_socket=PATH&read_default_file=FILE]``
    as PyMySQL's connect() arguments."""
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb") or not parts.path.strip("/"):
        raise PbsmtpError("--mysql-url must look like mysql://USER:PASSWORD@HOST[:PORT]/DATABASE "
                          "(or ?unix_socket=/PATH, ?read_default_file=/PATH)")
    args: dict = {"database": urllib.parse.unquote(parts.path.strip("/"))}
    if parts.username:
        args["user"] = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        args["password"] = urllib.parse.unquote(parts.password)
    if parts.hostname:
        args["host"] = parts.hostname
    if parts.port:
        args["port"] = parts.port
    for key, value in urllib.parse.parse_qsl(parts.query):
        if key not in ("unix_socket", "read_default_file", "read_default_group"):
            raise PbsmtpError(f"--mysql-url: unknown parameter {key!r} (use unix_socket, "
                              f"read_default_file or read_default_group)")
        args[key] = value
    return args


@backend("mysql")
class MysqlStore(UnstampedStore):
    """One MariaDB/MySQL table shared by every POP/IMAP host (MYSQL_SCHEMA),
    read by Postfix's ``mysql:`` map; the same rules as PgsqlStore: upserts
    keep the newest login, a purge deletes a row only while it is still as
    old as when it was read, and Postfix's query checks the grace window."""

    def __init__(self, url: str | None, table: str = DEFAULT_TABLE, host: str | None = None):
        if not url:
            raise PbsmtpError("the mysql backend needs --mysql-url (or PBSMTP_MYSQL_URL), "
                              "e.g. 'mysql://pbsmtp:PASSWORD@db.example.com/mail'")
        if not _SQL_NAME.fullmatch(table):
            raise PbsmtpError(f"--mysql-table {table!r} is not a plain [database.]table name")
        self.args, self.table = parse_mysql_url(url), table
        self.host = host or socket.gethostname()
        self._conn = None

    @classmethod
    def from_options(cls, opts: Options) -> MysqlStore:
        return cls(opts.mysql_url, opts.mysql_table)

    def _db(self):
        if self._conn is None:
            try:
                import pymysql
            except ImportError:
                raise PbsmtpError("the mysql backend needs PyMySQL (Debian: python3-pymysql; "
                                  "in a venv: pip install '.[mysql]')") from None
            try:
                self._conn = pymysql.connect(**self.args, connect_timeout=10, autocommit=True,
                                             charset="utf8mb4")
            except pymysql.Error as e:
                raise PbsmtpError(f"cannot connect to MySQL: {_mysql_message(e)}") from None
        return self._conn

    def _do(self, what: str, work):
        db = self._db()
        import pymysql
        try:
            return work(db)
        except pymysql.err.ProgrammingError as e:
            hint = (" (create it with the schema in the README)"
                    if e.args and e.args[0] == 1146 else "")
            raise PbsmtpError(f"MySQL {what} on {self.table}: {_mysql_message(e)}{hint}") from None
        except pymysql.Error as e:
            raise PbsmtpError(f"MySQL {what} on {self.table}: {_mysql_message(e)}") from None

    def read(self) -> dict[str, str]:
        def work(db):
            with db.cursor() as cur:
                cur.execute(f"SELECT ip, last_login FROM {self.table}")
                return cur.fetchall()
        return {ip: str(when) for ip, when in self._do("read", work)}

    def publish(self, plan: Plan) -> list[str]:
        t = self.table
        # MySQL applies the SET list left to right: host is decided while
        # last_login still holds the stored time.
        upsert = (f"INSERT INTO {t} (ip, last_login, host) VALUES (%s, %s, %s) "
                  f"ON DUPLICATE KEY UPDATE "
                  f"host = IF(VALUES(last_login) > last_login, VALUES(host), host), "
                  f"last_login = GREATEST(last_login, VALUES(last_login))")
        fresh, gone = sql_row_changes(plan, f"DELETE FROM {t} WHERE ip = %s AND last_login <= %s",
                                      f"DELETE FROM {t} WHERE ip = %s")

        # Two transactions, each taking its row locks in address order, so
        # hosts that publish at the same time cannot deadlock.
        def work(db):
            for statements in ([(upsert, (ip, when, self.host)) for ip, when in fresh],
                               gone):
                if not statements:
                    continue
                db.begin()
                try:
                    with db.cursor() as cur:
                        for sql, args in statements:
                            cur.execute(sql, args)
                    db.commit()
                except BaseException:
                    db.rollback()
                    raise
        self._do("update", work)
        return []

    def exists(self) -> bool:
        return True          # a missing row is a plain "not found" for Postfix

    def check(self) -> None:
        def work(db):
            with db.cursor() as cur:
                cur.execute(f"SELECT ip, last_login, host FROM {self.table} LIMIT 0")
        self._do("check", work)


def _mysql_message(e: Exception) -> str:
    if len(e.args) >= 2 and isinstance(e.args[0], int):
        return f"({e.args[0]}) {str(e.args[1]).strip().splitlines()[0]}"
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
