"""pbsmtp-batch: POP-before-SMTP relay authorisation for Postfix, as a batch job.

A mail client logs in over POP3 or IMAP; the server logs that login. Each run of
pbsmtp-batch, started by cron or a systemd path unit, does one pass:

1. takes an exclusive lock in the state directory (a second run exits 0);
2. reads the log lines written since the saved offset, across rotations;
3. finds the successful POP/IMAP logins with the pattern files, taking each
   login's time from its own log line;
4. merges their client addresses into the Postfix access map (key: the
   address, value: the login time as an all-digit epoch, which access(5)
   treats as OK), drops entries older than the grace window, and applies
   the grants and revocations made by hand (--grant, --revoke), which the
   state directory keeps; a login that names its session (Dovecot's
   session=<ID>, Courier's address and port, Cyrus's process) keeps its
   address until the line that ends that session, or --max-session, and
   the grace window runs from that end (pair_sessions);
5. writes the map atomically through postmap and rename, and only then
   commits the new log offset.

Postfix then relays for those clients through
``check_client_access hash:/etc/postfix/pop-before-smtp`` in
``smtpd_relay_restrictions``.

Layout, top to bottom, one banner per section:

- constants (defaults, the state directory's file names) and tunables (the
  bounds a run keeps: line lengths, waits, counts);
- the idle run: a few stat calls tell that nothing changed, and the command
  exits before click, the patterns or postconf are loaded (the only code
  above the full run's imports);
- errors, data, and text for people: PbsmtpError, the dataclasses passed
  from step to step (Pattern, Login, Session, Plan ...), printable() and
  local ISO times;
- patterns: reading and checking the pattern files (the shipped set,
  overlaid by /etc/pbsmtp-batch/patterns);
- parsing (pure): syslog prefixes and times, addresses, match_login,
  match_logout;
- policy (pure): sessions (pair_sessions), the networks that never go into
  the map, merge and purge, grants and revocations by hand, Postfix's
  restriction lists;
- files and tools: atomic writes (replace_file for published files,
  stage_file and commit_file for state), private state-file reads, postmap
  and postconf;
- stores: the Store interface and the registry first (BACKENDS,
  store_class), then the Postfix map. The other stores (Sendmail, qmail,
  Exim, PostgreSQL, MySQL, SQLite, memcached) are in the companion module
  ``pbsmtp_stores``, imported only when --backend names one of them;
- sources: the Source interface, a log file and its rotations (plan_spans,
  FileSource), the systemd journal (JournalReader);
- settings: Options, one field per option, with the config file's rules;
- run state: StateDir and its files (offset or cursor, pending addresses,
  sessions, map cache, entries cache, grants), the locks;
- the run: prepare() once per invocation, run() one pass, run_caught_up();
- the support desk: --explain, --grant, --revoke, --check-postfix;
- the pattern tester: --check-patterns;
- the command line: cli(), one function per mode, the syslog line, the
  metrics file, --dumpconfig.

Exit codes: 0 success (also when another run holds the lock), 1 an error
(one ``Error:`` line; the map and the offset are left as they were),
2 a command-line usage error.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

DEFAULT_DBFILE = "/etc/postfix/pop-before-smtp"
DEFAULT_GRACE = 1800
DEFAULT_STATE_DIR = "/var/lib/pbsmtp-batch"
# A run writes "PID START" into the lock it holds; a later run that finds the
# lock held longer than this (--lock-timeout) reports the holder.
DEFAULT_LOCK_TIMEOUT = 300
# A session (a login whose end the log will tell) keeps its address in the
# map until it ends, and no longer than this after its login (--max-session).
DEFAULT_MAX_SESSION = 43200
DEFAULT_CONFIG = "/etc/pbsmtp-batch.conf"
# The classic daemon's default, then where Debian, some BSDs and RHEL put it.
DEFAULT_LOGFILES = ("/var/log/maillog", "/var/log/mail.log", "/var/log/mail/info",
                    "/var/log/messages")
# What postmap writes for each map type we support, and the file it writes.
MAP_SUFFIXES = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}
# The shared stores' defaults (--pg-table, --mysql-table, --memcache-*).
DEFAULT_TABLE = "pbsmtp_relay"
DEFAULT_MEMCACHE_SERVER = "127.0.0.1:11211"
DEFAULT_MEMCACHE_PREFIX = "pbsmtp:"

# The state directory's file names (StateDir puts them together; the idle run
# reads some of them before anything else is loaded). Existing state
# directories hold these names: they never change.
LOCK_NAME = "lock"             # the run's lock: held for the whole run
MAP_LOCK = "map.lock"          # held only while a run reads, merges and writes the store
MANUAL_NAME = "manual"         # the grants and revocations made by hand (--grant, --revoke)
# Per source (a log file, or a journal), files named SOURCE + suffix:
OFFSET_SUFFIX = ".offset"      # the committed position: a log offset or a journal cursor
PENDING_SUFFIX = ".pending"    # two-line servers' address lines awaiting their success line
SESSIONS_SUFFIX = ".sessions"  # the sessions still open (pair_sessions)
MAP_CACHE_SUFFIX = ".map"           # the map cache: which map version the last run left
ENTRIES_SUFFIX = ".entries"    # that map version's entries


def log_source_name(logfile: str) -> str:
    """A log's state files are named after its absolute path."""
    return os.path.abspath(logfile).strip("/").replace("/", "_")


def journal_source_name(directory: str | None) -> str:
    """The journal's: one for the system journal, one per --journal-directory."""
    return "journal" if directory is None else "journal_" + log_source_name(directory)


###############################################################################
# Tunables: how long, how much, how many ######################################
###############################################################################

# No regex ever sees a line longer than this: no server logs a login that
# long (rsyslog's default maxMessageSize is 8 KiB), and with it every pattern's
# time per line is bounded as well as linear.
LINE_MAX = 8192

# A syslog line may be cut at a buffer's size, and the part cut off is the
# end, where a server says "failed" or writes the rest of an address. The
# smallest such cut leaves a message of about 960 characters (RFC 3164's
# 1024-byte packet, old syslogds, perdition 1.x's libvanessa-logger at 1023);
# no whole login message comes near it (Dovecot's, with a 254-character user
# name and every element, is under 500). So a longer message is never a login.
LOGIN_MESSAGE_MAX = 900

# Address lines wait this long for their success line, and no more than this
# many wait at once: the state they are kept in must stay small.
PENDING_SECONDS = 600
PENDING_MAX = 10000

# No more open sessions than this are kept (the state file stays small);
# past it the oldest are forgotten, and their addresses expire a grace
# window after their last refresh.
SESSIONS_MAX = 20000

# How much of a log's head identifies it after logrotate has renamed,
# compressed or copied it.
FINGERPRINT_BYTES = 1024

# Blocks are read this big: large enough that the per-block Python work is
# lost in the I/O, small enough to keep the reader's memory flat.
BLOCK_BYTES = 1 << 20

# No server writes a login line this long (rsyslog's default maximum message
# is 8 KiB, journald's LineMax 48 KiB). A longer line is skipped, counted and
# warned about once per run, and never reaches a regex; the carry of an
# unfinished line is bounded by it, so memory stays flat whatever the bytes.
MAX_LINE_BYTES = 1 << 16

# Where a plain file's reading begins when the grace window is read again
# (first run, --reprocess, the old file gone): where its lines reach the
# window, less an hour for lines logged out of order.
WINDOW_MARGIN = 3600

# Below this many entries, reading the whole cache costs less than the
# postmap -q that merge_update needs to look up the changing keys.
UPDATE_IN_PLACE_MIN = 10000

# A hundred years: more than any grace window or lock bound (a test may
# accept decades-old sample lines), and far from the limits of time
# arithmetic and of int().
MAX_SECONDS = 100 * 366 * 86400

# --explain reads this much of the log before the grace window too, so that
# a login that has just aged out is shown as "too old", not as nothing.
EXPLAIN_LOOKBACK = 86400

# How many of the address's last login lines, and refused lines, it shows.
EXPLAIN_LINES = 5

# How long --grant and --revoke wait for a run that holds the lock.
MANUAL_LOCK_PATIENCE = 30.0

# How many lines without a time --check-patterns keeps as examples.
UNTIMED_EXAMPLES = 5


###############################################################################
# The idle run: exit before anything else is loaded ###########################
###############################################################################

# The only options an idle run may carry (as --NAME=VALUE or --NAME VALUE);
# any other argument means the full run.
IDLE_OPTIONS = ("logfile", "dbfile", "state-dir", "map-type", "grace", "postfix-config", "now")


def _own_file(path: str, kind=stat.S_ISREG) -> tuple[os.stat_result, bytes]:
    """A state file's status and bytes: owned by us, not writable by group
    or others, not a symlink; else ValueError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not kind(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ValueError(path)
        return st, os.read(fd, 1 << 16) if kind is stat.S_ISREG else b""
    finally:
        os.close(fd)


def idle_run(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether this run would change nothing and print nothing, told by a
    few stat calls, before click, the patterns or postconf are loaded.

    True only when all of this holds, and any doubt means False (the full
    run): the command line holds only IDLE_OPTIONS and there is no config
    file and no PBSMTP_ or MAIL_CONFIG variable; the state directory and its
    files are ours alone; no process holds the run's lock; the log is the
    file last read (same inode), exactly as long as the committed offset and
    not modified since that offset was committed, with no previous file that
    may get late lines; the map cache names the map, whose inode, size and
    mtime are as the last run left them, with the same grace, and its first
    entry is not due to expire. Then a full run would read no line and
    change no entry of the map. (An open session is written again only when
    its entry comes due, which ends the idle runs: a file map's entry
    relays whatever its time, so the session never lapses.)
    """
    opts = {"dbfile": DEFAULT_DBFILE, "state-dir": DEFAULT_STATE_DIR,
            "grace": str(DEFAULT_GRACE)}
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or name[2:] not in IDLE_OPTIONS:
            return False
        value = value if eq else next(args, None)
        if not value:
            return False
        opts[name[2:]] = value
    if any(k.startswith("PBSMTP_") for k in environ) or "MAIL_CONFIG" in environ:
        return False
    try:
        if os.path.lexists(DEFAULT_CONFIG):
            return False
        grace = opts["grace"]
        if not (grace.isascii() and grace.isdigit()):
            return False
        now = float(opts["now"]) if "now" in opts else time.time()
        logfile = opts.get("logfile") or next(
            (p for p in DEFAULT_LOGFILES if os.path.exists(p)), None)
        if logfile is None:
            return False
        state_dir = opts["state-dir"]
        _own_file(state_dir, stat.S_ISDIR)
        base = os.path.join(state_dir, log_source_name(logfile))
        offset_st, offset_text = _own_file(base + OFFSET_SUFFIX)
        saved = json.loads(offset_text)
        cache_st, cache_text = _own_file(base + MAP_CACHE_SUFFIX)
        cache = json.loads(cache_text)
        lock = os.path.join(state_dir, LOCK_NAME)
        if os.path.lexists(lock):
            lock_st = _own_file(lock)[0]
            with open("/proc/locks", "rb") as f:
                held = f":{lock_st.st_ino} ".encode()
                if any(held in line for line in f.read().splitlines()):
                    return False
        log = os.stat(logfile)
        if not (stat.S_ISREG(log.st_mode) and os.access(logfile, os.R_OK)
                and saved.get("previous") is None and saved["offset"] > 0
                and log.st_ino == saved["inode"] and log.st_size == saved["offset"]
                and log.st_mtime_ns <= offset_st.st_mtime_ns):
            return False
        target, dbfile, map_type = cache["map"], opts["dbfile"], opts.get("map-type")
        suffixes = [MAP_SUFFIXES[map_type]] if map_type else set(MAP_SUFFIXES.values())
        if map_type is None:
            # The map type comes from main.cf's default_database_type: a
            # main.cf changed since the map was written may name another.
            conf = opts.get("postfix-config") or "/etc/postfix"
            if os.stat(os.path.join(conf, "main.cf")).st_mtime_ns > cache_st.st_mtime_ns:
                return False
        m = os.stat(target)
        return (target in [dbfile + x for x in suffixes]
                and [m.st_ino, m.st_size, m.st_mtime_ns] == cache["stamp"]
                and cache["grace"] == int(grace)
                and (cache["expires"] is None or now < cache["expires"])
                and os.access(os.path.dirname(os.path.abspath(dbfile)), os.W_OK | os.X_OK))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError):
        return False


# Invoked as the command (the console script, or this file run directly):
# an idle run exits here, silent and successful, as the full run would.
if (__name__ == "__main__" or os.path.basename(sys.argv[0]) == "pbsmtp-batch") and idle_run(
        sys.argv[1:], os.environ):
    raise SystemExit(0)
import bz2
import contextlib
import dataclasses
import datetime as dt
import difflib
import enum
import errno
import fcntl
import fnmatch
import functools
import gzip
import hashlib
import importlib
import io
import ipaddress
import lzma
import pwd
import re
import shutil
import socket
import struct
import subprocess
import sysconfig
import tempfile
import tomllib
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol
import click
__version__ = "0.1.0"
ADMIN_PATTERNS_DIR = "/etc/pbsmtp-batch/patterns"

# cron's PATH is /usr/bin:/bin, but postmap and postconf live in /usr/sbin.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")

# A new map is world-readable like Postfix's own tables: smtpd may read it
# after dropping privileges.
NEW_MAP_MODE = 0o644


###############################################################################
# Errors, data, and text for people ###########################################
###############################################################################

class PbsmtpError(Exception):
    """A failure the admin must see: one line, exit 1, nothing changed."""


# What the run tells: --debug detail (say), what cron must mail (warn), and
# output lines (echo).
Say = Callable[[str], None]


def quiet(message: str) -> None:
    """A Say that drops what it is told."""


@dataclasses.dataclass(frozen=True)
class Sample:
    line: str
    ip: str | None = None        # expected normalised address; None: must not match
    user: str | None = None
    injection: bool = False      # a crafted line that imitates a success
    desc: str = ""
    before: tuple[str, ...] = () # earlier lines of the same session (two-line servers)
    session: str | None = None   # the session id a login opens or a logout ends


@dataclasses.dataclass(frozen=True, eq=False)
class Pattern:
    """One server family, loaded from patterns/NAME.toml."""
    name: str
    path: str
    description: str
    version: str
    program: re.Pattern[str]     # must match the whole syslog tag
    pid: bool                    # the tag must carry [PID]
    contains: tuple[str, ...]    # one must occur in the line: a cheap pre-filter
    unique: tuple[str, ...]      # each may occur at most once: an injection guard
    regexes: tuple[re.Pattern[str], ...]
    samples: tuple[Sample, ...]
    # Servers that log the client address and the success on separate lines
    # (popa3d, old vm-pop3d, solid-pop3d without logextend): these regexes
    # read the address line, and a success regex without an ip group takes
    # the address of the same host, program and PID.
    address: tuple[re.Pattern[str], ...] = ()
    # Who may write this server's lines to the systemd journal, by the
    # fields journald takes from the sender's kernel credentials (see
    # journal_refusal): executables (_EXE), users (_UID) and units.
    journal_exe: tuple[str, ...] = ()
    journal_users: tuple[str, ...] = ("root",)
    journal_units: tuple[str, ...] = ()
    # How this server's sessions end (the file's [logout] table), or None.
    logout: LogoutRules | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class LogoutRules:
    """A pattern file's [logout] table: how a login names its session, and
    the lines that end that session.

    ``session`` is searched in a login line's message with the user name
    cut out (the client chooses every byte of it), and must occur exactly
    once; its ``session`` group is the id. A logout regex must match from
    the start of a line of the same program and give the same id; no token
    of ``unique`` may occur twice in it.

    With ``process`` (key = "process": servers whose end lines name no
    session, each process serving one client at a time, as Cyrus's) there
    is no ``session`` regex: the session is the login line's process, its
    host, program tag and PID, and an end line is a line of that same host,
    program and PID that a logout regex matches from the start. Its id is
    ``pid=PID``, taken from the tag, never from the message.

    ``programs``, when given, is the program tags whose logins open a
    session (fullmatch); a login of any other (a server's POP3 daemon,
    which logs no end when a client drops) counts for --grace only."""
    session: re.Pattern[str] | None
    contains: tuple[str, ...]
    unique: tuple[str, ...]
    regexes: tuple[re.Pattern[str], ...]
    samples: tuple[Sample, ...]
    process: bool = False
    programs: re.Pattern[str] | None = None


class Prefix:
    """What comes before the message of a log line.

    Its time is worked out only when asked for: most parsed lines turn out
    not to be logins, and mktime() is the dearest part of parsing. A plain
    class with slots, not a frozen dataclass: one is built per candidate
    line, and a frozen dataclass's __init__ (object.__setattr__ per field)
    costs more than the parse. Nothing assigns to it after parsing.
    """
    __slots__ = ("stamp", "now", "host", "program", "pid", "message", "_time")

    def __init__(self, stamp: tuple[str, ...], now: float, host: str | None, program: str,
                 pid: str | None, message: str):
        self.stamp = stamp           # ("bsd", month, day, hms), ("iso", text), ("full", text, zone)
        self.now = now               # the run's time, for the year of an RFC 3164 stamp
        self.host, self.program, self.pid, self.message = host, program, pid, message
        self._time: tuple[float | None] | None = None

    def __repr__(self) -> str:
        return (f"Prefix({self.stamp!r}, {self.now!r}, {self.host!r}, {self.program!r}, "
                f"{self.pid!r}, {self.message!r})")

    @property
    def when(self) -> float | None:
        """Epoch seconds, or None when the line carries no usable time.
        Worked out once."""
        if self._time is None:
            self._time = (self._when(),)
        return self._time[0]

    def _when(self) -> float | None:
        kind, *parts = self.stamp
        if kind == "bsd":
            month, day, hms = parts
            return _bsd_time_cached(_MONTHS[month], int(day), hms, self.now,
                                    (time.tzname, time.timezone, time.altzone))
        if kind == "full":
            # journalctl short-full names the zone; only UTC/GMT are
            # unambiguous, anything else is the reader's local zone.
            text, zone = parts
            return iso_time(text + ("+00:00" if zone in ("UTC", "GMT", "Z") else ""))
        return iso_time(parts[0])


@dataclasses.dataclass(frozen=True)
class Login:
    ip: str
    when: int
    user: str | None
    pattern: str
    # (pattern, host, program, session id) when the line names its session.
    session: SessionKey | None = None


SessionKey = tuple[str, str, str, str]


@dataclasses.dataclass(frozen=True)
class SessionEnd:
    """A line that ends a session: only the session with this exact key."""
    key: SessionKey
    when: int


@dataclasses.dataclass(frozen=True)
class Session:
    """An open session: its address stays in the map while it lasts."""
    key: SessionKey
    ip: str
    user: str | None
    start: int                   # the login's time
    seen: int                    # the newest time written to the map for it


@dataclasses.dataclass
class SessionPlan:
    """What pairing the logins with their ends did, before anything is written."""
    sessions: dict[SessionKey, Session]
    logins: list[Login] = dataclasses.field(default_factory=list)   # to merge
    opened: list[Session] = dataclasses.field(default_factory=list)
    ended: list[tuple[Session, int, str]] = dataclasses.field(default_factory=list)
    kept: list[Session] = dataclasses.field(default_factory=list)   # refreshed in the map
    dropped: int = 0             # oldest sessions forgotten past SESSIONS_MAX


@dataclasses.dataclass(frozen=True)
class Offset:
    """How far one log file has been read, and how to know it again."""
    inode: int
    offset: int
    fingerprint: str = ""        # sha256 of the file's first `length` bytes
    length: int = 0


@dataclasses.dataclass(frozen=True)
class LogState:
    """What the offset file holds between runs."""
    current: Offset
    previous: Offset | None = None   # the newest rotated file: may get late lines


@dataclasses.dataclass
class Plan:
    """The merged map and what changed, before anything is written."""
    entries: dict[str, int]
    added: dict[str, int] = dataclasses.field(default_factory=dict)
    refreshed: dict[str, int] = dataclasses.field(default_factory=dict)
    expired: dict[str, int] = dataclasses.field(default_factory=dict)
    invalid: dict[str, str] = dataclasses.field(default_factory=dict)
    # The entries merged into were read from the store as it is now, so
    # entries == what is stored + added + refreshed - expired - invalid.
    base_is_map: bool = False
    # What the open sessions did in this run (for --dry-run and --debug).
    sessions: SessionPlan | None = None
    # Set by merge_update: then ``entries`` holds only the added and
    # refreshed entries, the stored map is updated by exactly these changes
    # (never rebuilt from entries), and this counts its entries afterwards.
    active: int | None = None

    @property
    def size(self) -> int:
        return len(self.entries) if self.active is None else self.active

    @property
    def changed(self) -> bool:
        return bool(self.added or self.refreshed or self.expired or self.invalid)


# C0 controls, DEL and C1 controls (U+009B is a one-character CSI on many
# terminals; rsyslog does not escape it in UTF-8 text).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """A log line made safe to print on a terminal: control characters as
    \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    return f"{sign}{seconds // 60}m{seconds % 60:02d}s"


def iso_local(epoch: float) -> str:
    """An epoch as local ISO 8601 time with its UTC offset."""
    return dt.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def human_time(epoch: float, now: float, grace: int | None = None) -> str:
    """A login time for people: local ISO time, its age and (given the grace
    window) the time left."""
    text = f"{iso_local(epoch)} (age {_age(int(now - epoch))}"
    if grace is not None:
        text += f", left {_age(int(epoch + grace - now))}"
    return text + ")"


###############################################################################
# Patterns: load and check ####################################################
###############################################################################

def shipped_patterns_dir() -> str:
    """The pattern directory that came with this copy of the program.

    From a source checkout (or an editable install) it sits beside the module;
    a plain ``pip install .`` puts it under the install scheme's data path
    (setup.cfg's data_files). An installed module looks first under its own
    prefix: /usr/lib/python3/dist-packages (a Debian package) goes with
    /usr/share, not with a copy another installer left under /usr/local. A
    directory that cannot be looked at counts as absent here; load_patterns
    then says why it cannot be read.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(here, "patterns")]
    libdir = os.path.dirname(os.path.dirname(here))
    if os.path.basename(libdir).startswith("lib"):      # PREFIX/lib*/python*/*-packages
        candidates.append(os.path.join(os.path.dirname(libdir), "share", "pbsmtp-batch",
                                       "patterns"))
    for base in (sysconfig.get_path("data"), sys.prefix):
        candidates.append(os.path.join(base, "share", "pbsmtp-batch", "patterns"))
    for candidate in candidates:
        if os.path.isdir(candidate):       # never raises, unlike Path.is_dir()
            return candidate
    return candidates[0]


def default_patterns_dir() -> str:
    """Where the shipped pattern files are; the admin's directory is laid
    over them (see pattern_files)."""
    return shipped_patterns_dir()


@dataclasses.dataclass(frozen=True)
class PatternSource:
    """Where one pattern file in use comes from, for --dumpconfig."""
    name: str
    path: str | None             # None: disabled
    origin: str                  # "shipped", "replaces the shipped one", "added", "disabled"


def read_toml(path: str, parsed: dict[str, dict] | None = None) -> dict:
    """A pattern file's TOML, parsed once per load: ``parsed`` keeps what
    was read (by path) for the rest of the same load."""
    if parsed is not None and path in parsed:
        return parsed[path]
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message already ends with "(at line N, column M)".
        raise PbsmtpError(f"pattern file {path}: {e}") from None
    except OSError as e:
        raise PbsmtpError(f"cannot read pattern file {path}: {e.strerror}") from None
    if parsed is not None:
        parsed[path] = data
    return data


def _disabled(path: str, parsed: dict[str, dict] | None = None) -> bool:
    """Whether an admin file only switches a pattern off (disabled = true)."""
    value = read_toml(path, parsed).get("disabled", False)
    if not isinstance(value, bool):
        raise PbsmtpError(f"pattern file {path}: disabled must be true or false")
    return value


def _toml_files(directory: str) -> dict[str, str]:
    try:
        # Path.glob() would take an unreadable directory for an empty one.
        return {n[:-len(".toml")]: os.path.join(directory, n)
                for n in sorted(os.listdir(directory)) if n.endswith(".toml")}
    except OSError as e:
        raise PbsmtpError(f"cannot read patterns directory {directory}: {e.strerror}") from None


def pattern_files(directory: str | None = None,
                  parsed: dict[str, dict] | None = None) -> list[PatternSource]:
    """The pattern files in use, by name.

    An explicit directory means exactly its files. Otherwise the shipped
    files are overlaid by ADMIN_PATTERNS_DIR, like fail2ban's .local files:
    a file there with a shipped file's name replaces it, a new name adds
    one, and a file that says ``disabled = true`` switches that name off.
    The shipped files keep their upstream fixes; the admin's set is only
    the difference.
    """
    if directory is not None:
        layers = [(directory, "shipped")]
    else:
        layers = [(default_patterns_dir(), "shipped")]
        if os.path.isdir(ADMIN_PATTERNS_DIR):
            layers.append((ADMIN_PATTERNS_DIR, "admin"))
    chosen: dict[str, PatternSource] = {}
    for where, layer in layers:
        for name, path in _toml_files(where).items():
            if _disabled(path, parsed):
                chosen[name] = PatternSource(name, None, f"disabled by {path}")
            elif layer == "admin":
                origin = "replaces the shipped one" if name in chosen else "added"
                chosen[name] = PatternSource(name, path, origin)
            else:
                chosen[name] = PatternSource(name, path, "shipped" if directory is None
                                             else "from --patterns-dir")
    return [chosen[name] for name in sorted(chosen)]


_GREEDY = re.compile(r"(?<!\\)\.[*+](?!\?)")


def pattern_problems(source: str, needs_ip: bool = True) -> list[str]:
    """Why a login regex is too loose to trust with the relay (empty: fine).

    A regex must start at the beginning of the message, must capture ``ip``,
    and must not skip over arbitrary text greedily before the address: a
    greedy ``.*`` lets a user name that carries ``rip=ATTACKER`` win. Only
    the success line of a two-line server (needs_ip=False) has no address.
    """
    problems = []
    if not source.startswith("^"):
        problems.append("does not start with ^ (anchor it right after the program tag)")
    head, sep, _ = source.partition("(?P<ip>")
    if not sep:
        if needs_ip:
            problems.append("has no (?P<ip>...) group")
    elif _GREEDY.search(head):
        problems.append("has a greedy .* or .+ before the ip group")
    return problems


def _sample(raw: object, where: str) -> Sample:
    if not isinstance(raw, dict) or not isinstance(raw.get("line"), str):
        raise PbsmtpError(f"{where}: every [[sample]] needs a line = '...'")
    matches = raw.get("match", True)
    ip = raw.get("ip")
    if matches and not ip:
        raise PbsmtpError(f"{where}: a sample needs ip = '...' or match = false")
    if not matches and ip:
        raise PbsmtpError(f"{where}: a sample with match = false cannot name an ip")
    before = raw.get("before", [])
    if not isinstance(before, list) or not all(isinstance(b, str) for b in before):
        raise PbsmtpError(f"{where}: a sample's before = [...] holds lines")
    session = raw.get("session")
    if session is not None and not (isinstance(session, str) and session):
        raise PbsmtpError(f"{where}: a sample's session = '...' names an id")
    return Sample(line=raw["line"], ip=ip if matches else None, user=raw.get("user"),
                  injection=bool(raw.get("injection", False)), desc=raw.get("desc", ""),
                  before=tuple(before), session=session)


def _logout_sample(raw: object, where: str) -> Sample:
    """A [[logout.sample]]: session = 'ID' that the line ends (after the
    login lines in before = [...]), or match = false."""
    if not isinstance(raw, dict) or not isinstance(raw.get("line"), str):
        raise PbsmtpError(f"{where}: every [[logout.sample]] needs a line = '...'")
    unknown = sorted(set(raw) - {"line", "session", "match", "injection", "desc", "before"})
    if unknown:
        raise PbsmtpError(f"{where}: unknown key '{unknown[0]}' in a [[logout.sample]]")
    matches = raw.get("match", True)
    if matches and not raw.get("session"):
        raise PbsmtpError(f"{where}: a logout sample needs session = '...' or match = false")
    if not matches and raw.get("session"):
        raise PbsmtpError(f"{where}: a logout sample with match = false cannot name a session")
    return _sample({k: v for k, v in raw.items() if k != "match"} | {"match": False}, where)


_LITERAL_TAG = re.compile(r"[A-Za-z0-9_/-]+")


def session_tags(pattern: Pattern) -> tuple[str, ...]:
    """The program names of a two-line server as plain text (its ``program``
    must be names joined by ``|``): every line with one of them must reach
    match_login, which ends a waiting address on any other line of its
    session."""
    if not pattern.address:
        return ()
    names = pattern.program.pattern.split("|")
    return tuple(names) if all(_LITERAL_TAG.fullmatch(n) for n in names) else ()


def load_pattern(path: str, parsed: dict[str, dict] | None = None) -> Pattern:
    """Read and check one pattern file; any problem names the file."""
    data = read_toml(path, parsed)

    def need(key: str, kind: type) -> object:
        value = data.get(key)
        if not isinstance(value, kind) or not value:
            raise PbsmtpError(f"pattern file {path}: missing or empty '{key}'")
        return value

    def compile_(source: str, what: str) -> re.Pattern[str]:
        try:
            return re.compile(source)
        except re.error as e:
            raise PbsmtpError(f"pattern file {path}: bad {what} regex: {e}") from None

    known = {"description", "version", "program", "pid", "contains", "unique", "regex",
             "address", "sample", "disabled", "journal_exe", "journal_users",
             "journal_units", "logout"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PbsmtpError(f"pattern file {path}: unknown key '{unknown[0]}'")
    def compile_all(sources: object, needs_ip: bool) -> tuple[re.Pattern[str], ...]:
        if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
            raise PbsmtpError(f"pattern file {path}: regexes must be a list of strings")
        for source in sources:
            problems = pattern_problems(source, needs_ip)
            if problems:
                raise PbsmtpError(f"pattern file {path}: regex {source!r} {problems[0]}")
        return tuple(compile_(source, "login") for source in sources)

    address = compile_all(data.get("address", []), needs_ip=True)
    if address and not data.get("pid"):
        raise PbsmtpError(f"pattern file {path}: address lines are paired by PID: set pid = true")
    regexes = compile_all(need("regex", list), needs_ip=not address)
    contains = need("contains", list)
    journal = {}
    for key in ("journal_exe", "journal_users", "journal_units"):
        value = data.get(key)
        if value is None:
            continue
        if (not isinstance(value, list) or not value
                or not all(isinstance(x, str) and x for x in value)):
            raise PbsmtpError(f"pattern file {path}: '{key}' must be a list of names")
        journal[key] = tuple(value)
    for exe in journal.get("journal_exe", ()):
        if not exe.startswith("/"):
            raise PbsmtpError(f"pattern file {path}: journal_exe {exe!r} is not an absolute path")
    pattern = Pattern(
        name=Path(path).stem,
        path=path,
        description=str(need("description", str)),
        version=str(need("version", str)),
        program=compile_(str(need("program", str)), "program"),
        pid=bool(data.get("pid", False)),
        contains=tuple(str(c) for c in contains),
        unique=tuple(str(u) for u in data.get("unique", [])),
        regexes=regexes,
        samples=tuple(_sample(s, path) for s in data.get("sample", [])),
        address=address,
        logout=_logout_rules(data.get("logout"), path, compile_) if "logout" in data else None,
        **journal,
    )
    if pattern.logout is not None and pattern.logout.process and not pattern.pid:
        raise PbsmtpError(f"pattern file {path}: [logout] key = \"process\" pairs by PID: "
                          f"set pid = true")
    if address and not session_tags(pattern):
        raise PbsmtpError(f"pattern file {path}: a pattern with address lines needs a "
                          f"program of plain names joined by '|'")
    return pattern


def logout_problems(source: str, process: bool = False) -> list[str]:
    """Why a logout regex cannot be trusted to end a session (empty: fine):
    it must start at the beginning of the message, capture ``session``, and
    skip nothing greedily before it (a user name could carry a second id).
    A regex of a table keyed by process names no id: the tag's PID is the
    key, so it must not capture ``session`` at all."""
    problems = []
    if not source.startswith("^"):
        problems.append("does not start with ^ (anchor it right after the program tag)")
    head, sep, _ = source.partition("(?P<session>")
    if process:
        if sep:
            problems.append('captures a session, but key = "process" takes the PID')
    elif not sep:
        problems.append("has no (?P<session>...) group")
    elif _GREEDY.search(head):
        problems.append("has a greedy .* or .+ before the session group")
    return problems


def _logout_rules(data: object, path: str, compile_) -> LogoutRules:
    """A pattern file's [logout] table, checked; any problem names the file."""
    where = f"pattern file {path}: [logout]"
    if not isinstance(data, dict):
        raise PbsmtpError(f"{where} must be a table")
    unknown = sorted(set(data) - {"session", "key", "contains", "unique", "regex", "sample",
                                  "programs"})
    if unknown:
        raise PbsmtpError(f"{where}: unknown key '{unknown[0]}'")
    for key in ("contains", "regex"):
        value = data.get(key)
        if (not isinstance(value, list) or not value
                or not all(isinstance(x, str) and x.strip() for x in value)):
            raise PbsmtpError(f"{where}: '{key}' must be a list of strings")
    unique = data.get("unique", [])
    if not isinstance(unique, list) or not all(isinstance(x, str) and x for x in unique):
        raise PbsmtpError(f"{where}: 'unique' must be a list of strings")
    key = data.get("key", "session")
    if key not in ("session", "process"):
        raise PbsmtpError(f"{where}: 'key' must be \"session\" or \"process\"")
    process = key == "process"
    session = data.get("session")
    if process and session is not None:
        raise PbsmtpError(f"{where}: key = \"process\" takes the PID: no 'session' regex")
    if not process and (not isinstance(session, str) or "(?P<session>" not in session):
        raise PbsmtpError(f"{where}: 'session' must be a regex with a (?P<session>...) group")
    for source in data["regex"]:
        problems = logout_problems(source, process)
        if problems:
            raise PbsmtpError(f"{where}: regex {source!r} {problems[0]}")
    programs = data.get("programs")
    if programs is not None and (not isinstance(programs, str) or not programs):
        raise PbsmtpError(f"{where}: 'programs' must be a regex of program tags")
    samples = data.get("sample", [])
    if not isinstance(samples, list):
        raise PbsmtpError(f"{where}: 'sample' must be [[logout.sample]] tables")
    return LogoutRules(session=None if process else compile_(session, "session"),
                       contains=tuple(data["contains"]), unique=tuple(unique),
                       regexes=tuple(compile_(r, "logout") for r in data["regex"]),
                       samples=tuple(_logout_sample(x, path) for x in samples),
                       process=process,
                       programs=None if programs is None else compile_(programs, "programs"))


def load_patterns(directory: str | None, names: Sequence[str] = ()) -> list[Pattern]:
    """Every pattern file in use (see pattern_files), or only the named ones."""
    parsed: dict[str, dict] = {}             # each file is read and parsed once
    files = {src.name: src.path for src in pattern_files(directory, parsed) if src.path}
    if not files:
        where = directory or f"{default_patterns_dir()} and {ADMIN_PATTERNS_DIR}"
        raise PbsmtpError(f"no pattern files (*.toml) in use in {where}")
    directory = directory or "the pattern files in use"
    for name in names:
        if name not in files:
            raise PbsmtpError(f"no pattern '{name}' in {directory} (have: {', '.join(files)})")
    return [load_pattern(files[n], parsed) for n in (names or files)]


###############################################################################
# Parsing: timestamps, prefixes, addresses, logins (all pure) #################
###############################################################################

_MONTHS = {m: i for i, m in enumerate(
    "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), start=1)}
_ISO = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"
_TAG = r"(?P<program>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?:(?: |$)"

# One shared parse of the prefix, so that the patterns only see the message.
# Forms, in the order tried:
#   RFC 5424:        <22>1 2026-11-24T23:20:23.036349+00:00 host app pid msgid sd msg
#     (rsyslog's RFC 5424 template keeps the blank that followed "tag:" in a
#     legacy message: "... - -  msg" has two blanks, and the second is dropped)
#   RFC 3164 et al.: [<PRI>] TIME [<facility.level>] [host] tag[pid]: msg
#     TIME is RFC 3164 ("Nov  4 23:01:02", journalctl short/short-precise),
#     RFC 3339 (rsyslog precise, journalctl short-iso[-precise], Dovecot's
#     log_timestamp "%Y-%m-%d %H:%M:%S") or journalctl short-full
#     ("Tue 2026-11-24 23:20:23 UTC"). Dovecot's own log_path file has no
#     host: "Nov  4 23:01:02 imap-login: Info: Login: ...".
#   Dovecot 1.x own log: dovecot: 2008-10-02 23:34:07 Info: pop3-login: ...
_RFC5424 = re.compile(
    r"<\d{1,3}>1 (?P<iso>\S+) (?P<host>\S+) (?P<program>\S+) (?P<pid>\S+) \S+ "
    r"(?:-|(?:\[(?:[^\]\\\"]|\\.|\"(?:[^\"\\]|\\.)*\")*\])+)(?: \ufeff? ?(?P<message>.*))?",
    re.DOTALL)
_SYSLOG = re.compile(
    r"(?:<\d{1,3}>)?"
    r"(?:(?P<iso>" + _ISO + r")"
    r"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?P<fulldate>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)"
    r" (?P<zone>[A-Za-z][\w+/-]*)"
    r"|(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?P<day>[ 0-3]?\d)"
    r" (?P<hms>\d\d:\d\d:\d\d)(?:\.\d+)?)"
    r" +(?:<[a-z0-9]+\.[a-z]+> )?"
    r"(?:(?P<host>[^\s\[\]:<]+) )??" + _TAG +
    # Solaris syslogd (msgid on): "[ID 583609 mail.info] " after the tag.
    r"(?:\[ID \d+ [a-z0-9]+\.[a-z]+\] )?(?P<message>.*)",
    re.DOTALL)
_TAG_FIRST = re.compile(_TAG + r"(?P<iso>" + _ISO + r") (?P<message>.*)", re.DOTALL)

# nginx's own error_log file: "2026/11/24 23:01:02 [info] 8#8: *24819 ...". The
# tag is nginx; the message keeps "[level] pid#tid: ..." so that a pattern
# reads the same text as in nginx's syslog output, where nginx writes its own
# time after the tag: "nginx: 2026/11/24 23:01:02 [info] 8#8: ...".
_NGINX = re.compile(r"(?P<date>\d{4})/(?P<month>\d\d)/(?P<day>\d\d) (?P<hms>\d\d:\d\d:\d\d) "
                    r"(?P<message>\[[a-z]+\] (?P<pid>\d+)#\d+: .*)", re.DOTALL)

# Zimbra's own log4j files, /opt/zimbra/log/mailbox.log and audit.log (layout
# "%d %-5p [%t] [%z] %c{1} - %m"): "2026-11-24 23:01:02,123 INFO  [ImapServer-7]
# [name=u;ip=A;oip=B;] imap - user u authenticated, ...". The thread's name is
# the tag and its number the pid ("ImapServer", "7"); the level is dropped and
# the message starts at the [context]. Other threads (qtp...:https://...) do
# not parse: no POP/IMAP login is logged there.
_LOG4J = re.compile(r"(?P<iso>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d{3} [A-Z]+ +"
                    r"\[(?P<program>[A-Za-z][A-Za-z0-9]*)-(?P<pid>\d+)\] (?P<message>\[.*)",
                    re.DOTALL)

# The same log4j line forwarded through syslog (rsyslog's imfile with a tag
# that has no colon): "Nov 24 23:01:02 mail mailboxlog 2026-11-24
# 23:01:02,123 INFO  [ImapServer-7] [...] imap - user u authenticated, ...".
# The syslog host is kept; the rest is read as _LOG4J reads the file.
_SYSLOG_LOG4J = re.compile(
    r"(?:<\d{1,3}>)?(?:" + _ISO + r"|(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" [ 0-3]?\d \d\d:\d\d:\d\d(?:\.\d+)?) +(?P<host>[^\s\[\]:<]+) [A-Za-z][\w.-]* "
    + _LOG4J.pattern, re.DOTALL)

# Qpopper's own trace file (popper -d -t FILE), which has no tag: the program
# is "qpopper-trace". Qpopper 4 (pop_log.c "%s.%03ld %.4s [%ld] %s"):
# "Nov 24 12:53:46.123 2026 [7597] (v4.0.9) POP login by user ..."; Qpopper 3
# wrote the whole ctime(): "Tue Nov 24 12:53:46 2026 [7597]  Stats: ...".
_QPOPPER_TRACE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) )?"
    r"(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?P<day>[ 0-3]?\d)"
    r" (?P<hms>\d\d:\d\d:\d\d)(?:\.\d+)? (?P<year>\d{4}) \[(?P<pid>\d+)\] +(?P<message>.*)",
    re.DOTALL)


def bsd_time(month: int, day: int, hms: str, now: float) -> float | None:
    """An RFC 3164 time (no year, local time) as epoch seconds.

    The year is this year, or last year when that would put the line more than
    a day in the future: "Dec 31 23:59:50" read on Jan 1 is last year's.
    Local time honours TZ; an hour that DST makes ambiguous resolves as
    mktime() chooses, which is at most an hour off and only ever shortens or
    lengthens one login's grace once a year.
    """
    hour, minute, second = (int(x) for x in hms.split(":"))
    year = time.localtime(now).tm_year
    for y in (year, year - 1):
        try:
            dt.date(y, month, day)
        except ValueError:           # Feb 29 in a common year, day 31 in April...
            continue
        when = time.mktime((y, month, day, hour, minute, second, 0, 0, -1))
        if when <= now + 86400:
            return when
    return None


# A busy log repeats each second's stamp on many lines. The zone is part of
# the key: the answer depends on TZ, which a process may change (tzset).
_bsd_time_cached = functools.lru_cache(maxsize=4096)(
    lambda month, day, hms, now, zone: bsd_time(month, day, hms, now))


def iso_time(text: str) -> float | None:
    """RFC 3339 / ISO 8601; without an offset it is local time."""
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_prefix(line: str, now: float) -> Prefix | None:
    """Split a log line into its time, host, program tag and message."""
    m = _RFC5424.match(line)
    if m:
        pid = m["pid"] if m["pid"].isdigit() else None
        host = None if m["host"] == "-" else m["host"]
        return Prefix(("iso", m["iso"]), now, host, m["program"], pid, m["message"] or "")
    m = _SYSLOG.match(line)
    if m:
        if m["month"]:
            stamp = ("bsd", m["month"], m["day"], m["hms"])
        elif m["fulldate"]:
            stamp = ("full", m["fulldate"], m["zone"])
        else:
            stamp = ("iso", m["iso"])
        return Prefix(stamp, now, m["host"], m["program"], m["pid"], m["message"])
    m = _TAG_FIRST.match(line)
    if m:
        return Prefix(("iso", m["iso"]), now, None, m["program"], m["pid"], m["message"])
    m = _NGINX.match(line)
    if m:
        iso = f"{m['date']}-{m['month']}-{m['day']} {m['hms']}"
        return Prefix(("iso", iso), now, None, "nginx", m["pid"], m["message"])
    m = _LOG4J.match(line)
    if m:
        return Prefix(("iso", m["iso"]), now, None, m["program"], m["pid"], m["message"])
    m = _SYSLOG_LOG4J.match(line)
    if m:
        return Prefix(("iso", m["iso"]), now, m["host"], m["program"], m["pid"], m["message"])
    m = _QPOPPER_TRACE.match(line)
    if m:
        iso = f"{m['year']}-{_MONTHS[m['month']]:02d}-{int(m['day']):02d} {m['hms']}"
        return Prefix(("iso", iso), now, None, "qpopper-trace", m["pid"], m["message"])
    return None


_IPV4 = re.compile(r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def normalise_ip(text: str) -> str | None:
    """The address as Postfix will look it up, or None if it is not one.

    IPv4 stays a dotted quad (no leading zeros, which some resolvers read as
    octal). IPv6 takes inet_ntop's form, which is what Postfix's
    getnameinfo() gives. An IPv4-mapped address becomes plain IPv4, since
    that is what Postfix looks up for such clients. Zone ids, partial
    addresses and host names are refused: a partial key opens a whole net.
    """
    if _IPV4.fullmatch(text):
        return text
    if ":" not in text or "%" in text:
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None
    if packed.startswith(_V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


# A run sees few distinct program tags, so which patterns can read a tag is
# worked out once per tag. (Pattern compares by identity: cheap to hash.)
@functools.lru_cache(maxsize=4096)
def patterns_for_program(patterns: tuple[Pattern, ...], program: str) -> tuple[Pattern, ...]:
    return tuple(p for p in patterns if p.program.fullmatch(program))


@functools.lru_cache(maxsize=64)
def all_literals(patterns: tuple[Pattern, ...]) -> tuple[str, ...]:
    """Every pattern's pre-filter literals, and the tags of two-line servers
    (every line of their sessions counts): a line holding none of them
    cannot be read by any pattern."""
    return tuple(sorted({k for p in patterns for k in (*p.contains, *session_tags(p))}))


# Pending address lines of two-line servers: (host, program, pid) -> (ip, time).
Pending = dict[tuple[str, str, str], tuple[str, int]]


def match_login(line: str, patterns: Sequence[Pattern], now: float,
                pending: Pending | None = None) -> tuple[Login | None, str | None]:
    """The successful login this line records, if any.

    Returns (login, None) for a login, (None, reason) for a line that a
    pattern recognised but that must not be trusted, and (None, None) for
    anything else. ``pending`` carries the address lines of two-line servers
    from one line (and one run) to the next: an address line is remembered
    there, and the success line of the same session takes it out.
    """
    patterns = tuple(patterns)
    if len(line) > LINE_MAX:
        return None, None
    if not any(k in line for k in all_literals(patterns)):
        return None, None
    prefix = parse_prefix(line, now)
    if prefix is None:
        return None, None
    for pattern in patterns_for_program(patterns, prefix.program):
        if pattern.pid and prefix.pid is None:
            continue
        session = (prefix.host or "", prefix.program, prefix.pid or "")
        # Two-line servers: every line of this host, program and PID, read
        # by a pattern or not, ends the address waiting there. Only the
        # success line that comes next in the same session may take it; an
        # address line the patterns cannot read (tcpd's "connect from NAME")
        # starts a new session all the same, and a stale address must never
        # pass to it.
        waiting = pending.pop(session, None) if pattern.address and pending else None
        if not any(k in line for k in pattern.contains):
            continue
        for regex in pattern.address:
            m = regex.match(prefix.message)
            if m:
                ip = normalise_ip(m["ip"])
                if ip and prefix.when is not None and pending is not None:
                    pending[session] = (ip, int(prefix.when))
                    # Bounded within one run too (a scanner's connections
                    # in a --reprocess of a big log): keep what is recent
                    # as of this line.
                    if len(pending) > 2 * PENDING_MAX:
                        recent = trim_pending(pending, prefix.when)
                        pending.clear()
                        pending.update(recent)
                return None, None
        for regex in pattern.regexes:
            m = regex.match(prefix.message)
            if not m:
                continue
            if len(prefix.message) > LOGIN_MESSAGE_MAX:
                return None, (f"{pattern.name}: a {len(prefix.message)}-character message "
                              f"is longer than any whole login line (cut short?)")
            for token in pattern.unique:
                if prefix.message.count(token) > 1:
                    return None, (f"{pattern.name}: '{token}' occurs more than once "
                                  f"(a crafted user name?)")
            if "ip" in regex.groupindex:
                text = m["ip"]
            else:
                text = waiting[0] if waiting else None
                if text is None:
                    return None, (f"{pattern.name}: no address line seen for "
                                  f"{prefix.program}[{prefix.pid}]")
            ip = normalise_ip(text)
            if ip is None:
                return None, f"{pattern.name}: {text!r} is not a full IP address"
            if prefix.when is None:
                return None, f"{pattern.name}: the line carries no usable time"
            user = m["user"] if "user" in regex.groupindex else None
            session = None
            if pattern.logout is not None and (
                    pattern.logout.programs is None
                    or pattern.logout.programs.fullmatch(prefix.program or "")):
                sid = (process_session(prefix.pid) if pattern.logout.process
                       else login_session(pattern.logout, prefix.message, m))
                if sid is not None:
                    session = (pattern.name, prefix.host or "", prefix.program, sid)
            return Login(ip, int(prefix.when), user, pattern.name, session), None
    return None, None


def process_session(pid: str | None) -> str | None:
    """The session id of a process-keyed login or end line: its tag's PID."""
    return f"pid={pid}" if pid else None


def login_session(rules: LogoutRules, message: str, login: re.Match[str]) -> str | None:
    """The session id a login line names, read with the user name cut out
    (it is the client's own text, and may imitate the session element); an
    id that occurs more than once, or not at all, is none."""
    if "user" in login.re.groupindex and login.start("user") >= 0:
        message = message[:login.start("user")] + message[login.end("user"):]
    if any(message.count(token) > 1 for token in rules.unique):
        return None
    found = [m["session"] for m in rules.session.finditer(message)]
    return found[0] if len(found) == 1 and found[0] else None


@functools.lru_cache(maxsize=64)
def logout_literals(patterns: tuple[Pattern, ...]) -> tuple[str, ...]:
    return tuple(sorted({k for p in patterns if p.logout for k in p.logout.contains}))


def match_logout(line: str, patterns: Sequence[Pattern], now: float
                 ) -> tuple[SessionEnd | None, str | None]:
    """The session end this line records, if any: (end, None), (None,
    reason) for a line a logout regex read but that must not be trusted,
    (None, None) for anything else. The end names its pattern, host,
    program and session id: it can end only the session with that key."""
    patterns = tuple(patterns)
    literals = logout_literals(patterns)
    if not literals or len(line) > LINE_MAX or not any(k in line for k in literals):
        return None, None
    prefix = parse_prefix(line, now)
    if prefix is None:
        return None, None
    for pattern in patterns_for_program(patterns, prefix.program):
        rules = pattern.logout
        if rules is None or (pattern.pid and prefix.pid is None):
            continue
        if not any(k in line for k in rules.contains):
            continue
        for regex in rules.regexes:
            m = regex.match(prefix.message)
            if not m:
                continue
            if len(prefix.message) > LOGIN_MESSAGE_MAX:
                return None, f"{pattern.name}: logout line longer than any real one"
            for token in rules.unique:
                if prefix.message.count(token) > 1:
                    return None, (f"{pattern.name}: logout line with '{token}' more than "
                                  f"once (a crafted user name?)")
            sid = process_session(prefix.pid) if rules.process else m["session"]
            if prefix.when is None or not sid:
                return None, f"{pattern.name}: logout line without a usable time or id"
            key = (pattern.name, prefix.host or "", prefix.program, sid)
            return SessionEnd(key, int(prefix.when)), None
    return None, None


def trim_pending(pending: Pending, now: float) -> Pending:
    fresh = sorted(((when, key, ip) for key, (ip, when) in pending.items()
                    if when >= now - PENDING_SECONDS), reverse=True)[:PENDING_MAX]
    return {key: (ip, when) for when, key, ip in fresh}


###############################################################################
# Policy: sessions, pair each login with its end (pure) #######################
###############################################################################

def pair_sessions(sessions: Mapping[SessionKey, Session], events: Iterable[Login | SessionEnd],
                  now: float, grace: int, max_session: int) -> SessionPlan:
    """The open sessions after these events (in log order), and the logins
    that keep their addresses in the map.

    A login with a session key opens (or reopens) that session; a key
    names one session at a time, so a login from another address on a key
    that is open ends the session there at the login's time (a process
    keyed by its PID serves its next client). A SessionEnd ends only the
    open session with exactly its key, and never opens or extends one. An
    ended session gives a login at its end time, so the grace window runs
    from there. A session still open is written
    to the map again as a login at ``now`` once its last such time is half
    a grace window old (so a map read by a query that checks the grace
    window itself never lapses, and a quiet map is not rewritten every
    run). Every session ends at most ``max_session`` seconds after its
    login, with or without an end line.
    """
    plan = SessionPlan(sessions=dict(sessions))
    open_ = plan.sessions
    opened: dict[SessionKey, Session] = {}
    for event in events:
        if isinstance(event, Login):
            if event.session is None or event.when + max_session <= now:
                continue
            old = open_.get(event.session)
            when = min(event.when, int(now))
            if old is not None and old.ip != event.ip:
                if when < old.start:
                    continue      # an older login does not replace the newer session
                plan.ended.append((old, min(when, old.start + max_session), "next login"))
                opened.pop(event.session, None)
                old = None
            seen = max(when, old.seen) if old is not None else when
            session = Session(event.session, event.ip, event.user, when, seen)
            open_[event.session] = opened[event.session] = session
            continue
        session = open_.get(event.key)
        if session is None or event.when < session.start:
            continue          # not open, or an end older than its login: ends nothing
        del open_[event.key]
        opened.pop(event.key, None)
        end = min(event.when, session.start + max_session, int(now))
        plan.ended.append((session, end, "logout"))
    for key, session in list(open_.items()):
        if session.start + max_session <= now:
            del open_[key]
            opened.pop(key, None)
            plan.ended.append((session, session.start + max_session, "--max-session"))
        elif session.seen <= now - grace // 2:
            open_[key] = dataclasses.replace(session, seen=int(now))
            plan.kept.append(open_[key])
    if len(open_) > SESSIONS_MAX:
        newest = sorted(open_.values(), key=lambda x: (x.start, x.key), reverse=True)
        plan.dropped = len(open_) - SESSIONS_MAX
        plan.sessions = open_ = {x.key: x for x in newest[:SESSIONS_MAX]}
        opened = {k: v for k, v in opened.items() if k in open_}
    plan.opened = list(opened.values())
    plan.logins = ([Login(s.ip, end, s.user, s.key[0]) for s, end, _ in plan.ended]
                   + [Login(s.ip, s.seen, s.user, s.key[0]) for s in plan.kept
                      if s.key in open_])
    return plan


###############################################################################
# Policy: networks that never go into the map (pure) ##########################
###############################################################################

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """A CIDR as Postfix writes it: ``10.0.0.0/8``, ``[2001:db8::]/32``, ``192.0.2.1``."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](/\d+)?", text)
    if m:
        text = m[1] + (m[2] or "")
    return ipaddress.ip_network(text, strict=False)


def parse_mynetworks(value: str, read_file=lambda p: Path(p).read_text()
                     ) -> tuple[list[tuple[bool, Network]], list[str]]:
    """Postfix's expanded mynetworks as (negated, network) in list order.

    ``/file`` entries are read (their content is more entries, # comments
    allowed); ``type:table`` entries cannot be enumerated and are skipped.
    Returns the networks and notes on what was skipped.
    """
    nets: list[tuple[bool, Network]] = []
    notes: list[str] = []
    for item in re.split(r"[\s,]+", value.strip()):
        if not item:
            continue
        negated = item.startswith("!")
        entry = item.lstrip("!")
        if entry.startswith("/"):
            try:
                text = read_file(entry)
            except OSError as e:
                notes.append(f"mynetworks file {entry}: {e.strerror}")
                continue
            text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
            sub, sub_notes = parse_mynetworks(text, read_file)
            nets.extend((negated != n, net) for n, net in sub)
            notes.extend(sub_notes)
        elif re.match(r"^[a-z0-9_-]+:", entry) and not re.match(r"^[0-9a-fA-F:]+(/\d+)?$", entry):
            notes.append(f"mynetworks entry {item} is a lookup table; not read")
        else:
            try:
                nets.append((negated, parse_network(entry)))
            except ValueError:
                notes.append(f"mynetworks entry {item} is not a network; not read")
    return nets, notes


def shares_ipv6_key(ip: str) -> bool:
    """Whether other clients' lookups can also hit this IPv6 key.

    For fixed-key maps Postfix looks up an IPv6 client as its full address,
    then cuts the key at its last ':' again and again: client 2001:db8::1:5
    also tries 2001:db8::1. So a key can be hit from other addresses (for
    real global addresses, in the same /64) exactly when another address is
    written as the key, ':' and more. A key with all 8 groups, ending in
    '::', or whose '::' stands for two zero groups (2001:db8:1:2:3::8),
    cannot be.
    """
    if "::" not in ip or ip.endswith("::"):
        return False
    # The key is hit when some longer address is written as "KEY:X": try one.
    try:
        longer = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip + ":1"))
    except OSError:
        return False
    return longer.startswith(ip + ":")


IN_MYNETWORKS = "in mynetworks (relays anyway)"
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def excluded_reason(ip: str, mynetworks: Sequence[tuple[bool, Network]],
                    ignore: Sequence[Network], ipv6_shared_keys: bool = True) -> str | None:
    """Why this address must not be written to the map (None: write it)."""
    if not ipv6_shared_keys and shares_ipv6_key(ip):
        return "its key would also match other clients' shortened lookups (--ipv6-shared-keys=skip)"
    # Which family is plain from the text (ip_address() would try IPv4 on
    # every IPv6 address first, and pay for the exception).
    addr = ipaddress.IPv6Address(ip) if ":" in ip else ipaddress.IPv4Address(ip)
    if addr.is_unspecified or addr.is_multicast:
        return "unspecified or multicast address"
    if addr == _BROADCAST:
        return "broadcast address"
    if any(addr in net for net in ignore if net.version == addr.version):
        return "in --ignore-net"
    # Postfix's match lists are first match wins, and "!net" stops the search.
    for negated, net in mynetworks:
        if net.version == addr.version and addr in net:
            return None if negated else IN_MYNETWORKS
    return None


def address_argument(text: str) -> str:
    """The one client address an admin named (--explain, --grant, --revoke),
    as Postfix looks it up; ValueError saying what else it is.

    Exactly what may be a map key: a network would open every address in
    it, and a host name is not what smtpd looks up (it asks the map for the
    client's address)."""
    text = text.strip()
    ip = normalise_ip(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    if ip is not None:
        return ip
    shown = _short(text)
    if "/" in text:
        raise ValueError(f"{shown} is a network, not one address: grant each address "
                         f"(or add the network to Postfix's mynetworks)")
    if "%" in text:
        raise ValueError(f"{shown} carries a zone id: Postfix looks clients up without one")
    if re.fullmatch(r"[0-9.]+", text):
        raise ValueError(f"{shown} is not a full IPv4 address (four numbers 0-255, no "
                         f"leading zeros)")
    if re.fullmatch(r"(?=.*[A-Za-z])[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?", text):
        raise ValueError(f"{shown} is a host name, not an address: the map is looked up "
                         f"by the client's address")
    raise ValueError(f"{shown} is not an IP address")


###############################################################################
# Policy: the map, merge and purge (pure) #####################################
###############################################################################

def merge(existing: Mapping[str, str] | Mapping[str, int], logins: Iterable[Login], now: float,
          grace: int, checked: bool = False) -> Plan:
    """The new map: existing entries plus logins, newest login per address,
    nothing older than now - grace.

    Existing entries whose key is not a full normalised address, or whose
    value is not an all-digit epoch, are dropped (``invalid``): such a value
    would never expire, and such a key could open a whole network.
    ``checked`` entries (address -> int, from an earlier merge) are known to
    be valid and are not checked again.
    """
    cutoff = now - grace
    plan = Plan(entries={})
    for key, value in existing.items():
        if checked:
            pass
        elif normalise_ip(key) != key:
            plan.invalid[key] = value
            continue
        elif not value.isdigit():
            plan.invalid[key] = value
            continue
        if int(value) < cutoff:
            plan.expired[key] = int(value)
        else:
            plan.entries[key] = int(value)
    for login in logins:
        when = min(login.when, int(now))     # clock skew: never in the future
        if when < cutoff:
            continue
        old = plan.entries.get(login.ip)
        if old is not None and when <= old:
            continue
        plan.entries[login.ip] = when
        plan.expired.pop(login.ip, None)
        if old is None or login.ip in plan.added:
            plan.added[login.ip] = when
        else:
            plan.refreshed[login.ip] = when
    return plan


###############################################################################
# Policy: grants and revocations by hand (pure) ###############################
###############################################################################

@dataclasses.dataclass(frozen=True)
class ByHand:
    """One --grant or --revoke: when, until when (None: a revocation that
    lasts until the address's next login), and who ran it."""
    at: int
    until: int | None
    by: str


@dataclasses.dataclass
class Manual:
    """The grants and revocations in force, by address. An address is in at
    most one of the two: the later command replaces the earlier."""
    grants: dict[str, ByHand] = dataclasses.field(default_factory=dict)
    revokes: dict[str, ByHand] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.grants or self.revokes)


def revoke_holds(revoke: ByHand, now: float, grace: int) -> bool:
    """Whether a revocation still has work to do. With an end, until then.
    Without one, while a login from before it can still be inside the grace
    window: after that no such login can bring the address back, and any
    later login lifts it anyway."""
    return now < (revoke.until if revoke.until is not None else revoke.at + grace)


def live_manual(manual: Manual, now: float, grace: int) -> Manual:
    """The grants and revocations still in force (expired ones dropped)."""
    return Manual({ip: g for ip, g in manual.grants.items() if g.until is not None
                   and now < g.until},
                  {ip: r for ip, r in manual.revokes.items() if revoke_holds(r, now, grace)})


def revoked_login(login: Login, manual: Manual, now: float, grace: int) -> ByHand | None:
    """The revocation that keeps this login out of the map, if any: a
    revocation for a time keeps every login out until it ends; one without
    keeps out the logins made before it (the next real login lifts it)."""
    revoke = manual.revokes.get(login.ip)
    if revoke is None or not revoke_holds(revoke, now, grace):
        return None
    if revoke.until is not None or login.when <= revoke.at:
        return revoke
    return None


def apply_manual(plan: Plan, manual: Manual, now: float, grace: int) -> Plan:
    """The plan with the grants and revocations in force applied on top.

    A grant keeps its address in the map until it ends: its value is the end
    less the grace window, so that every reader of the map (Postfix's query,
    --list, memcached's TTL) sees it expire then, exactly like a login, and a
    login never shortens it (merge keeps the newest value). A revocation
    removes its address unless a login after it (a revocation without an
    end) put it back. Call with the logins that revoked_login keeps out
    already left out of the merge."""
    for ip, grant in manual.grants.items():
        if grant.until is None or now >= grant.until:
            continue
        value = grant.until - grace
        old = plan.entries.get(ip)
        if old is not None and old >= value:
            continue
        plan.entries[ip] = value
        plan.expired.pop(ip, None)
        if old is None or ip in plan.added:
            plan.added[ip] = value
        else:
            plan.refreshed[ip] = value
    for ip, revoke in manual.revokes.items():
        if not revoke_holds(revoke, now, grace) or ip not in plan.entries:
            continue
        value = plan.entries[ip]
        if revoke.until is None and value > revoke.at:
            continue
        del plan.entries[ip]
        was_new = plan.added.pop(ip, None) is not None
        plan.refreshed.pop(ip, None)
        if not was_new:
            plan.expired[ip] = value
    return plan


###############################################################################
# Policy: Postfix's restriction lists, is the map wired in? (pure) ############
###############################################################################

# Restrictions that refuse a relay recipient (Postfix's postconf(5), the
# smtpd_relay_restrictions entry): what must come after the map, never before.
RELAY_REFUSERS = ("reject_unauth_destination", "defer_unauth_destination", "reject", "defer",
                  "defer_if_permit")

# Restrictions besides check_*_access that take the next word as argument.
_TAKES_ARGUMENT = re.compile(r"check_(?!relay_domains$)\w+|reject_rbl_client|reject_rhsbl_\w+|"
                             r"permit_dnswl_client|permit_rhswl_client")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of --check-postfix: ok, a failure, or a warning (ok None)."""
    ok: bool | None
    text: str


def restriction_items(value: str) -> list[tuple[str, str | None]]:
    """A restriction list (as postconf -x prints it) as (restriction,
    argument) pairs: ``check_client_access hash:/m`` is one item."""
    tokens = [t for t in re.split(r"[\s,]+", value) if t]
    items, i = [], 0
    while i < len(tokens):
        if _TAKES_ARGUMENT.fullmatch(tokens[i]) and i + 1 < len(tokens):
            items.append((tokens[i], tokens[i + 1]))
            i += 2
        else:
            items.append((tokens[i], None))
            i += 1
    return items


def table_parts(table: str) -> tuple[str, str]:
    """A lookup table's type and name; ``proxy:`` (proxymap reads it for
    smtpd) is the same table."""
    if table.startswith("proxy:"):
        table = table[len("proxy:"):]
    kind, _, name = table.partition(":")
    return kind, name


def postfix_version(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:2]) or (0,)


def wiring_findings(version: tuple[int, ...], relay: str, recipient: str, map_type: str,
                    path: str | None) -> list[Finding]:
    """Whether smtpd consults the map MAP_TYPE:PATH (PATH None: any table of
    that type) for a relay recipient before anything refuses relay.

    Since Postfix 2.10 smtpd_relay_restrictions is evaluated first and decides
    relay; smtpd_recipient_restrictions is reached only when it lets the
    recipient through. A check placed only there is never asked for a
    client that smtpd_relay_restrictions already refused: the README's
    "454 4.7.1 Relay access denied" trap (defer_unauth_destination, in the
    default smtpd_relay_restrictions), or 554 with reject_unauth_destination.
    """
    wanted = f"{map_type}:{path}" if path else f"{map_type}:..."

    def ours(table: str | None) -> bool:
        if table is None:
            return False
        kind, name = table_parts(table)
        return kind == map_type and (path is None or os.path.normpath(name)
                                     == os.path.normpath(path))

    def near(table: str | None) -> bool:
        """Our file under another type, or our type with another file."""
        if table is None or path is None:
            return False
        kind, name = table_parts(table)
        return (kind == map_type) != (os.path.normpath(name) == os.path.normpath(path))

    lists = ([("smtpd_relay_restrictions", relay)] if version >= (2, 10) else [])
    lists.append(("smtpd_recipient_restrictions", recipient))
    parsed = {name: restriction_items(value) for name, value in lists}
    findings: list[Finding] = []
    for name, items in parsed.items():
        for r, table in items:
            if r == "check_client_access" and near(table):
                findings.append(Finding(False, f"{name} has check_client_access {table}, "
                                               f"but pbsmtp-batch writes {wanted}"))
    for index, (name, items) in enumerate(parsed.items()):
        at = next((i for i, (r, t) in enumerate(items)
                   if r == "check_client_access" and ours(t)), None)
        before = items if at is None else items[:at]
        refuser = next((r for r, _ in before if r in RELAY_REFUSERS), None)
        if at is not None:
            table = items[at][1]
            if refuser:
                findings.append(Finding(False, f"check_client_access {table} comes after "
                                               f"{refuser} in {name}: relay is refused "
                                               f"before the map is asked"))
            elif any(r == "permit" for r, _ in before):
                findings.append(Finding(False, f"{name} says permit before the map: every "
                                               f"client may relay (an open relay)"))
            else:
                after = next((r for r, _ in items[at + 1:] if r in RELAY_REFUSERS), None)
                findings.append(Finding(True, f"check_client_access {table} is in {name}"
                                              + (f", before {after}" if after else "")))
                if after is None and index == len(parsed) - 1:
                    findings.append(Finding(None, f"nothing after the map in {name} refuses "
                                                  f"relay (reject_unauth_destination)"))
            return findings
        if refuser:
            later = [n for n, its in parsed.items() if n != name and any(
                r == "check_client_access" and ours(t) for r, t in its)]
            trap = (f"; it is in {later[0]}, which smtpd never reaches for a relay "
                    f"recipient that {name} refused: clients get "
                    f"\"{'454 4.7.1' if refuser.startswith('defer') else '554 5.7.1'} "
                    f"Relay access denied\" (the README, \"Postfix\": move it to "
                    f"{name}, before {refuser})" if later else "")
            findings.append(Finding(False, f"check_client_access {wanted} is not in {name}, "
                                           f"which refuses relay with {refuser}{trap}"))
            return findings
    findings.append(Finding(False, f"check_client_access {wanted} is in none of "
                                   f"{', '.join(parsed)}"))
    return findings


def unreadable_reason(chain: Sequence[tuple[str, os.stat_result]], uid: int,
                      gids: Iterable[int], user: str) -> str | None:
    """Why USER cannot read the last path of CHAIN (the path's directories
    from / down, then the file, with their stat results), by the mode bits;
    None when it can. ACLs are not read."""
    gids = set(gids)

    def allowed(st: os.stat_result, bit: int) -> bool:
        if uid == 0:
            return True
        shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
        return bool(st.st_mode & (bit << shift))

    *dirs, (path, st) = chain
    for directory, dst in dirs:
        if not allowed(dst, 1):
            return (f"user {user} cannot enter directory {directory} (mode "
                    f"{stat.S_IMODE(dst.st_mode):04o}, owner {dst.st_uid}:{dst.st_gid})")
    if not allowed(st, 4):
        return (f"user {user} cannot read {path} (mode {stat.S_IMODE(st.st_mode):04o}, "
                f"owner {st.st_uid}:{st.st_gid})")
    return None


###############################################################################
# Files: written whole beside the old version, then renamed over it ###########
###############################################################################

# Every file pbsmtp-batch writes (the map, the other stores' files, the state
# files) is made complete under a temporary name in the same directory,
# fsynced, and renamed over the old one, so readers and a crash see the old
# version or the new one, never a torn one. There are two ways in, because
# the two kinds of file differ in when the rename may happen and in who may
# read them: replace_file() builds and renames in one step and keeps a
# published file's mode and owner (smtpd reads the map after dropping
# privileges); the run's state files, private to it, are staged
# (stage_file) before the map is published and committed (commit_file)
# only after it is in place, so that a crash in between re-reads lines
# instead of losing them. The metrics file (MetricsFile) is renamed into
# place too, without fsync: it is rewritten on every run. All of them name
# their temporary file the same way (temp_name), so one sweeper
# (remove_leftovers) clears what a killed run left.


# ".NAME.PID.NS.new", and what a build derives from it (".src", ".upd.db"...):
# the writer's PID tells a killed writer's file from a live one's.
_TEMP_NAME = re.compile(r"\.(?P<base>.+?)\.(?P<pid>\d+)\.\d+\.new(?:\..*)?", re.DOTALL)


def temp_name(path: str) -> str:
    """A fresh name in path's directory for the next version of path."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.{os.getpid()}.{time.monotonic_ns()}.new")


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_leftovers(directory: str, base: str | None = None) -> None:
    """Remove the temporary files (temp_name) of writers that were killed
    before their rename: those of the file base, or with no base, of every
    file in directory. A live writer's stay: its PID is in the name."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            m = _TEMP_NAME.fullmatch(name)
            if not m or base is not None and m["base"] != base or int(m["pid"]) == os.getpid():
                continue
            try:
                os.kill(int(m["pid"]), 0)
            except ProcessLookupError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
            except PermissionError:
                pass                # alive, under another user


def replace_file(target: str, build, label: str | None = None) -> list[str]:
    """Publish a new version of ``target`` atomically.

    ``build(tmp)`` must create the complete new file at ``tmp`` (a fresh name
    in the same directory); it is then fsynced, given the old file's mode and
    owner, renamed over ``target``, and the directory is fsynced. Returns
    warnings."""
    directory, base = os.path.split(os.path.abspath(target))
    warnings = []
    remove_leftovers(directory, base)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    tmp = temp_name(target)
    try:
        build(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, st.st_mode & 0o7777 if st else NEW_MAP_MODE)
        if st and (os.stat(tmp).st_uid, os.stat(tmp).st_gid) != (st.st_uid, st.st_gid):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                warnings.append(f"cannot keep owner {st.st_uid}:{st.st_gid} of {target}")
        commit_file(tmp, target)
    except OSError as e:
        raise PbsmtpError(f"cannot write {label or target}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return warnings


def stage_file(path: str, text: str) -> str:
    """Write text to a new private file (temp_name, mode 0600) beside path,
    fsynced; returns its name, for commit_file.

    The run stages its state before it publishes the map, so that a full or
    failing state file system stops the run while nothing has changed; the
    staged files are then renamed into place (commit_file).
    """
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def commit_file(tmp: str, path: str) -> None:
    """Rename a complete, fsynced tmp over path, and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def write_atomically(path: str, text: str) -> None:
    commit_file(stage_file(path, text), path)


def check_private(path: str, st: os.stat_result, what: str) -> None:
    """Refuse a state directory or file that someone else could have
    written: it must belong to the user running pbsmtp-batch and be neither
    group- nor world-writable (OpenSSH's StrictModes, ``postfix check``)."""
    if st.st_uid != os.geteuid():
        raise PbsmtpError(f"{what} {path} belongs to uid {st.st_uid}, not to the user "
                          f"running pbsmtp-batch (uid {os.geteuid()}): not trusted")
    if st.st_mode & 0o022:
        raise PbsmtpError(f"{what} {path} is group- or world-writable "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}): not trusted; "
                          f"chmod go-w it")


def open_state_file(path: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int | None:
    """Open a file of the state directory without following a symbolic link
    and check that it is a regular file of ours; None when it is absent
    (and not created)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        return None
    except OSError as e:
        if os.path.islink(path):
            raise PbsmtpError(f"state file {path} is a symbolic link: not trusted") from None
        raise PbsmtpError(f"cannot open state file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PbsmtpError(f"state file {path} is not a regular file: not trusted")
        check_private(path, st, "state file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_state_file(path: str) -> str | None:
    """A state file's text (see open_state_file); None when it is absent."""
    fd = open_state_file(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read().decode("utf-8", "replace")


###############################################################################
# Tools: Postfix's programs ###################################################
###############################################################################

def find_tool(name: str, package: str = "postfix", extra_dirs: Sequence[str] = ()) -> str:
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN_DIRS, *extra_dirs])
    found = shutil.which(name, path=path)
    if not found:
        raise PbsmtpError(f"{name} not found in PATH or {', '.join(SBIN_DIRS)}: "
                          f"install the Debian package '{package}'")
    return found


def postfix_cmd(tool: str, config_dir: str | None, *args: str) -> list[str]:
    return [find_tool(tool), *(["-c", config_dir] if config_dir else []), *args]


def run_tool(cmd: list[str], what: str, input: str | None = None) -> str:
    try:
        done = subprocess.run(cmd, input=input, capture_output=True, text=True, errors="replace")
    except OSError as e:
        raise PbsmtpError(f"cannot run {cmd[0]}: {e.strerror}") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise PbsmtpError(f"{what} failed: {detail}")
    return done.stdout


def postconf(name: str, config_dir: str | None) -> str:
    """A Postfix parameter, with $name references expanded (postconf -x)."""
    return run_tool(postfix_cmd("postconf", config_dir, "-xh", name),
                    f"postconf {name}").strip()


def check_dir(path: str, what: str = "directory") -> None:
    """Fail early when the directory that will hold path cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise PbsmtpError(f"{what} {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PbsmtpError(f"cannot write {what} {directory}")


###############################################################################
# Stores: the interface and the registry; the Postfix map #####################
###############################################################################

class Store(Protocol):
    """Where the entries live. The batch logic knows only this interface.

    needs_postfix  whether this host's Postfix is the store's reader, so that
                   a run fails when postconf cannot tell mynetworks (a dry
                   run only warns); for the others a host may have no
                   Postfix at all, and mynetworks is left out if it is known;
    from_options() the store that the command line and the config name;
    read()     every entry as {address: value}, values as stored (text);
    publish()  apply a Plan (its adds, refreshes and expiries, or simply its
               complete ``entries``) so that readers see all of it or none;
    exists()   whether there is anything yet (a missing Postfix map makes
               smtpd answer 451, so the first run must create it);
    check()    raise PbsmtpError early when publishing cannot work;
    stamp()    for the map cache (see save_map_cache): what identifies the current
               version of the file ``path`` that holds the entries; None
               when there is none, and then every run reads the store (a
               store that other hosts write must always be read);
    updates_by_key()  whether a run may publish only the changed keys of a
               plan that holds no more (merge_update): the store's reader
               sees the old entries until they change;
    rebuildable    whether its entries come from this host's logs alone, so
               that --reprocess may rebuild it when read() cannot read it;
    set_aside()  for such a store: copy the unreadable file aside, and say
               where (raises OSError).
    """
    needs_postfix: ClassVar[bool]
    rebuildable: ClassVar[bool]

    @classmethod
    def from_options(cls, opts: Options) -> Store: ...
    def read(self) -> dict[str, str]: ...
    def publish(self, plan: Plan) -> list[str]: ...
    def exists(self) -> bool: ...
    def check(self) -> None: ...
    def stamp(self) -> list[int] | None: ...
    def updates_by_key(self) -> bool: ...
    def set_aside(self) -> str: ...


# Every --backend NAME, in the order --help lists them, with what it writes.
# The Postfix map's class is below; the others live in the companion module
# STORES_MODULE, imported on first use, so a run with the Postfix map never
# loads them.
BACKEND_NAMES = {
    "postfix": "a postmap-built file map",
    "sendmail": "access db",
    "qmail": "tcp.smtp rules",
    "exim": "iplsearch list",
    "pgsql": "a shared PostgreSQL table",
    "mysql": "a shared MariaDB/MySQL table",
    "sqlite": "--dbfile is the SQLite file",
    "memcache": "memcached keys with a TTL",
}
STORES_MODULE = "pbsmtp_stores"

# --backend NAME -> its Store class, filled by @backend beside each class.
BACKENDS: dict[str, type[Store]] = {}


def backend(name: str):
    """Class decorator: register a Store class as ``--backend NAME``."""
    def register(cls):
        assert name in BACKEND_NAMES, name
        BACKENDS[name] = cls
        return cls
    return register


def store_class(name: str) -> type[Store]:
    """The Store class of a --backend name, importing STORES_MODULE if it
    holds it."""
    if name not in BACKENDS and name in BACKEND_NAMES:
        # Run as a script this module is __main__: the companion's
        # "import pbsmtp_batch" must find it, not load a second copy.
        sys.modules.setdefault("pbsmtp_batch", sys.modules[__name__])
        try:
            importlib.import_module(STORES_MODULE)
        except ModuleNotFoundError as e:
            if e.name != STORES_MODULE:
                raise
            raise PbsmtpError(f"--backend {name} needs the module {STORES_MODULE}.py, which is "
                              f"not installed beside {__file__}") from None
    if name not in BACKENDS:
        raise PbsmtpError(f"--backend {name!r} is not supported "
                          f"(use one of {', '.join(BACKEND_NAMES)})")
    return BACKENDS[name]


def open_store(opts: Options) -> Store:
    return store_class(opts.backend).from_options(opts)


def default_map_type(config_dir: str | None) -> str:
    try:
        return postconf("default_database_type", config_dir) or "hash"
    except PbsmtpError:
        return "hash"


def map_file(dbfile: str, map_type: str) -> str:
    return dbfile + MAP_SUFFIXES[map_type]


def read_cdb(path: str) -> dict[str, str]:
    """Every record of a cdb file (postmap -s cannot list cdb in Postfix 3.7).

    Layout (cr.yp.to/cdb/cdb.txt): 256 (position, length) pairs, then the
    records as klen, dlen, key, data, then the hash tables, which start at the
    lowest position in the header.
    """
    data = Path(path).read_bytes()
    header = struct.unpack_from("<512I", data)
    end, pos, entries = min(header[0::2]), 2048, {}
    while pos < end:
        klen, dlen = struct.unpack_from("<II", data, pos)
        key = data[pos + 8:pos + 8 + klen].rstrip(b"\0")
        value = data[pos + 8 + klen:pos + 8 + klen + dlen].rstrip(b"\0")
        entries[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += 8 + klen + dlen
    return entries


def read_map(dbfile: str, map_type: str, config_dir: str | None) -> dict[str, str]:
    """The map's entries; an absent map is empty."""
    path = map_file(dbfile, map_type)
    if not os.path.exists(path):
        return {}
    if map_type == "cdb":
        try:
            return read_cdb(path)
        except (OSError, struct.error) as e:
            raise PbsmtpError(f"cannot read map {path}: {e}") from None
    out = run_tool(postfix_cmd("postmap", config_dir, "-s", f"{map_type}:{dbfile}"),
                   f"reading map {path} (postmap -s)")
    entries = {}
    for line in out.splitlines():
        key, _, value = line.partition("\t") if "\t" in line else line.partition(" ")
        entries[key] = value.strip()
    return entries


def write_map(dbfile: str, map_type: str, entries: dict[str, int],
              config_dir: str | None) -> list[str]:
    """Publish a complete new map atomically. Returns warnings.

    postmap builds the new file beside the old one, so that the format, the
    NUL convention and the database version are exactly what the local
    Postfix reads; rename() then swaps it in. A reader sees the old map or
    the new one, never a torn one, and smtpd notices the replaced file
    (st_nlink == 0) and restarts without a reload. No text source is left
    beside the map: Postfix would warn that the map is older than it.
    """
    target, suffix = map_file(dbfile, map_type), MAP_SUFFIXES[map_type]

    def build(tmp: str) -> None:
        source = tmp + ".src"
        try:
            with open(source, "x") as f:
                f.writelines(f"{ip} {when}\n" for ip, when in sorted(entries.items()))
            run_tool(postfix_cmd("postmap", config_dir, f"{map_type}:{source}"),
                     f"building map {target} (postmap)")
            os.replace(source + suffix, tmp)
        finally:
            for leftover in (source, source + suffix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    return replace_file(target, build, label=f"map {target}")


def update_map(dbfile: str, map_type: str, upserts: dict[str, int], deletes: Iterable[str],
               config_dir: str | None) -> list[str]:
    """Publish the map with these entries added or replaced and these keys
    removed, without rebuilding what did not change. Returns warnings.

    A copy of the map is updated in place by postmap (-i -r: add, replace
    existing keys; -d -: remove), then published exactly as write_map
    publishes a new build (fsync, rename): readers see the old map or the
    whole new one. The result is exactly the old map's entries with these
    changes, so the caller must hold the map's entries as they are on disk.
    cdb has no in-place update: use write_map.
    """
    target, suffix = map_file(dbfile, map_type), MAP_SUFFIXES[map_type]
    deletes = sorted(deletes)

    def build(tmp: str) -> None:
        base = tmp + ".upd"
        try:
            shutil.copyfile(target, base + suffix)
            if upserts:
                run_tool(postfix_cmd("postmap", config_dir, "-i", "-r", f"{map_type}:{base}"),
                         f"updating map {target} (postmap -i)",
                         input="".join(f"{ip} {when}\n" for ip, when in sorted(upserts.items())))
            if deletes:
                # Exit 1 with nothing on stderr: none of the keys was there.
                cmd = postfix_cmd("postmap", config_dir, "-d", "-", f"{map_type}:{base}")
                done = subprocess.run(cmd, input="".join(k + "\n" for k in deletes),
                                      capture_output=True, text=True, errors="replace")
                if done.returncode not in (0, 1) or done.stderr.strip():
                    detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                    raise PbsmtpError(f"updating map {target} (postmap -d) failed: {detail}")
            os.replace(base + suffix, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base + suffix)

    return replace_file(target, build, label=f"map {target}")


def query_map(dbfile: str, map_type: str, keys: Iterable[str],
              config_dir: str | None) -> dict[str, str]:
    """The values these keys have in the map (absent keys left out): one
    postmap -q - for all of them, which reads only their buckets."""
    keys = sorted(keys)
    if not keys:
        return {}
    target = map_file(dbfile, map_type)
    cmd = postfix_cmd("postmap", config_dir, "-q", "-", f"{map_type}:{dbfile}")
    try:
        done = subprocess.run(cmd, input="".join(k + "\n" for k in keys),
                              capture_output=True, text=True, errors="replace")
    except OSError as e:
        raise PbsmtpError(f"cannot run {cmd[0]}: {e.strerror}") from None
    # Exit 1 with nothing on stderr: none of the keys is there.
    if done.returncode not in (0, 1) or done.stderr.strip():
        detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise PbsmtpError(f"looking up keys in map {target} (postmap -q) failed: {detail}")
    found = {}
    for row in done.stdout.splitlines():
        key, _, value = row.partition("\t")
        found[key] = value
    return found


@backend("postfix")
@dataclasses.dataclass(frozen=True)
class PostfixMap:
    """A Postfix file map (hash, btree, lmdb, cdb), always built by postmap."""
    dbfile: str
    map_type: str
    config_dir: str | None = None
    needs_postfix: ClassVar[bool] = True
    rebuildable: ClassVar[bool] = True

    @classmethod
    def from_options(cls, opts: Options) -> PostfixMap:
        map_type = opts.map_type or default_map_type(opts.postfix_config)
        if map_type not in MAP_SUFFIXES:
            raise PbsmtpError(f"map type {map_type!r} is not supported "
                              f"(use one of {', '.join(MAP_SUFFIXES)})")
        return cls(opts.dbfile, map_type, opts.postfix_config)

    @property
    def path(self) -> str:
        return map_file(self.dbfile, self.map_type)

    def read(self) -> dict[str, str]:
        return read_map(self.dbfile, self.map_type, self.config_dir)

    def publish(self, plan: Plan) -> list[str]:
        """An update of a copy when the plan says exactly what changed
        (its entries were read from this map, or it holds only the changes:
        plan.active, see merge_update) and the type can be updated in place;
        else a complete build."""
        changes = len(plan.added) + len(plan.refreshed) + len(plan.expired)
        if plan.active is not None or (
                plan.base_is_map and not plan.invalid and self.map_type != "cdb"
                and self.exists() and changes <= max(100, len(plan.entries) // 4)):
            return update_map(self.dbfile, self.map_type, {**plan.added, **plan.refreshed},
                              plan.expired, self.config_dir)
        return write_map(self.dbfile, self.map_type, plan.entries, self.config_dir)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def check(self) -> None:
        check_dir(self.dbfile, "map directory")

    def stamp(self) -> list[int] | None:
        """The map file is replaced by rename, so its inode changes on every
        write."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return [st.st_ino, st.st_size, st.st_mtime_ns]

    def updates_by_key(self) -> bool:
        """postmap -i and -d update a copy (cdb has no update)."""
        return self.map_type != "cdb" and self.exists()

    def set_aside(self) -> str:
        aside = f"{self.path}.unreadable-{int(time.time())}"
        try:
            shutil.copy2(self.path, aside)
        except OSError as e:
            e.filename = aside
            raise
        return aside


###############################################################################
# Sources: the interface; a log, its rotations, its blocks ####################
###############################################################################

class Source(Protocol):
    """Where log lines come from: the log file (FileSource) or the journal.

    Iterating yields candidate lines, latin-1 text without the newline, in
    log order (lines that cannot be a login may be left out); ``lines_read``
    counts every line read; state() is what to commit once the map holding
    their logins is durable.
    """
    lines_read: int

    def __iter__(self) -> Iterator[str]: ...
    def state(self) -> object: ...


# logrotate's compress (and compresscmd) suffixes that Python reads itself.
DECOMPRESS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

# The compresscmd suffixes Python has no reader for (Debian 12 and 13 ship
# Python 3.11 and 3.13: no compression.zstd): the Debian program that
# decompresses them to standard output, and its package.
DECOMPRESS_TOOLS = {".zst": ("zstd", "zstd"), ".lz4": ("lz4", "lz4"), ".Z": ("gzip", "gzip")}
COMPRESSED = (*DECOMPRESS, *DECOMPRESS_TOOLS)


def default_logfile() -> str:
    for candidate in DEFAULT_LOGFILES:
        if os.path.exists(candidate):
            return candidate
    return DEFAULT_LOGFILES[0]


def is_compressed(path: str) -> bool:
    return os.path.splitext(path)[1] in COMPRESSED


def fingerprint(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()


# What logrotate(8) and savelog(8) append to a log's name: a number
# (rotate, savelog's .0), or with dateext the dateformat (any of %Y %m %d
# %H %M %S %V %s, that is digits, after "-", "_" or "."); then the
# extension, when logrotate's "extension" option moves it to the end
# (mail.log -> mail.1.log); then compressext. A number has at most five
# digits, so that dateformat .%Y%m%d is a date, not rotation 20261124.
_ROTATED = (r"(?:\.(?P<n>\d{1,5})|[._-](?P<date>\d[\d._-]*\d|\d))(?P<ext>%s)"
            r"(?P<z>%s)?")


def rotated_names(base: str, names: Iterable[str]) -> list[tuple[tuple, bool, str]]:
    """The names among ``names`` that are rotated copies of the log named
    base, each with its age key (smaller is older) and whether it is plain."""
    z = "|".join(re.escape(suffix) for suffix in COMPRESSED)
    stem, ext = os.path.splitext(base)
    patterns = [re.compile(re.escape(base) + _ROTATED % ("", z))]
    if ext:
        patterns.append(re.compile(re.escape(stem) + _ROTATED % (re.escape(ext), z)))
    found = []
    for name in names:
        m = next((m for p in patterns if (m := p.fullmatch(name))), None)
        if m:
            # Dates compare by their digits: dateformat's fields run from the
            # year down, whatever separates them.
            key = ((0, -int(m["n"]), "") if m["n"]
                   else (1, 0, re.sub(r"\D", "", m["date"])))
            found.append((key, not m["z"], name))
    return found


def rotated_logs(logfile: str, rotated_dirs: Sequence[str] = ()) -> list[str]:
    """The rotated copies of a log, oldest first, beside it and in
    ``rotated_dirs`` (logrotate's olddir; a relative one is relative to the
    log's directory, as in logrotate).

    logrotate(8) numbers them (mail.log.1, mail.log.2.gz: a higher number is
    older) or, with dateext, dates them (mail.log-20261124[-1795563000][.gz]:
    the date's digits sort by age); savelog(8) starts at .0; numbered files
    are older than dated ones (dateext is switched on, not off). Modification
    times are no guide: compression gives a file a new one. Of two files of
    the same age, the compressed one comes first: while logrotate compresses
    mail.log.1, the half-written mail.log.1.gz and the complete mail.log.1
    both exist, and a search from the newest end finds the complete one.
    """
    directory, base = os.path.split(os.path.abspath(logfile))
    found = []
    for where in dict.fromkeys([directory, *(os.path.join(directory, d) for d in rotated_dirs)]):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        found += [(key, plain, os.path.join(where, name))
                  for key, plain, name in rotated_names(base, names)]
    return [path for *_, path in sorted(found)]


@dataclasses.dataclass
class ReadStats:
    """What a read skipped, for the run's one warning."""
    long_lines: int = 0


def complete_blocks(f: BinaryIO, pos: int, finished: bool, stats: ReadStats
                    ) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines from f (positioned at byte pos), each ending
    with a newline, and the position just after each block.

    An unfinished last line of a file that may still grow (not ``finished``)
    is left for the next run: the position stays at its start. A line longer
    than MAX_LINE_BYTES is dropped as it is read (counted in stats), so the
    carry never exceeds it and each byte is looked at a bounded number of
    times: linear time, flat memory.
    """
    rest, skipping = b"", 0          # skipping: bytes of an over-long line seen so far
    while block := f.read(BLOCK_BYTES):
        if skipping:
            nl = block.find(b"\n")
            if nl < 0:
                skipping += len(block)
                continue
            pos += skipping + nl + 1
            stats.long_lines += 1
            skipping, block = 0, block[nl + 1:]
        else:
            block = rest + block
        cut = block.rfind(b"\n") + 1
        rest = block[cut:]
        if cut:
            pos += cut
            yield block[:cut], pos
        if len(rest) > MAX_LINE_BYTES:
            skipping, rest = len(rest), b""
    if finished:
        if skipping:
            stats.long_lines += 1
            yield b"", pos + skipping
        elif rest:
            yield rest + b"\n", pos + len(rest)


def read_span(path: str, start: int, marks: list[Offset]) -> Iterator[str]:
    """Every line of one file from a byte offset, through the same reader as
    a run; where reading stopped is appended to ``marks``."""
    log = survey_file(path)
    if log.problem or log.error:
        raise survey_error(log)
    source = FileSource.from_spans([Span(path, Start.OFFSET, start)], {path: log})
    yield from source
    marks.append(source.marks[-1])


def candidate_lines(block: bytes, anchors: Sequence[bytes]) -> list[bytes]:
    """The lines of a block that contain one of the (lowercase) anchors,
    in any case.

    bytes.find runs at memchr speed, so a few passes over a 1 MiB block cost
    far less than looking at its ~7000 lines one by one; only the few
    candidates are decoded and matched. Searching a lowercased copy (one
    fast pass; ASCII-only, so positions are unchanged) lets a few short
    stems stand in for every pattern's literals: each pass costs the same
    whatever it looks for, so fewer passes is what counts.
    """
    haystack, starts = block.lower(), set()
    for anchor in anchors:
        i = haystack.find(anchor)
        while i != -1:
            starts.add(haystack.rfind(b"\n", 0, i) + 1)
            i = haystack.find(anchor, haystack.find(b"\n", i))
    return [block[s:block.find(b"\n", s)] for s in sorted(starts)]


# The pre-filter of a plain file's span is GNU grep (Debian: essential
# package grep) when it can run: one Aho-Corasick pass over the bytes for
# every anchor at once, on the other CPU, where Python needs one pass per
# anchor. -i in the C locale folds ASCII only, as bytes.lower() does, so it
# selects the same lines as candidate_lines. grep's memory grows with its
# longest line: past this limit it stops, and Python reads on.
GREP_MEMORY = 256 << 20


@functools.cache
def grep_program() -> str | None:
    """GNU grep, or None (then the Python pre-filter does its work)."""
    return shutil.which("grep")


class SpanReader:
    """A plain file's bytes from pos up to a fixed end, by pread: lines
    appended after the end are the next run's, and the file's own offset is
    left to the grep that reads the same open file."""

    def __init__(self, fd: int, pos: int, end: int):
        self.fd, self.pos, self.end = fd, pos, end

    def read(self, n: int) -> bytes:
        n = min(n, self.end - self.pos)
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data


class GrepLines:
    """The lines of a plain file that ``grep -i -F`` finds holding one of the
    anchors, from the file's current offset on (``base``), handed out block
    by block (lines_in) in the blocks the caller read itself.

    grep only narrows: a line is taken from the caller's own block, at an
    offset grep printed. Where grep cannot vouch for a block (it failed,
    stopped short of the block's end, or printed an offset that is no line
    start in it), lines_in returns None and the caller's Python pre-filter
    reads that block. Closing kills and waits for grep: no zombie.
    """

    def __init__(self, grep: str, fd: int, base: int, anchors: Sequence[bytes]):
        args: list[str | bytes] = [grep, "-a", "-b", "-i", "-F", "--color=never"]
        for anchor in anchors:
            args += ["-e", anchor]
        self.base, self._pending, self._covered, self._last = base, None, None, -1
        os.lseek(fd, base, os.SEEK_SET)
        self._fd = fd
        self._proc = subprocess.Popen(args, stdin=fd, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, env={"LC_ALL": "C"},
                                      close_fds=True)
        try:
            import resource                 # noqa: PLC0415
            resource.prlimit(self._proc.pid, resource.RLIMIT_AS, (GREP_MEMORY, GREP_MEMORY))
        except (OSError, ValueError):
            pass

    def _next(self) -> int | None:
        """The next offset grep printed; None at the end of its output, -1
        for output that is not grep's "OFFSET:LINE" with offsets rising (a
        grep cut short mid-line, or another grep): none of it is trusted."""
        out = self._proc.stdout
        line = out.readline(MAX_LINE_BYTES)
        if not line:
            return None
        if not line.endswith(b"\n"):
            # A long line: its offset is in the first bytes; the rest is skipped.
            rest = line
            while rest and not rest.endswith(b"\n"):
                rest = out.readline(MAX_LINE_BYTES)
            if not rest:
                return -1
        offset, colon, _ = line.partition(b":")
        if not colon or not offset.isdigit() or int(offset) <= self._last:
            return -1
        self._last = int(offset)
        return self._last

    def _finish(self) -> None:
        status = self._proc.wait()
        # How far grep read: the open file's offset, which it shares.
        end = os.lseek(self._fd, 0, os.SEEK_CUR) - self.base
        self._covered = end if status in (0, 1) else -1

    def lines_in(self, block: bytes, start: int) -> list[bytes] | None:
        """The candidate lines of block, which starts at byte start of the
        file; None when grep cannot vouch for all of them."""
        first, end = start - self.base, start - self.base + len(block)
        starts: list[int] = []
        while self._covered is None:
            offset = self._pending if self._pending is not None else self._next()
            self._pending = None
            if offset is None:
                self._finish()
            elif offset < 0:
                self._covered = -1
            elif offset >= end:
                self._pending = offset      # grep has read past this block
                return [block[s:block.find(b"\n", s)] for s in starts]
            elif offset >= first:           # (before: in a line skipped as over-long)
                s = offset - first
                if s and block[s - 1] != 10:
                    self._covered = -1      # no line start: the file changed under us
                    return None
                starts.append(s)
        if self._covered < end:
            return None
        return [block[s:block.find(b"\n", s)] for s in starts]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._proc.stdout.close()

    def __enter__(self) -> "GrepLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def grep_lines(fd: int, base: int, anchors: Sequence[bytes]) -> GrepLines | None:
    """grep as the pre-filter of a plain file from base, or None when it
    cannot run (then Python's is used)."""
    grep = grep_program()
    if grep is None or not anchors:
        return None
    try:
        return GrepLines(grep, fd, base, anchors)
    except OSError:
        return None


# Stems that most login literals share. A literal that contains one is
# searched for by the stem; match_login then checks the literal itself.
ANCHOR_STEMS = (b"login", b"logged in", b"auth", b"proxying")


def _required_literals(items) -> tuple[str, ...] | None:
    """Strings one of which every match of a parsed regex (re._parser's
    form) contains, the longest such set found; None if none is sure."""
    from re import _constants as c          # noqa: PLC0415
    best: tuple[str, ...] | None = None

    def better(found):
        nonlocal best
        if found and (best is None or min(map(len, found)) > min(map(len, best))):
            best = found

    run = ""
    for op, arg in list(items) + [(None, None)]:
        if op is c.LITERAL:
            run += chr(arg)
            continue
        better((run,) if run else None)
        run = ""
        if op is c.SUBPATTERN:
            better(_required_literals(arg[-1]))
        elif op is c.BRANCH:
            alternatives = [_required_literals(a) for a in arg[1]]
            if all(alternatives):
                better(tuple(sorted({s for a in alternatives for s in a})))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and arg[0] >= 1:
            better(_required_literals(arg[2]))
    return best


# Programs that parse_prefix names by a log's own layout, whose lines do
# not carry the name as text (nginx's error_log, Qpopper's trace file).
LAYOUT_PROGRAMS = ("nginx", "qpopper-trace")


def tag_literals(program: re.Pattern[str]) -> tuple[str, ...] | None:
    """Literals one of which every line whose tag the program regex accepts
    contains (e.g. ('popa3d',) for 'popa3d'), or None when there are none."""
    if any(program.fullmatch(name) for name in LAYOUT_PROGRAMS):
        return None
    # re's own parser (CPython 3.11+); should it move or change, patterns
    # are still found, by their literal instead of their tag.
    try:
        from re import _parser              # noqa: PLC0415
        found = _required_literals(_parser.parse(program.pattern, program.flags))
    except Exception:
        return None
    return found if found and min(map(len, found)) >= 4 else None


def pattern_anchors(patterns: Sequence[Pattern]) -> tuple[bytes, ...]:
    """Lowercase search anchors that together find every line that holds one
    of the patterns' pre-filter literals on a tag the pattern reads.

    A literal that holds a login stem is found by the stem. One that does
    not ("connect from ", the address line of two-line servers) is common
    in a mail log, in Postfix's own lines: it is found by the pattern's tag
    instead, which every line the pattern can read carries, so the tag is
    decided before any login word is looked at.
    """
    words = set()
    for p in patterns:
        tags = None
        for literal in (k.lower().encode() for k in p.contains):
            stem = next((s for s in ANCHOR_STEMS if s in literal), None)
            if stem is None:
                tags = tags or tag_literals(p.program)
            words.update([stem] if stem else
                         [t.lower().encode() for t in tags] if tags else [literal])
        # Every line of a two-line server's session must reach match_login.
        words.update(t.lower().encode() for t in session_tags(p))
        # The lines that end a session must reach match_logout.
        words.update(k.lower().encode() for k in (p.logout.contains if p.logout else ()))
    kept: list[bytes] = []
    for word in sorted(words, key=len):
        if not any(k in word for k in kept):
            kept.append(word)
    return tuple(kept)


def window_start(f: BinaryIO, target: float, now: float) -> int:
    """Where to start reading a plain log to see every line stamped at or
    after target: a binary search over byte offsets, by the lines' own times.

    Logs are in time order give or take a little, which the caller's margin
    covers. Where a probe finds no time it can read, the search stops, so the
    start is never later than the times show. Each probe reads a bounded
    amount, whatever the bytes. The file is left at 0.
    """
    lo, hi = 0, os.fstat(f.fileno()).st_size
    while hi - lo > 1 << 20:
        mid = (lo + hi) // 2
        f.seek(mid)
        when = None
        for raw in f.read(1 << 16).split(b"\n")[1:-1]:     # whole lines after mid
            prefix = parse_prefix(raw[:MAX_LINE_BYTES].decode("latin-1"), now)
            if prefix is not None and prefix.when is not None:
                when = prefix.when
                break
        if when is None:
            break
        lo, hi = (mid, hi) if when < target else (lo, mid)
    start = 0
    if lo:
        # The line around lo is older than target too: start after it, or
        # at lo when no newline follows soon (then the reader skips it).
        f.seek(lo)
        chunk = f.read(MAX_LINE_BYTES + 1)
        nl = chunk.find(b"\n")
        start = lo + nl + 1 if nl >= 0 else lo
    f.seek(0)
    return start


###############################################################################
# Sources: the file source: survey, plan the spans (pure), read them ##########
###############################################################################

class Start(enum.Enum):
    """Where a span's reading begins."""
    OFFSET = "offset"      # at Span.offset, a byte position known from the saved state
    WINDOW = "window"      # where the grace window begins (a compressed file: at 0)


@dataclasses.dataclass(frozen=True)
class Span:
    """One file to read, from where."""
    path: str
    start: Start
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class LogFile:
    """A file named like the log, as found before any span is planned."""
    path: str
    inode: int = 0
    size: int = 0
    mtime: float = 0.0
    compressed: bool = False
    head: bytes | None = None      # the first FINGERPRINT_BYTES; None: cannot be read
    error: OSError | None = dataclasses.field(default=None, compare=False)
    problem: str | None = None     # why it is no log at all (then it is left out)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str) -> BinaryIO:
    """Open a file for reading only if it is a regular file.

    O_NONBLOCK: opening a FIFO must not wait for a writer (it would hang the
    run while it holds the lock); the type is then checked on the open file,
    so a rename in between cannot swap in something else.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{_kind(mode)}, not a log", path)
        os.set_blocking(fd, True)
        # Unbuffered: a buffer filled while surveying would later hand out
        # bytes that a copytruncate has since removed from the file.
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


class DecompressError(ValueError):
    """A compressed file that its decompressing program rejected."""


def decompressor(path: str) -> tuple[str | None, str | None]:
    """The program that decompresses the file at path, or why there is none."""
    tool = DECOMPRESS_TOOLS.get(os.path.splitext(path)[1])
    if tool is None:
        return None, None
    found = shutil.which(tool[0])
    if found is None:
        return None, f"cannot be decompressed: {tool[0]} is not installed (Debian package {tool[1]})"
    return found, None


class ToolReader(io.RawIOBase):
    """The output of ``program -dc`` reading the raw file on its standard
    input: a stream, so memory stays flat and nothing is written to disk.
    seek() goes forward only, by reading; closing stops the program."""

    def __init__(self, raw: BinaryIO, program: str, path: str):
        self._path, self._pos = path, 0
        raw.seek(0)
        # -q: no progress or notices on stderr, which is read only at the end.
        self._proc = subprocess.Popen([program, "-d", "-c", "-q"], stdin=raw.fileno(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      close_fds=True)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._proc.stdout.readinto(buffer)
        if n == 0:
            err = self._proc.stderr.read(4096).decode("utf-8", "replace").strip()
            if self._proc.wait() != 0:
                program = os.path.basename(self._proc.args[0])
                raise DecompressError(f"{program}: {err.splitlines()[-1]}" if err
                                      else f"{program} failed")
        self._pos += n or 0
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self._pos:
            raise io.UnsupportedOperation("forward seeks only")
        while self._pos < pos and self.read(min(pos - self._pos, 1 << 16)):
            pass
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed and self._proc.poll() is None:
            self._proc.kill()
        if not self.closed:
            self._proc.wait()
            self._proc.stdout.close()
            self._proc.stderr.close()
        super().close()


def decompressing(raw: BinaryIO, path: str) -> BinaryIO:
    """A reader of the file's content: raw, or decompressed by its suffix.
    The raw file stays open when the reader is closed."""
    opener = DECOMPRESS.get(os.path.splitext(path)[1])
    if opener:
        return opener(raw)
    program, _ = decompressor(path)
    return io.BufferedReader(ToolReader(raw, program, path)) if program else raw


DECOMPRESS_ERRORS = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, ValueError)


def survey_file(path: str, handles: dict[str, BinaryIO] | None = None) -> LogFile:
    """What the file at path is. Its open handle goes into ``handles``, so
    that the spans read later are the files surveyed now even if they are
    renamed in between."""
    compressed = is_compressed(path)
    try:
        st = os.stat(path)
    except OSError as e:
        return LogFile(path, error=e, problem=e.strerror)
    if (missing := decompressor(path)[1]) is not None:
        return LogFile(path, st.st_ino, problem=missing)
    if not stat.S_ISREG(st.st_mode):
        return LogFile(path, st.st_ino, problem=f"{_kind(st.st_mode)}, not a log")
    try:
        raw = open_regular(path)
    except OSError as e:
        # Unreadable (permissions): kept, to be matched by inode; reading it
        # later says why it cannot.
        return LogFile(path, st.st_ino, st.st_size, st.st_mtime, compressed, None, e,
                       None if e.errno in (errno.EACCES, errno.EPERM) else e.strerror)
    try:
        f = decompressing(raw, path)
        try:
            head = f.read(FINGERPRINT_BYTES)
        finally:
            if f is not raw:
                f.close()
        raw.seek(0)
    except DECOMPRESS_ERRORS as e:
        raw.close()
        return LogFile(path, st.st_ino, problem=f"cannot be decompressed ({e or type(e).__name__})")
    except OSError as e:
        raw.close()
        return LogFile(path, st.st_ino, error=e, problem=e.strerror)
    if handles is None:
        raw.close()
    else:
        handles[path] = raw
    st = os.fstat(raw.fileno()) if handles is not None else st
    return LogFile(path, st.st_ino, st.st_size, st.st_mtime, compressed, head)


def survey_error(log: LogFile) -> OSError:
    return log.error or OSError(errno.EINVAL, log.problem, log.path)


def is_same_log(log: LogFile, mark: Offset) -> bool:
    """Whether this file, perhaps renamed, compressed or copied, is the one
    read up to mark. ext4 hands a freed inode number to the next new file at
    once, so after two rotations a newer log can carry the old file's
    number: a plain file's number counts only with a matching head (a mark
    without a fingerprint, from pygtail's format, has only the number). An
    unreadable file with the number counts as the same: reading it then
    says why it cannot."""
    same_head = (mark.length > 0 and log.head is not None and len(log.head) >= mark.length
                 and fingerprint(log.head[:mark.length]) == mark.fingerprint)
    if not log.compressed and log.inode == mark.inode:
        return not mark.length or log.head is None or same_head
    return same_head


def recent_logs(rotated: Sequence[LogFile], cutoff: float) -> list[LogFile]:
    """The rotated logs that may hold lines newer than cutoff, oldest first.

    A file's mtime is never earlier than its newest line, so going back from
    the newest, the first file last changed before the cutoff ends the search.
    """
    keep = []
    for log in reversed(rotated):
        if log.mtime < cutoff:
            break
        keep.append(log)
    return keep[::-1]


def plan_spans(saved: LogState | None, log: LogFile, rotated: Sequence[LogFile],
               cutoff: float) -> tuple[list[Span], str | None]:
    """What to read, in order, to see every line written since the saved
    state, however the log was rotated in between; and a warning, if lines
    may have been lost. Pure: the files are described by their survey.

    The file read last time is found among the rotated ones by its inode or,
    once compressed or copied, by its head; the rest of it is read, then
    every newer rotated file, then the log itself. When it cannot be found,
    the rotated files of the grace window are read again: merging is
    idempotent, so re-reading costs time, never entries.
    """
    def newest(mark: Offset, files: Sequence[LogFile]) -> int | None:
        return next((i for i in reversed(range(len(files))) if is_same_log(files[i], mark)),
                    None)

    def from_(i: int, offset: int) -> list[Span]:
        return ([Span(rotated[i].path, Start.OFFSET, offset)]
                + [Span(f.path, Start.OFFSET, 0) for f in rotated[i + 1:]]
                + [Span(log.path, Start.OFFSET, 0)])

    window = ([Span(f.path, Start.WINDOW) for f in recent_logs(rotated, cutoff)]
              + [Span(log.path, Start.WINDOW)])
    current = saved.current if saved else None
    previous = saved.previous if saved else None
    if current is None or current.offset == 0:
        # A mark at offset 0 has no head to fingerprint: a log that
        # copytruncate emptied and that then grew would look like the same
        # file. Nothing was read from it yet, so read on from the previous
        # run's newest rotated file, else the grace window.
        at = newest(previous, rotated) if previous and current else None
        return (window if at is None else from_(at, previous.offset)), None
    if (log.inode == current.inode and log.size >= current.offset and log.head is not None
            and (not current.length
                 or fingerprint(log.head[:current.length]) == current.fingerprint)):
        # The same file, grown. The newest rotated file may have got lines
        # that the daemon wrote to it after the last run, before it reopened
        # its log; a compressed one is finished.
        last = rotated[-1] if rotated else None
        late = ([Span(last.path, Start.OFFSET, previous.offset)]
                if previous and last and not last.compressed and is_same_log(last, previous)
                else [])
        return late + [Span(log.path, Start.OFFSET, current.offset)], None
    at = newest(current, rotated)
    if at is None:
        return window, (f"{log.path} was rotated or truncated and the part read last time "
                        f"is gone; re-reading the grace window")
    spans = from_(at, current.offset)
    # Late lines of the file before it, when that one has been rotated again
    # since (delaycompress: mail.log.1 became mail.log.2.gz).
    late = newest(previous, rotated[:at]) if previous else None
    if late is not None:
        spans.insert(0, Span(rotated[late].path, Start.OFFSET, previous.offset))
    return spans, None


class FileSource:
    """Every log line written since the saved state (see plan_spans), read
    in blocks through one pre-filter, whatever the span: the grown log, the
    rest of a rotated one, the grace window.

    Every file is opened once, while surveying, before anything is read: a
    rotation during the run (mail.log became mail.log.1) must not swap a
    file under a span, and the head that identifies a file next time is the
    one taken before reading on (copytruncate may empty it meanwhile).
    Lines end at "\\n" only, never at a lone "\\r": a crafted user name
    holding "\\r" and a whole success line stays inside its own line.
    """

    def __init__(self, logfile: str, saved: LogState | None, cutoff: float,
                 warn=lambda msg: None, anchors: Sequence[bytes] = (),
                 now: float | None = None, rotated_dirs: Sequence[str] = ()):
        handles: dict[str, BinaryIO] = {}
        try:
            log = survey_file(logfile, handles)
            if log.problem or log.error:
                raise survey_error(log)
            files = {logfile: log}
            rotated = []
            for path in rotated_logs(logfile, rotated_dirs):
                found = survey_file(path, handles)
                if found.problem:
                    warn(f"skipped rotated log {path}: {found.problem}")
                    continue
                files[path] = found
                rotated.append(found)
            spans, warning = plan_spans(saved, log, rotated, cutoff)
        except BaseException:
            for raw in handles.values():
                raw.close()
            raise
        if warning:
            warn(warning)
        self._setup(spans, files, handles, warn, anchors,
                    None if now is None else (cutoff - WINDOW_MARGIN, now))

    @classmethod
    def from_spans(cls, spans: Sequence[Span], files: dict[str, LogFile],
                   anchors: Sequence[bytes] = ()) -> "FileSource":
        self = cls.__new__(cls)
        handles: dict[str, BinaryIO] = {}
        for span in spans:
            handles[span.path] = open_regular(span.path)
        self._setup(list(spans), files, handles, lambda msg: None, anchors, None)
        return self

    def _setup(self, spans, files, handles, warn, anchors, window) -> None:
        self.spans, self.files, self.anchors = spans, files, tuple(anchors)
        self.lines_read = 0
        self.marks: list[Offset] = []
        self.stats = ReadStats()
        self._warn, self._window = warn, window
        needed = {s.path for s in spans}
        for path in list(handles):
            if path not in needed:
                handles.pop(path).close()
        self._handles = handles
        missing = [s.path for s in spans if s.path not in handles]
        if missing:
            self.close()
            raise files[missing[0]].error or FileNotFoundError(
                errno.ENOENT, os.strerror(errno.ENOENT), missing[0])

    def close(self) -> None:
        for raw in self._handles.values():
            raw.close()
        self._handles = {}

    def _blocks(self, span: Span) -> Iterator[tuple[bytes, list[bytes] | None]]:
        """One span's blocks of whole lines, each with its candidate lines
        when grep found them (else None); its mark is appended to
        self.marks once they are consumed (or reading it failed)."""
        log, raw = self.files[span.path], self._handles[span.path]
        f = decompressing(raw, span.path)
        pos = span.offset
        try:
            if span.start is Start.WINDOW:
                pos = (window_start(raw, *self._window)
                       if self._window and not log.compressed else 0)
            if log.compressed:
                f.seek(pos)
                for block, pos in complete_blocks(f, pos, True, self.stats):
                    if block:
                        yield block, None
            else:
                # The span ends where the survey found the file's end.
                reader = SpanReader(raw.fileno(), pos, log.size)
                with contextlib.ExitStack() as stack:
                    found = grep_lines(raw.fileno(), pos, self.anchors)
                    if found:
                        stack.enter_context(found)
                    for block, pos in complete_blocks(reader, pos, False, self.stats):
                        if block:
                            yield block, (found.lines_in(block, pos - len(block))
                                          if found else None)
        except DECOMPRESS_ERRORS as e:
            if not log.compressed:
                raise
            # A compressed file is finished: what cannot be decompressed
            # now never will be. Say so, and read on.
            self._warn(f"stopped reading {span.path} at byte {pos} of its content: "
                       f"{e or type(e).__name__}")
        finally:
            if f is not raw:
                f.close()
        head = (log.head or b"")[:min(pos, FINGERPRINT_BYTES)]
        self.marks.append(Offset(log.inode, pos, fingerprint(head), len(head)))

    def __iter__(self) -> Iterator[str]:
        skipped = 0
        try:
            for span in self.spans:
                for block, found in self._blocks(span):
                    self.lines_read += block.count(b"\n")
                    lines = (found if found is not None
                             else candidate_lines(block, self.anchors) if self.anchors
                             else block[:-1].split(b"\n"))
                    for line in lines:
                        if len(line) > MAX_LINE_BYTES:
                            skipped += 1
                            continue
                        yield line.decode("latin-1")
        finally:
            self.close()
        skipped += self.stats.long_lines
        self.lines_read += self.stats.long_lines
        if skipped:
            self._warn(f"skipped {skipped} lines longer than {MAX_LINE_BYTES} bytes "
                       f"in {self.spans[-1].path} or its rotated files: no login line "
                       f"is that long")

    def state(self) -> LogState:
        """What to commit: call once the lines are consumed. The newest
        rotated file may still get late lines: how far it was read is kept;
        a compressed one is finished."""
        *older, current = self.marks
        before = self.spans[-2].path if older else None
        return LogState(current, older[-1] if before and not is_compressed(before) else None)


def decode(line: str) -> str:
    """A line read as latin-1, decoded as the UTF-8 it most likely is."""
    return line.encode("latin-1").decode("utf-8", "replace").rstrip("\r\n")


###############################################################################
# Sources: the systemd journal: trusted senders, read by cursor ###############
###############################################################################

# A syslog line's tag and PID (SYSLOG_IDENTIFIER, SYSLOG_PID) are the sender's
# own word: `logger -t dovecot` by any local user writes one. journald adds
# fields from the sender's kernel credentials, which the sender cannot set:
# _UID (from the socket's SCM_CREDENTIALS), _EXE (/proc/PID/exe) and
# _SYSTEMD_UNIT (its cgroup). _COMM is not among the strong ones: any user
# can run a copy of logger named "dovecot" or "log", or rename itself with
# prctl(PR_SET_NAME). So an entry counts only when the pattern for its
# identifier names the executable it came from, and the user it ran as.


# What a run asks journalctl for (--output-fields; __CURSOR and
# __REALTIME_TIMESTAMP always come with the export format).
JOURNAL_FIELDS = ("MESSAGE", "SYSLOG_IDENTIFIER", "SYSLOG_PID", "_PID", "_UID", "_EXE",
                  "_SYSTEMD_UNIT", "_HOSTNAME")

# Where journald keeps the system journal: persistent, then volatile storage.
JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
_CURSOR = re.compile(r"s=[0-9a-f]{32};i=[0-9a-f]+;b=[0-9a-f]{32};m=[0-9a-f]+;t=[0-9a-f]+;x=[0-9a-f]+")
_JOURNAL_MATCH = re.compile(r"[A-Z0-9_]+=[^\n]*")             # journalctl(1) MATCHES
_TAG_TEXT = re.compile(r"[^\s\[\]:]+")                         # what _TAG reads back
_HOST_UNSAFE = re.compile(r"[\s\[\]:<]")

# Every control character but TAB becomes "?", so that one entry is one line
# and nothing in a MESSAGE can start a line of its own.
_CONTROLS = bytes(range(256)).translate(
    bytes.maketrans(bytes([*range(9), *range(10, 32), 127]), b"?" * 32))


@functools.lru_cache(maxsize=256)
def user_ids(names: tuple[str, ...]) -> frozenset[int]:
    """The UIDs of these user names (or numbers) on this host; unknown names
    give none."""
    ids = set()
    for name in names:
        if name.isdigit():
            ids.add(int(name))
            continue
        with contextlib.suppress(KeyError):
            ids.add(pwd.getpwnam(name).pw_uid)
    return frozenset(ids)


def journal_refusal(fields: dict[bytes, bytes], pattern: Pattern) -> str | None:
    """Why this journal entry must not be read as one of this server's lines
    (None: its sender is the server).

    The executable must be one of the pattern's journal_exe (" (deleted)",
    which the kernel appends once a package upgrade has replaced the running
    binary, is allowed: only a process started from that very file shows
    it), the UID one of its journal_users, and the unit, when the entry has
    one and the pattern names some, one of its journal_units.
    """
    if not pattern.journal_exe:
        return f"pattern {pattern.name} has no journal_exe, so no journal entry is its"
    exe = fields.get(b"_EXE", b"").decode("latin-1")
    if exe.removesuffix(" (deleted)") not in pattern.journal_exe:
        return f"_EXE={exe or '(none)'} is not one of {pattern.name}'s journal_exe"
    uid = fields.get(b"_UID", b"").decode("latin-1")
    if not uid.isdigit() or int(uid) not in user_ids(pattern.journal_users):
        return (f"_UID={uid or '(none)'} is not one of {pattern.name}'s journal_users "
                f"({', '.join(pattern.journal_users)})")
    unit = fields.get(b"_SYSTEMD_UNIT")
    if (unit is not None and pattern.journal_units and not any(
            fnmatch.fnmatchcase(unit.decode("latin-1"), u) for u in pattern.journal_units)):
        return (f"_SYSTEMD_UNIT={unit.decode('latin-1')} is not one of {pattern.name}'s "
                f"journal_units")
    return None


def journal_line(fields: dict[bytes, bytes], identifier: str) -> str | None:
    """An entry as the syslog line the patterns read:
    ``2026-11-24T23:20:23+00:00 HOST IDENTIFIER[PID]: MESSAGE``, its time
    from __REALTIME_TIMESTAMP; None when it has no time."""
    usec = fields.get(b"__REALTIME_TIMESTAMP", b"")
    if not usec.isdigit():
        return None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(int(usec) // 1000000))
    host = _HOST_UNSAFE.sub("-", fields.get(b"_HOSTNAME", b"").decode("latin-1"))
    pid = fields.get(b"SYSLOG_PID") or fields.get(b"_PID") or b""
    tag = f"{identifier}[{pid.decode()}]" if pid.isdigit() else identifier
    message = fields.get(b"MESSAGE", b"").translate(_CONTROLS).decode("latin-1")
    return f"{stamp} {host} {tag}: {message}" if host else f"{stamp} {tag}: {message}"


def export_entries(stream: BinaryIO) -> Iterator[dict[bytes, bytes]]:
    """The entries of journalctl's export format
    (https://systemd.io/JOURNAL_EXPORT_FORMATS/): ``NAME=value`` lines, or
    for a value with newlines or other binary ``NAME``, a 64-bit
    little-endian length, the bytes and a newline; a blank line ends an
    entry."""
    fields: dict[bytes, bytes] = {}
    readline, read = stream.readline, stream.read
    while line := readline():
        if line == b"\n":
            yield fields
            fields = {}
            continue
        name, eq, value = line.partition(b"=")
        if eq:
            fields[name] = value[:-1]
        else:
            size = read(8)
            if len(size) < 8:
                break
            fields[line[:-1]] = read(struct.unpack("<Q", size)[0])
            read(1)
    if fields:
        yield fields


def journal_files(directory: str) -> list[str]:
    """The journal files journalctl -D reads: in DIR and its machine-id
    subdirectories."""
    names = []
    for entry in os.scandir(directory):
        if entry.is_dir():
            names += os.listdir(entry.path)
        names.append(entry.name)
    return [n for n in names if n.endswith((".journal", ".journal~"))]


def check_journal(directory: str | None) -> None:
    """Fail early, with one line, when there is no journal to read."""
    if directory is None:
        found = [d for d in JOURNAL_DIRS if os.path.isdir(d)]
        if not found:
            raise PbsmtpError(f"no systemd journal on this host (neither "
                              f"{' nor '.join(JOURNAL_DIRS)} exists)")
        with contextlib.suppress(OSError):
            if not any(journal_files(d) for d in found):
                raise PbsmtpError(f"no journal files in {' or '.join(found)} "
                                  f"(is systemd-journald running?)")
        return
    if not os.path.isdir(directory):
        raise PbsmtpError(f"journal directory {directory} does not exist" if not
                          os.path.exists(directory) else f"{directory} is not a directory")
    try:
        files = journal_files(directory)
    except OSError as e:
        raise PbsmtpError(f"cannot read journal directory {directory}: {e.strerror}") from None
    if not files:
        raise PbsmtpError(f"no journal files (*.journal) in {directory}")


class JournalReader:
    """The journal entries written since the saved cursor, as log lines;
    then the cursor to commit. The same interface as LogReader.

    journalctl is run with ``-o export``: the documented, stable output that
    carries every byte of a value. With a saved cursor it starts *at* the
    cursor (``--cursor``), so that the first entry shows whether the journal
    still has it; if not (vacuumed, rotated away, another journal), the
    grace window is read again by time (``--since``), with a warning, as on
    the first run and with --reprocess.

    Only entries that a pattern could read become lines: a MESSAGE holding
    one of the patterns' anchors, from an identifier that a pattern claims,
    whose trusted fields that pattern accepts (journal_refusal). With
    ``everything`` (--check-patterns), every entry becomes a line but those
    that fail the trust check.
    """

    def __init__(self, directory: str | None, matches: Sequence[str], saved: str | None,
                 since: float | None, patterns: Sequence[Pattern], say: Say = quiet,
                 warn: Say = quiet, everything: bool = False):
        self.journalctl = find_tool("journalctl", "systemd")
        check_journal(directory)
        self.directory, self.matches = directory, tuple(matches)
        self.saved, self.since = saved, since
        self.patterns = tuple(patterns)
        # One search for every anchor: far cheaper per entry than a loop.
        self.anchors = re.compile(b"|".join(re.escape(a) for a in pattern_anchors(patterns))
                                  or b"(?!)")
        self.say, self.warn, self.everything = say, warn, everything
        self.lines_read = 0
        self._last: bytes | None = None      # the cursor of the last entry read

    def command(self, *position: str) -> list[str]:
        return [self.journalctl, "-o", "export", f"--output-fields={','.join(JOURNAL_FIELDS)}",
                *(["-D", self.directory] if self.directory else []), *position,
                "--", *self.matches]

    def __iter__(self) -> Iterator[str]:
        if self.saved:
            with self._journalctl("--cursor", self.saved) as entries:
                first = next(entries, None)
                if first is not None and first.get(b"__CURSOR") == self.saved.encode():
                    yield from self._lines(entries)
                    return
            self.warn("the journal no longer has the entry read last time (vacuumed or "
                      "rotated away?); re-reading the grace window")
            self.saved = None
        since = [] if self.since is None else ["--since", f"@{int(self.since)}"]
        with self._journalctl(*since) as entries:
            yield from self._lines(entries)

    @contextlib.contextmanager
    def _journalctl(self, *position: str) -> Iterator[Iterator[dict[bytes, bytes]]]:
        """journalctl's entries; its failure, once they are read, is an error.
        Left early, the process is stopped (by its PID, through Popen)."""
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(self.command(*position), stdout=subprocess.PIPE,
                                        stderr=errors, stdin=subprocess.DEVNULL,
                                        bufsize=1 << 20)
            except OSError as e:
                raise PbsmtpError(f"cannot run {self.journalctl}: {e.strerror}") from None
            # A bigger pipe lets journalctl run ahead while entries are parsed.
            with contextlib.suppress(AttributeError, OSError):
                fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            ended = []

            def entries() -> Iterator[dict[bytes, bytes]]:
                yield from export_entries(proc.stdout)
                ended.append(True)
            try:
                yield entries()
            finally:
                if not ended:
                    proc.kill()
                proc.stdout.close()
                status = proc.wait()
            if not ended:
                return
            errors.seek(0)
            text = errors.read().decode("utf-8", "replace")
        # journalctl's notices (systemd 252 to 257) when it could open only
        # the user's own journal files, or none of them.
        if "not seeing messages from other users" in text or "insufficient permissions" in text:
            raise PbsmtpError("journalctl shows this user only its own entries: run as root "
                              "or as a member of the group systemd-journal")
        if status != 0:
            detail = (text.strip().splitlines() or [f"exit {status}"])[-1]
            raise PbsmtpError(f"journalctl failed: {detail}")

    def _lines(self, entries: Iterator[dict[bytes, bytes]]) -> Iterator[str]:
        anchors, everything = self.anchors.search, self.everything
        for fields in entries:
            self.lines_read += 1
            self._last = fields.get(b"__CURSOR") or self._last
            message = fields.get(b"MESSAGE")
            if message is None:
                continue
            # The anchors hold tags too (pattern_anchors): search the entry as
            # the line it becomes, identifier first.
            tagged = fields.get(b"SYSLOG_IDENTIFIER", b"") + b": " + message
            hit = anchors(tagged.lower()) is not None
            if not (hit or everything):
                continue
            identifier = fields.get(b"SYSLOG_IDENTIFIER", b"").decode("latin-1")
            claimed = (patterns_for_program(self.patterns, identifier)
                       if _TAG_TEXT.fullmatch(identifier) else ())
            if claimed:
                refusals = [journal_refusal(fields, p) for p in claimed]
                if all(refusals):
                    if hit:
                        # The reasons of the patterns that do read the journal say most.
                        why = [r for p, r in zip(claimed, refusals) if p.journal_exe]
                        self.say(f"refused journal entry from {identifier!r}: "
                                 f"{'; '.join(why or refusals[:1])}: "
                                 f"{message.translate(_CONTROLS).decode('latin-1')}")
                    continue
            elif not everything:
                continue
            line = journal_line(fields, identifier or "-")
            if line is not None:
                yield line

    def state(self) -> str | None:
        """The cursor to commit: call once the lines are consumed."""
        return self._last.decode("latin-1") if self._last else self.saved


def open_journal(opts: "Options", patterns: Sequence[Pattern], now: float, say: Say,
                 warn: Say, cursor_file: str) -> tuple[JournalReader, str | None]:
    """The reader for this run and the cursor it starts from (saved in
    cursor_file): the first run and --reprocess read the grace window, by time."""
    saved, problem = (None, None) if opts.reprocess else load_cursor(cursor_file)
    if problem:
        warn(problem)
    reader = JournalReader(opts.journal_directory, opts.journal_match, saved,
                           now - opts.grace - WINDOW_MARGIN, patterns, say, warn)
    return reader, saved


###############################################################################
# Settings: every option, declared once #######################################
###############################################################################

# Each field of Options is a command-line option: opt() gives the field its
# click declaration, and the option groups below put them on the command.
# A setting also comes from the config file (keys named like the long
# options) and from PBSMTP_* variables (see option_envvars); an action only
# from the command line.


def _source(ctx: click.Context, param: click.Parameter) -> str:
    """Where a bad value came from, when that was the config file."""
    if ctx.get_parameter_source(param.name) == click.core.ParameterSource.DEFAULT_MAP:
        path, keys = ctx.meta.get("pbsmtp.config"), ctx.meta.get("pbsmtp.config_keys", {})
        if path:
            return f"config file {path}: '{keys.get(param.name, param.name)}': "
    return ""


def _positive_int(what: str, zero: str | None = None):
    """A number of seconds, above 0; with ``zero`` (what 0 means), 0 too."""
    def check(ctx, param, value):
        if value is None:
            return None
        text = str(value).strip()
        if not text.isdigit() or not (text.strip("0") or zero):
            raise click.ClickException(f"{_source(ctx, param)}{what} must be a whole number "
                                       f"of seconds {f'(0: {zero})' if zero else 'above 0'}, "
                                       f"not {_short(value)}")
        if len(text) > 12 or int(text) > MAX_SECONDS:
            raise click.ClickException(f"{_source(ctx, param)}{what} must be at most "
                                       f"{MAX_SECONDS} seconds "
                                       f"(a hundred years), not {_short(value)}")
        return int(text)
    return check


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def _networks(ctx, param, values):
    nets = []
    for value in values or ():
        try:
            nets.append(parse_network(str(value)))
        except ValueError:
            raise click.ClickException(f"{_source(ctx, param)}--ignore-net {value!r} is not "
                                       f"a network "
                                       f"(e.g. 192.0.2.0/24 or 2001:db8::/32)")
    return tuple(nets)


def _choice(option: str, choices: Sequence[str]):
    def check(ctx, param, value):
        if value is not None and value not in choices:
            raise click.ClickException(f"{_source(ctx, param)}{option} {value!r} is not "
                                       f"supported "
                                       f"(use one of {', '.join(choices)})")
        return value
    return check


def _address(option: str):
    def check(ctx, param, value):
        if value is None:
            return None
        try:
            return address_argument(str(value))
        except ValueError as e:
            raise click.ClickException(f"{option}: {e}") from None
    return check


def _journal_matches(ctx, param, values):
    for value in values or ():
        if not _JOURNAL_MATCH.fullmatch(str(value)):
            raise click.ClickException(f"--journal-match {value!r} is not FIELD=VALUE "
                                       f"(e.g. _SYSTEMD_UNIT=dovecot.service)")
    return tuple(str(v) for v in values or ())


def opt(*decls: str, group: str, default: object = dataclasses.MISSING,
        click_default: object = dataclasses.MISSING, action: bool = False,
        **click_kwargs) -> Any:
    """A field of Options and its option: ``decls`` and ``click_kwargs`` are
    click.option's; the option's name is the field's, and so is its default
    unless ``click_default`` says another (the option's value that the
    field's is made from, see options_from). ``group`` names its option
    group. ``action``: it says what to do in this invocation, not how runs
    behave, so it is never read from a PBSMTP_* variable (one left in cron's
    environment must never turn every run into a listing) and --dumpconfig
    does not list it."""
    if action:
        click_kwargs["allow_from_autoenv"] = False
    if click_default is not dataclasses.MISSING:
        click_kwargs["default"] = click_default
    elif default is not dataclasses.MISSING and default:
        click_kwargs["default"] = default
    return dataclasses.field(default=default, metadata={"option": (decls, click_kwargs),
                                                        "group": group, "action": action})


@dataclasses.dataclass(frozen=True)
class Options:
    """What one invocation does, from the command line, the config file and
    PBSMTP_* variables: one field per option, in --help's order."""
    # source: what is read
    logfile: str = opt(
        "--logfile", "--watchlog", metavar="FILE", group="source",
        help=f"Mail log to read (--watchlog: the classic name) [default: "
             f"{DEFAULT_LOGFILES[0]}, else the first of {', '.join(DEFAULT_LOGFILES[1:])}]. "
             f"- is standard input, for --check-patterns.")
    rotated_dirs: tuple[str, ...] = opt(
        "--rotated-dir", default=(), multiple=True, metavar="DIR", envvar="PBSMTP_ROTATED_DIR",
        group="source",
        help="Where logrotate puts the rotated logs when not beside the log "
             "(its olddir; relative to the log's directory). Repeatable; the "
             "log's own directory is always searched.")
    journal: bool = opt(
        "--journal", default=False, is_flag=True, group="source",
        help="Read the systemd journal instead of --logfile: only entries whose "
             "trusted fields (_EXE, _UID, _SYSTEMD_UNIT) a pattern accepts count.")
    journal_directory: str | None = opt(
        "--journal-directory", default=None, metavar="DIR", group="source",
        help="Read the journal files in DIR (journalctl -D), e.g. "
             "/var/log/journal/remote; implies --journal.")
    journal_match: tuple[str, ...] = opt(
        "--journal-match", default=(), multiple=True, metavar="FIELD=VALUE",
        callback=_journal_matches, group="source",
        help="Read only the journal entries that match (journalctl MATCHES; "
             "repeatable). It narrows what is read; it never makes an entry trusted.")
    # map: where the entries go and for how long
    dbfile: str = opt(
        "--dbfile", default=DEFAULT_DBFILE, metavar="FILE", show_default=True, group="map",
        help="The map, as in main.cf without the type (postmap adds .db/.lmdb/.cdb).")
    map_type: str | None = opt(
        "--map-type", default=None, callback=_choice("--map-type", list(MAP_SUFFIXES)),
        metavar="TYPE", group="map",
        help="hash, btree, lmdb or cdb [default: postconf default_database_type].")
    grace: int = opt(
        "--grace", default=DEFAULT_GRACE, type=str, show_default=True, metavar="SECONDS",
        callback=_positive_int("--grace"), group="map",
        help="How long a login allows relaying.")
    max_session: int = opt(
        "--max-session", default=DEFAULT_MAX_SESSION, type=str, show_default=True,
        metavar="SECONDS", callback=_positive_int("--max-session", "no sessions"), group="map",
        help="A login whose end the log tells (a Dovecot, Courier or Cyrus session) keeps its "
             "address in the map until that end, then for --grace; a session with no "
             "end line ends this long after its login. 0: every login counts only "
             "for --grace.")
    # run: how a run behaves and what it tells
    write: bool = opt(
        "--write/--nowrite", default=True, show_default=True, group="run",
        help="Write the map and commit the offset.")
    dry_run: bool = opt(
        "--dry-run", default=False, is_flag=True, action=True, group="run",
        help="Print what would be added, refreshed and expired; change nothing.")
    flock: bool = opt(
        "--flock/--noflock", default=True, show_default=True, group="run",
        help="Take the state directory's lock, so overlapping runs skip.")
    lock_timeout: int = opt(
        "--lock-timeout", default=DEFAULT_LOCK_TIMEOUT, type=str, show_default=True,
        metavar="SECONDS", callback=_positive_int("--lock-timeout"), group="run",
        help="A run that finds the lock held longer than this reports the holder "
             "with an Error (exit 1) and purges the expired entries.")
    debug: bool = opt(
        "--debug/--nodebug", default=False, group="run", help="Explain every matched line.")
    verbose: bool = opt(
        "-v", "--verbose", default=False, is_flag=True, action=True, group="run",
        help="Print a one-line summary; with --check-patterns, every pattern and "
             "every finding.")
    reprocess: bool = opt(
        "--reprocess/--noreprocess", default=False, group="run",
        help="Ignore the saved offset: read the whole log again and rebuild the "
             "grace window (after a lost map).")
    logto: str | None = opt(
        "--logto", default=None, metavar="FILE", group="run",
        help="Append every add and remove to FILE, one line each, as the classic "
             "daemon did (- is standard output).")
    use_syslog: bool = opt(
        "--syslog/--nosyslog", default=True, show_default=True, envvar="PBSMTP_SYSLOG",
        group="run",
        help="Log one line per run that changed the map, and each --grant and "
             "--revoke, to syslog (facility mail).")
    metrics_file: str | None = opt(
        "--metrics-file", default=None, metavar="PATH", group="run",
        help="Write run metrics for node_exporter's textfile collector "
             "(e.g. /var/lib/prometheus/node-exporter/pbsmtp_batch.prom).")
    # mode: what to do instead of a run
    list_: bool = opt(
        "--list", default=False, is_flag=True, action=True, group="mode",
        help="Show the map's entries: IP, login time, age and time left.")
    as_json: bool = opt(
        "--json", default=False, is_flag=True, action=True, group="mode",
        help="With --list or --check-patterns: print JSON.")
    dumpconfig: bool = opt(
        "--dumpconfig", default=False, is_flag=True, action=True, group="mode",
        help="Print every effective setting and where it came from, the pattern "
             "files, the Postfix instance and its mynetworks, and the map.")
    check_patterns: bool = opt(
        "--check-patterns", default=False, is_flag=True, action=True, group="mode",
        help="Test the patterns on the whole --logfile (- is standard input) and on "
             "their own samples: hits per pattern, addresses found, lines that look "
             "like logins but matched nothing. Exits 1 if a sample fails. Changes "
             "nothing.")
    line: tuple[str, ...] = opt(
        "--line", default=(), multiple=True, metavar="TEXT", action=True, group="mode",
        help="With --check-patterns: test this log line instead of --logfile "
             "(repeatable).")
    explain_ip: str | None = opt(
        "--explain", default=None, metavar="IP", action=True, callback=_address("--explain"),
        group="mode",
        help="Say what is known about one address: its map entry, grants and "
             "revocations, whether it is left out and why, and its last logins in "
             "the log (or journal). Changes nothing.")
    grant: str | None = opt(
        "--grant", default=None, metavar="IP", action=True, callback=_address("--grant"),
        group="mode",
        help="Let one address relay now, by hand, for --grant-for seconds; kept "
             "by the runs that follow and logged to syslog.")
    grant_for: int | None = opt(
        "--grant-for", default=None, metavar="SECONDS", callback=_positive_int("--grant-for"),
        group="mode", help="How long a --grant lasts [default: the grace window].")
    revoke: str | None = opt(
        "--revoke", default=None, metavar="IP", action=True, callback=_address("--revoke"),
        group="mode",
        help="Take one address out of the map, by hand: it stays out until its next "
             "login (or for --revoke-for seconds); logged to syslog.")
    revoke_for: int | None = opt(
        "--revoke-for", default=None, metavar="SECONDS", callback=_positive_int("--revoke-for"),
        group="mode",
        help="Keep a --revoke'd address out this long, whatever it logs in "
             "[default: until its next login].")
    postfix_check: bool = opt(
        "--check-postfix", default=False, is_flag=True, action=True, group="mode",
        help="Check that Postfix (postconf, with --postfix-config) asks the map before "
             "refusing relay and can read it: a line per check; exits 1 if one fails.")
    # site: the state, the patterns, Postfix, and what never goes into the map
    state_dir: str = opt(
        "--state-dir", default=DEFAULT_STATE_DIR, show_default=True, metavar="DIR",
        group="site",
        help="Where the log offset, the lock and the grants and revocations "
             "made by hand live.")
    patterns: tuple[str, ...] = opt(
        "--pattern", default=(), multiple=True, metavar="NAME",
        envvar=["PBSMTP_PATTERN", "PBSMTP_PATTERNS"], group="site",
        help="Use only this pattern file (repeatable) [default: all].")
    patterns_dir: str | None = opt(
        "--patterns-dir", default=None, metavar="DIR", group="site",
        help=f"Use exactly the pattern files in DIR [default: the shipped ones, "
             f"overlaid by {ADMIN_PATTERNS_DIR}].")
    ignore_nets: tuple[Network, ...] = opt(
        "--ignore-net", default=(), multiple=True, metavar="CIDR",
        envvar=["PBSMTP_IGNORE_NET", "PBSMTP_IGNORE_NETS"], callback=_networks, group="site",
        help="Never add addresses in this network (repeatable). Postfix's "
             "mynetworks is always left out.")
    postfix_config: str | None = opt(
        "--postfix-config", default=None, metavar="DIR",
        envvar=["PBSMTP_POSTFIX_CONFIG", "MAIL_CONFIG"], group="site",
        help="Postfix instance's config directory [default: $MAIL_CONFIG, "
             "else the default instance].")
    # store: where and how the entries are written
    backend: str = opt(
        "--backend", default="postfix", show_default=True, metavar="NAME",
        callback=_choice("--backend", list(BACKEND_NAMES)), group="store",
        help="Where the entries go: " + ", ".join(
            f"{name} ({what})" for name, what in BACKEND_NAMES.items()) + ". See the README.")
    pg_dsn: str | None = opt(
        "--pg-dsn", default=None, metavar="DSN", group="store",
        help="pgsql: libpq connection string or URI (also $PBSMTP_PG_DSN).")
    pg_table: str = opt(
        "--pg-table", default=DEFAULT_TABLE, show_default=True, metavar="NAME", group="store",
        help="pgsql: the shared table.")
    memcache_server: str = opt(
        "--memcache-server", default=DEFAULT_MEMCACHE_SERVER, show_default=True,
        metavar="HOST:PORT", group="store", help="memcache: the server (or unix:/PATH).")
    memcache_prefix: str = opt(
        "--memcache-prefix", default=DEFAULT_MEMCACHE_PREFIX, show_default=True, metavar="TEXT",
        group="store", help="memcache: key prefix; Postfix's key_format must be TEXT%s.")
    mysql_url: str | None = opt(
        "--mysql-url", default=None, metavar="URL", group="store",
        help="mysql: mysql://USER:PASSWORD@HOST[:PORT]/DATABASE, or with "
             "?unix_socket=/PATH or ?read_default_file=/PATH (also $PBSMTP_MYSQL_URL).")
    mysql_table: str = opt(
        "--mysql-table", default=DEFAULT_TABLE, show_default=True, metavar="NAME",
        group="store", help="mysql: the shared table.")
    # The option says write or skip; the field is whether to write them.
    ipv6_shared_keys: bool = opt(
        "--ipv6-shared-keys", default=True, click_default="write", show_default=True,
        metavar="write|skip", callback=_choice("--ipv6-shared-keys", ["write", "skip"]),
        group="store",
        help="IPv6 keys like 2001:db8::1 are also hit by Postfix's shortened "
             "lookups for 2001:db8::1:X (same /64): write them, or skip them "
             "(those clients then cannot relay). See the README.")


def options_from(params: Mapping[str, object]) -> Options:
    """Options from the command's values (click's parameter names are the
    field names), with what follows from them: the log found by
    default_logfile, --journal implied by --journal-directory, no writing
    with --dry-run, and --ipv6-shared-keys as a flag."""
    values = {f.name: params[f.name] for f in dataclasses.fields(Options)}
    journal = bool(values["journal"]) or values["journal_directory"] is not None
    if values["journal_match"] and not journal:
        raise PbsmtpError("--journal-match needs --journal or --journal-directory")
    return Options(**{**values, "logfile": values["logfile"] or default_logfile(),
                      "journal": journal, "write": values["write"] and not values["dry_run"],
                      "ipv6_shared_keys": values["ipv6_shared_keys"] == "write",
                      "patterns": tuple(values["patterns"]),
                      "rotated_dirs": tuple(values["rotated_dirs"])})


def option_group(group: str) -> Callable:
    """A decorator that puts the options of this group's fields of Options
    on a click command, in the fields' order."""
    fields = [f for f in dataclasses.fields(Options) if f.metadata["group"] == group]

    def decorate(command):
        for field in reversed(fields):
            decls, click_kwargs = field.metadata["option"]
            command = click.option(*decls, field.name, **click_kwargs)(command)
        return command
    return decorate


source_options = option_group("source")
map_options = option_group("map")
run_options = option_group("run")
mode_options = option_group("mode")
site_options = option_group("site")
store_options = option_group("store")

# Settings whose value is a number of seconds.
_SECONDS = ("grace", "lock_timeout", "grant_for", "revoke_for", "max_session")


def _config_type(param: click.Parameter) -> tuple[type, str]:
    """What a config-file value of this option must be, and how to say it."""
    if param.is_flag or isinstance(param.type, click.types.BoolParamType):
        return bool, "true or false (no quotes)"
    if param.multiple:
        return list, 'a list of strings, e.g. ["..."]'
    if param.name in _SECONDS:
        return int, "a whole number of seconds (no quotes)"
    return str, 'a string in quotes'


# The classic daemon's config is Perl (pop-before-smtp-conf.pl). None of these
# lines can be TOML, so a match is a Perl file, not a TOML syntax error.
_PERL_CONFIG = re.compile(
    r"\A#!.*\bperl\b"
    r"|^\s*(?:use|require|no)\s+[A-Za-z][\w:]*[^=\n]*;"
    r"|^\s*(?:my\s+|our\s+|local\s+)?[$@%][A-Za-z_]\w*(?:\{[^}\n]*\})?\s*[.|]?=[^=]"
    r"|^\s*sub\s+\w+\s*(?:\{|$)",
    re.MULTILINE)
MIGRATION_SECTION = 'the README, "Migrating from the Perl pop-before-smtp"'


def _config_callback(ctx: click.Context, param: click.Parameter, value: str | None):
    """Load the config file (TOML, keys named like the long options) into
    click's default_map, so that the command line and PBSMTP_* variables
    still win over it."""
    path = value or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    ctx.meta["pbsmtp.config"] = path
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise click.ClickException(f"cannot read config file {path}: {e.strerror}")
    if _PERL_CONFIG.search(raw.decode("utf-8", "replace")):
        raise click.ClickException(
            f"config file {path} is the classic pop-before-smtp Perl config "
            f"(pop-before-smtp-conf.pl); pbsmtp-batch reads TOML: see {MIGRATION_SECTION}")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise click.ClickException(f"config file {path}: {e}")
    except UnicodeDecodeError:
        raise click.ClickException(f"config file {path} is not UTF-8 text (TOML must be)")
    # Keys are the long option names; "nowrite = true" works like --nowrite.
    names, params = {}, {}
    for param in ctx.command.params:
        if isinstance(param, click.Option) and param.name not in (
                "config", "now", "version", *BY_HAND_ACTIONS):
            names.update({o.lstrip("-"): (param.name, True) for o in param.opts if o[:2] == "--"})
            names.update({o.lstrip("-"): (param.name, False) for o in param.secondary_opts})
            params[param.name] = param
    default_map = {}
    for key, val in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise click.ClickException(f"config file {path}: unknown setting '{key}'{hint}")
        name, positive = names[key]
        kind, expected = _config_type(params[name])
        if not isinstance(val, kind) or (kind is int and isinstance(val, bool)) or (
                kind is list and not all(isinstance(v, str) for v in val)):
            raise click.ClickException(f"config file {path}: '{key}' must be {expected}, "
                                       f"not {val!r}")
        default_map[name] = val if positive else not val
    ctx.default_map = {**(ctx.default_map or {}), **default_map}
    # Which key of the file gave each setting, for errors about its value.
    ctx.meta["pbsmtp.config_keys"] = {name: key for key, (name, _) in names.items()
                                      if key in data}
    return path


def _now(ctx, param, value):
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise click.ClickException(f"--now {value!r} is not an epoch time")


def _no_daemon(ctx, param, value):
    if value is not None:
        raise click.UsageError(
            f"--daemon={value}: pbsmtp-batch is not a daemon; each run does one pass and "
            f"exits. Start it from cron (cron.d/pbsmtp-batch) or with the systemd path unit "
            f"(systemd/pbsmtp-batch.path): see the README, \"Cron mode or path mode\"", ctx)
    return value


# Options that say what to do in this invocation, not how runs behave (see
# opt): not read from PBSMTP_* variables, not listed by --dumpconfig.
ACTIONS = (*(f.name for f in dataclasses.fields(Options) if f.metadata["action"]),
           "daemon", "now", "version", "help")

# Those that look at or change one address, or check Postfix, are not keys of
# the config file either: a grant there would be made again by every run.
BY_HAND_ACTIONS = ("explain_ip", "grant", "revoke", "postfix_check")


def option_envvars(param: click.Parameter, prefix: str = "PBSMTP") -> list[str]:
    """The environment variables an option is read from (none for actions)."""
    if not isinstance(param, click.Option) or param.name in ACTIONS:
        return []
    if param.envvar:
        return [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
    if not param.allow_from_autoenv:
        return []
    return [f"{prefix}_{param.name.upper()}"]


###############################################################################
# Run state: the state directory and its files ################################
###############################################################################

@dataclasses.dataclass(frozen=True)
class SourceFiles:
    """The state files of one source: a log, or a journal."""
    offset: str          # the committed offset (a log) or cursor (a journal)
    pending: str         # two-line servers' address lines awaiting their success line
    sessions: str        # the sessions still open (load_sessions, sessions_text)
    map_cache: str       # which map version the last run left (load_map_cache)
    entries: str         # the entries cache (open_entries, save_entries)


@dataclasses.dataclass(frozen=True)
class StateDir:
    """Every file of the state directory, named in one place (the names
    themselves are the constants at the top: state directories hold them)."""
    path: str

    @property
    def lock(self) -> str:
        return os.path.join(self.path, LOCK_NAME)

    @property
    def map_lock(self) -> str:
        return os.path.join(self.path, MAP_LOCK)

    @property
    def manual(self) -> str:
        """The grants and revocations made by hand, kept for the runs that
        follow: one per state directory, like the lock."""
        return os.path.join(self.path, MANUAL_NAME)

    def source(self, name: str) -> SourceFiles:
        base = os.path.join(self.path, name)
        return SourceFiles(base + OFFSET_SUFFIX, base + PENDING_SUFFIX, base + SESSIONS_SUFFIX,
                           base + MAP_CACHE_SUFFIX, base + ENTRIES_SUFFIX)

    def log(self, logfile: str) -> SourceFiles:
        return self.source(log_source_name(logfile))

    def journal(self, directory: str | None) -> SourceFiles:
        return self.source(journal_source_name(directory))

    def files_for(self, opts: Options) -> SourceFiles:
        """The files of the source this run reads."""
        return self.journal(opts.journal_directory) if opts.journal else self.log(opts.logfile)


@dataclasses.dataclass(frozen=True)
class Holder:
    """The run that holds the lock, as it wrote itself into the lock file."""
    pid: int | None
    since: float


def lock_holder(fd: int) -> Holder:
    text = os.pread(fd, 100, 0).decode("ascii", "replace").split()
    if len(text) == 2 and text[0].isdigit() and text[1].isdigit():
        return Holder(int(text[0]), float(text[1]))
    return Holder(None, os.fstat(fd).st_mtime)


@contextlib.contextmanager
def run_lock(path: str, enabled: bool, wait: bool = False, record: bool = False
             ) -> Iterator[bool | Holder]:
    """Hold one of the state directory's locks; yields True, or the Holder
    of the lock when another run has it (``wait``: wait for it instead).
    ``record``: write our PID and start into it, for a run it locks out
    (the run lock; the map lock is held for moments)."""
    if not enabled:
        yield True
        return
    fd = open_state_file(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield lock_holder(fd)
            return
        if record:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {int(time.time())}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)


def ensure_state_dir(state_dir: str) -> None:
    """Create the state directory, and refuse one (or a file in it) that
    another user could have written: its lock, offsets and pending
    addresses are trusted."""
    try:
        os.makedirs(state_dir, mode=0o750, exist_ok=True)
    except OSError as e:
        raise PbsmtpError(f"cannot create state directory {state_dir}: {e.strerror}") from None
    try:
        link = os.lstat(state_dir)
        if stat.S_ISLNK(link.st_mode):
            check_private(state_dir, link, "state directory link")
        check_private(state_dir, os.stat(state_dir), "state directory")
        for entry in os.scandir(state_dir):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise PbsmtpError(f"state file {entry.path} is a symbolic link: not trusted")
            check_private(entry.path, st, "state file")
    except OSError as e:
        raise PbsmtpError(f"cannot read state directory {state_dir}: {e.strerror}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise PbsmtpError(f"cannot write state directory {state_dir}")


def offset_path(state_dir: str, logfile: str) -> str:
    """The offset file of a log (see StateDir)."""
    return StateDir(state_dir).log(logfile).offset


def _offset(data: object) -> Offset:
    if not isinstance(data, dict):
        raise TypeError("not an object")
    mark = Offset(int(data["inode"]), int(data["offset"]), str(data.get("fingerprint", "")),
                  int(data.get("length", 0)))
    if min(mark.inode, mark.offset, mark.length) < 0:
        raise ValueError("negative")
    return mark


def load_offset(path: str) -> tuple[LogState | None, str | None]:
    """The committed state, or (None, warning) when it cannot be trusted.

    Our format is JSON. pygtail's and logtail's two-line "inode\\noffset"
    file is accepted too, so that switching from them resumes in place.
    """
    try:
        text = read_state_file(path)
    except OSError as e:
        return None, f"cannot read offset file {path}: {e.strerror}"
    if text is None:
        return None, None
    try:
        data = json.loads(text)
        previous = data.get("previous")
        return LogState(_offset(data), _offset(previous) if previous else None), None
    except (ValueError, TypeError, KeyError, AttributeError):
        parts = text.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return LogState(Offset(int(parts[0]), int(parts[1]))), None
    return None, f"offset file {path} is corrupt; re-reading the grace window"


def offset_text(logfile: str, state: LogState) -> str:
    data = {"log": os.path.abspath(logfile), **dataclasses.asdict(state.current),
            "previous": state.previous and dataclasses.asdict(state.previous)}
    return json.dumps(data) + "\n"


def load_pending(path: str, now: float) -> Pending:
    """Address lines of two-line servers still waiting for their success
    line; a missing or unreadable file just means none."""
    try:
        rows = json.loads(read_state_file(path) or "[]")
        pending = {(str(h), str(p), str(i)): (str(ip), int(t)) for h, p, i, ip, t in rows}
    except (OSError, ValueError, TypeError):
        return {}
    return trim_pending({k: v for k, v in pending.items() if normalise_ip(v[0]) == v[0]}, now)


def pending_text(pending: Pending) -> str:
    return json.dumps([[*key, ip, when] for key, (ip, when) in sorted(pending.items())]) + "\n"


def load_sessions(path: str) -> tuple[dict[SessionKey, Session], str | None]:
    """The open sessions the last run left, and a warning if the file was
    there but unusable (then none are open: their addresses expire a grace
    window after their last refresh, as without sessions)."""
    try:
        text = read_state_file(path)
    except OSError as e:
        return {}, f"cannot read {path}: {e.strerror}; open sessions forgotten"
    if text is None:
        return {}, None
    try:
        sessions = {}
        for row in json.loads(text):
            key = tuple(str(k) for k in row["key"])
            ip, user = str(row["ip"]), row["user"]
            if len(key) != 4 or normalise_ip(ip) != ip or not isinstance(user, (str, type(None))):
                raise ValueError(row)
            sessions[key] = Session(key, ip, user, int(row["start"]), int(row["seen"]))
    except (ValueError, TypeError, KeyError):
        return {}, f"{path} is damaged; open sessions forgotten"
    return sessions, None


def sessions_text(sessions: Mapping[SessionKey, Session]) -> str:
    return json.dumps([{"key": list(s.key), "ip": s.ip, "user": s.user, "start": s.start,
                        "seen": s.seen} for _, s in sorted(sessions.items())]) + "\n"


def load_cursor(path: str) -> tuple[str | None, str | None]:
    """The committed cursor, or (None, warning) when it cannot be trusted."""
    try:
        data = json.loads(Path(path).read_text(errors="replace"))
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot read cursor file {path}: {e.strerror}"
    except ValueError:
        data = None
    cursor = data.get("cursor") if isinstance(data, dict) else None
    if cursor is None and isinstance(data, dict) and "cursor" in data:
        return None, None
    if not isinstance(cursor, str) or not _CURSOR.fullmatch(cursor):
        return None, f"cursor file {path} is corrupt; re-reading the grace window"
    return cursor, None


def cursor_text(directory: str | None, cursor: str | None) -> str:
    return json.dumps({"journal": directory and os.path.abspath(directory),
                       "cursor": cursor}) + "\n"


def _by_hand(data: object) -> ByHand:
    if not isinstance(data, dict):
        raise TypeError("not an object")
    until = data.get("until")
    record = ByHand(int(data["at"]), None if until is None else int(until), str(data["by"]))
    if record.at < 0 or (record.until is not None and record.until < record.at):
        raise ValueError("times out of order")
    return record


def load_manual(path: str) -> tuple[Manual, str | None]:
    """The grants and revocations kept in the state directory, or (empty,
    why) when the file cannot be trusted. Keys must be addresses as the map
    holds them."""
    try:
        text = read_state_file(path)
    except OSError as e:
        return Manual(), f"cannot read {path}: {e.strerror}"
    if text is None:
        return Manual(), None
    try:
        data = json.loads(text)
        manual = Manual({k: _by_hand(v) for k, v in data["grants"].items()},
                        {k: _by_hand(v) for k, v in data["revokes"].items()})
        if all(normalise_ip(ip) == ip for ip in [*manual.grants, *manual.revokes]):
            return manual, None
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return Manual(), f"{path} (the grants and revocations made by hand) is corrupt"


def manual_text(manual: Manual) -> str:
    return json.dumps({"grants": {ip: dataclasses.asdict(g) for ip, g in
                                  sorted(manual.grants.items())},
                       "revokes": {ip: dataclasses.asdict(r) for ip, r in
                                   sorted(manual.revokes.items())}}, indent=1) + "\n"


def load_map_cache(path: str) -> dict | None:
    try:
        cache = json.loads(read_state_file(path) or "null")
    except (OSError, ValueError):
        return None
    return cache if isinstance(cache, dict) else None


def save_map_cache(path: str, store: Store, plan: Plan, grace: int,
                   earliest: int | None = None) -> None:
    """Remember which map this run left and when its first entry expires, so
    that a run with no logins before then need not read it (``earliest``:
    the oldest time in the map, or earlier, when the plan does not hold
    every entry). Only a cache: if it cannot be written, the next run reads
    the map."""
    stamp = store.stamp()
    if plan.active is None:
        earliest = min(plan.entries.values()) if plan.entries else None
    cache = {"stamp": stamp, "grace": grace, "active": plan.size,
            "map": store.path if stamp is not None else None,
            "expires": earliest + grace if earliest is not None else None}
    with contextlib.suppress(OSError):
        if stamp is not None:
            write_atomically(path, json.dumps(cache) + "\n")


# NAME.entries, beside the offset: the map's entries as the last run wrote
# them, for the version of the map it left (its stamp). After a JSON header,
# one "TIME ADDRESS" line per entry in time order, so that the entries due
# to expire are the first lines and an update reads only those. A run that
# updates the map appends its new times in order and leaves the line an
# address had before it was refreshed; such a line is dropped when it comes
# due. So every key of the map has a line with its value, and no address
# leaves the map without its line coming due.
ENTRIES_FORMAT = 2


@dataclasses.dataclass
class EntriesCache:
    path: str
    active: int              # entries in the map
    body: str                # "TIME ADDRESS" lines in time order


def open_entries(path: str, stamp: list[int] | None) -> EntriesCache | None:
    """The entries cache, if it is ours, whole and of the map's current
    version (same inode, size and mtime); None otherwise."""
    if stamp is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_uid != os.geteuid():
                return None
            head, _, body = f.read().decode("ascii").partition("\n")
        header = json.loads(head)
        if (header.get("format") != ENTRIES_FORMAT or header.get("stamp") != stamp
                or not isinstance(header.get("active"), int) or body[-1:] not in ("", "\n")):
            return None
        return EntriesCache(path, header["active"], body)
    except (OSError, ValueError, AttributeError, UnicodeError):
        return None


def cached_entries(cache: EntriesCache) -> dict[str, int] | None:
    """Every entry of the cache, each address at its newest time; None if a
    line is damaged."""
    try:
        entries = {}
        for row in cache.body.splitlines():
            when, ip = row.split(" ")
            entries[ip] = int(when)
        return entries if len(entries) == cache.active else None
    except ValueError:
        return None


def due_lines(body: str, cutoff: float) -> tuple[list[tuple[int, str]], int]:
    """The (time, address) lines of a cache body older than cutoff, and
    where the lines that stay begin. Raises ValueError on a damaged line."""
    due, pos = [], 0
    while pos < len(body):
        end = body.index("\n", pos)
        when, ip = body[pos:end].split(" ")
        if int(when) >= cutoff:
            break
        due.append((int(when), ip))
        pos = end + 1
    return due, pos


def merge_update(cache: EntriesCache, logins: Iterable[Login], now: float, grace: int,
                 lookup) -> tuple[Plan, str] | None:
    """merge() for a map whose entries cache is current, touching only the
    entries that change: the logins' addresses and the cache lines that
    have come due, whose values ``lookup`` (keys -> {key: value}) reads
    from the map itself. Returns the plan (``active`` set, ``entries`` only
    what is added or refreshed) and the cache body after it; None when so
    much changes that a rebuild is the better way. Raises ValueError when
    the cache is damaged or disagrees with the map."""
    cutoff = now - grace
    due, keep = due_lines(cache.body, cutoff)
    fresh: dict[str, int] = {}
    for login in logins:
        when = min(login.when, int(now))     # clock skew: never in the future
        if when >= cutoff and when > fresh.get(login.ip, -1):
            fresh[login.ip] = when
    current = lookup({ip for _, ip in due} | fresh.keys())
    if not all(value.isdigit() for value in current.values()):
        raise ValueError("a map value is not an all-digit time")   # merge() drops such
    plan = Plan(entries={}, base_is_map=True)
    for when, ip in due:
        if ip not in current:
            raise ValueError(f"{ip} is in the cache, not in the map")
        value = int(current[ip])
        if value < cutoff:
            plan.expired[ip] = value
        elif not has_line(cache.body, value, ip, keep):
            # A line left by a refresh: the newer one must be there, or
            # the address would never come due.
            raise ValueError(f"{ip} has no line for its time {value}")
    for ip, when in fresh.items():
        old = int(current[ip]) if ip in current else None
        if old is not None and old < cutoff:
            old = None                       # expired: added anew, as merge() does
        if old is not None and when <= old:
            continue
        plan.entries[ip] = when
        plan.expired.pop(ip, None)
        (plan.refreshed if old is not None else plan.added)[ip] = when
    plan.active = (cache.active - len(plan.expired)
                   + sum(1 for ip in plan.added if ip not in current))
    if len(plan.entries) + len(plan.expired) > max(100, plan.active // 4):
        return None
    return plan, insert_lines(cache.body[keep:], plan.entries)


def insert_lines(body: str, entries: Mapping[str, int]) -> str:
    """A cache body with these entries' lines put in time order, each found
    by a binary search: the lines between are copied, not read."""
    pieces, pos = [], 0
    for ip, when in sorted(entries.items(), key=lambda entry: entry[1]):
        at = first_line_after(body, when, pos)
        pieces += [body[pos:at], f"{when} {ip}\n"]
        pos = at
    pieces.append(body[pos:])
    return "".join(pieces)


def has_line(body: str, when: int, ip: str, lo: int = 0) -> bool:
    """Whether a cache body (from line start lo on) has the line "when ip"."""
    start = first_line_after(body, when - 1, lo)
    end = first_line_after(body, when, start)
    return f"{when} {ip}\n" in body[start:end].splitlines(keepends=True)


def first_line_after(body: str, when: int, lo: int = 0) -> int:
    """Where the first line of a cache body (from line start lo on) whose
    time is later than when begins; len(body) if there is none."""
    hi = len(body)
    while lo < hi:                           # lo: a line start; hi: one, or the end
        start = body.rfind("\n", 0, (lo + hi) // 2) + 1
        if int(body[start:body.index(" ", start)]) > when:
            hi = start
        else:
            lo = body.index("\n", start) + 1
    return lo


def save_entries(path: str, store: Store, plan: Plan, body: str | None = None) -> None:
    """Remember the map's entries with the version of the map that holds
    exactly them (call right after publishing the plan): the plan's, or
    for an update (plan.active set) the cache body merge_update gave. Only
    a cache: if it cannot be written, the next run reads the map."""
    stamp = store.stamp()
    if stamp is None:
        return
    if body is None:
        body = "".join(f"{when} {ip}\n" for ip, when in
                       sorted(plan.entries.items(), key=lambda entry: entry[1]))
    header = json.dumps({"format": ENTRIES_FORMAT, "stamp": stamp, "active": plan.size})
    with contextlib.suppress(OSError):
        write_atomically(path, header + "\n" + body)


###############################################################################
# The run #####################################################################
###############################################################################

@dataclasses.dataclass
class Summary:
    lines: int = 0
    logins: int = 0
    added: int = 0
    refreshed: int = 0
    expired: int = 0
    active: int = 0
    sessions: int = 0            # sessions open after the run
    locked_out: bool = False     # another run held the lock

    def line(self) -> str:
        if self.locked_out:
            return "pbsmtp-batch: another run holds the lock; nothing done"
        return (f"pbsmtp-batch: {self.lines} lines read, {self.logins} logins, "
                f"{self.added} added, {self.refreshed} refreshed, "
                f"{self.expired} expired, {self.active} active")


def postfix_not_configured(config_dir: str | None) -> str | None:
    """Why Postfix's tools cannot read their configuration (None: they can).

    A Debian machine where postfix was installed with "No configuration" has
    no main.cf, and every postconf and postmap call then fails."""
    main_cf = os.path.join(config_dir or "/etc/postfix", "main.cf")
    if os.path.isfile(main_cf):
        return None
    return (f"Postfix is not configured: {main_cf} does not exist (Debian: "
            f"dpkg-reconfigure postfix; or name the instance with --postfix-config=DIR)")


def read_mynetworks(config_dir: str | None, say: Say, required: bool = True
                    ) -> list[tuple[bool, Network]]:
    """Postfix's mynetworks. A host that feeds another MTA's table, or a
    shared one, may have no Postfix at all, and a dry run may come before
    Postfix is configured: then there is none to read (``say`` tells), and
    leaving nothing out is harmless, since mynetworks relays anyway."""
    try:
        find_tool("postconf")
        problem = postfix_not_configured(config_dir)
        if problem:
            raise PbsmtpError(problem)
        value = postconf("mynetworks", config_dir)
    except PbsmtpError as e:
        if required:
            raise
        say(f"mynetworks is unknown, so it is not left out ({e}); --ignore-net still applies")
        return []
    nets, notes = parse_mynetworks(value)
    for note in notes:
        say(note)
    return nets


def collect_logins(lines: Iterable[str], patterns: Sequence[Pattern],
                   mynetworks: Sequence[tuple[bool, Network]], opts: Options, now: float,
                   summary: Summary, say: Say, pending: Pending | None = None,
                   events: list[Login | SessionEnd] | None = None) -> list[Login]:
    """The logins in these lines that may go into the map. With ``events``,
    also the logins that open a session (even if older than the grace
    window, while younger than --max-session) and the session ends, in log
    order, for pair_sessions."""
    logins, exclusions = [], {}
    patterns = tuple(patterns)       # once: the matchers' caches are keyed by it
    talk = say is not quiet          # a quiet run formats no message per login
    for raw in lines:
        line = decode(raw)
        login, reason = match_login(line, patterns, now, pending)
        if reason:
            say(f"ignored: {reason}: {line}")
        if login is None:
            if events is not None and reason is None:
                end, reason = match_logout(line, patterns, now)
                if reason:
                    say(f"ignored: {reason}: {line}")
                if end is not None:
                    events.append(end)
            continue
        opens = events is not None and login.session is not None
        # The cheap check first: in a first run or --reprocess most logins
        # found are older than the window, and need no network lookup.
        old = login.when < now - opts.grace
        if old and not (opens and login.when > now - opts.max_session):
            if talk:
                say(f"skipped {login.ip} ({login.pattern}): login at "
                    f"{human_time(login.when, now)} is older than the grace window")
            continue
        if login.ip not in exclusions:
            exclusions[login.ip] = excluded_reason(login.ip, mynetworks, opts.ignore_nets,
                                                   opts.ipv6_shared_keys)
        why = exclusions[login.ip]
        if why:
            say(f"skipped {login.ip} ({login.pattern}): {why}")
            if opens:
                # Its key is taken (a process serves one client at a time):
                # the session there ends, though this login opens none.
                events.append(SessionEnd(login.session, login.when))
            continue
        if opens:
            events.append(login)
        if old:
            if talk:
                say(f"session of {login.ip} ({login.pattern}) opened at "
                    f"{human_time(login.when, now)}: older than the grace window")
            continue
        if talk:
            say(f"login {login.ip} user={login.user} at "
                f"{human_time(login.when, now, opts.grace)} ({login.pattern})")
        summary.logins += 1
        logins.append(login)
    return logins


def publish_with_state(store: Store, plan: Plan, warn: Say,
                       staged: Sequence[tuple[str, str]]) -> None:
    """Write the map, then the state: the state files are staged first, so a
    full state file system fails the run before the map changed, and renamed
    into place after it. The pending addresses go before the offset: a crash
    between the two re-reads lines whose address lines are already pending,
    which is harmless."""
    tmps: list[tuple[str, str]] = []
    try:
        for path, text in staged:
            try:
                tmps.append((stage_file(path, text), path))
            except OSError as e:
                raise PbsmtpError(f"cannot write {path}: {e.strerror}") from None
        if plan.changed or not store.exists():
            for w in store.publish(plan):
                warn(w)
        for tmp, path in tmps:
            try:
                commit_file(tmp, path)
            except OSError as e:
                raise PbsmtpError(f"cannot write {path}: {e.strerror}") from None
    finally:
        for tmp, _ in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every pass of one invocation shares and none changes: the
    patterns, the opened store, Postfix's mynetworks and the state files.
    Made once (prepare), so that a second pass (run_caught_up) starts at
    once, without loading the pattern files or running postconf again."""
    patterns: Sequence[Pattern]
    store: Store
    mynetworks: Sequence[tuple[bool, Network]]
    state: StateDir
    files: SourceFiles


def prepare(opts: Options, say: Say = quiet, warn: Say = quiet) -> Setup:
    """The checks and set-up before a run's first pass; raises PbsmtpError
    before anything is read or written."""
    if opts.journal:
        check_journal(opts.journal_directory)
    elif not os.path.isfile(opts.logfile) or not os.access(opts.logfile, os.R_OK):
        reason = "does not exist" if not os.path.exists(opts.logfile) else "cannot be read"
        raise PbsmtpError(f"log {opts.logfile} {reason}")
    patterns = load_patterns(opts.patterns_dir, opts.patterns)
    store = open_store(opts)
    # Only a run that writes a Postfix map needs Postfix; a dry run before
    # Postfix is configured warns once and leaves nothing out.
    needs_postfix = store.needs_postfix
    mynetworks = read_mynetworks(opts.postfix_config, warn if needs_postfix else say,
                                 required=needs_postfix and opts.write)
    if opts.write:
        store.check()
    state = StateDir(opts.state_dir)
    return Setup(patterns, store, mynetworks, state, state.files_for(opts))


@contextlib.contextmanager
def log_read_errors(logfile: str) -> Iterator[None]:
    """A log file (or a rotated one) that cannot be read, or a damaged
    compressed one, is one Error line."""
    try:
        yield
    except OSError as e:
        raise PbsmtpError(f"cannot read {e.filename or logfile}: {e.strerror}") from None
    except DECOMPRESS_ERRORS as e:
        raise PbsmtpError(f"cannot read a rotated log of {logfile}: {e}") from None


def map_as_left(cache: dict | None, store: Store, grace: int, now: float) -> bool:
    """Whether the map cache says the store is the version the last run left,
    written with this grace, and none of its entries is due to expire."""
    return (cache is not None and cache.get("stamp") == store.stamp()
            and cache.get("grace") == grace
            and (cache.get("expires") is None or now < cache["expires"]))


def run(opts: Options, now: float | None = None, say: Say = quiet, warn: Say = quiet,
        setup: Setup | None = None) -> tuple[Summary, Plan | None]:
    """One pass. ``say`` gets --debug detail, ``warn`` what cron must mail;
    ``setup`` is prepare()'s, made here when not given.

    Nothing is written unless opts.write; the offset is committed only after
    the map is safely in place, so a crash at any point re-reads the same
    lines next time, and merging them again gives the same map.
    """
    now = time.time() if now is None else now
    summary = Summary()
    setup = setup or prepare(opts, say, warn)
    patterns, store, files, state = setup.patterns, setup.store, setup.files, setup.state
    ensure_state_dir(state.path)

    with contextlib.ExitStack() as held:
        locked = held.enter_context(run_lock(state.lock, opts.flock, record=True))
        if locked is not True:
            summary.locked_out = True
            age = int(time.time() - locked.since)
            if age <= opts.lock_timeout:
                return summary, None
            raise PbsmtpError(f"another run (PID {locked.pid or 'unknown'}) has held the lock "
                              f"for {age} s, longer than --lock-timeout={opts.lock_timeout}: "
                              f"it is stuck or far too slow; no log line was read, "
                              f"{purge_expired(store, opts, now, warn)}")
        if opts.flock:
            remove_leftovers(state.path)

        if opts.journal:
            source, saved = open_journal(opts, patterns, now, say, warn, files.offset)
        else:
            saved, problem = (None, None) if opts.reprocess else load_offset(files.offset)
            if problem:
                warn(problem)
        with log_read_errors(opts.logfile):
            if not opts.journal:
                source = FileSource(opts.logfile, saved, now - opts.grace, warn,
                                    anchors=pattern_anchors(patterns), now=now,
                                    rotated_dirs=opts.rotated_dirs)
            pending = load_pending(files.pending, now) if saved else {}
            events: list[Login | SessionEnd] | None = [] if opts.max_session else None
            logins = collect_logins(source, patterns, setup.mynetworks, opts, now, summary, say,
                                    pending, events)
            summary.lines = source.lines_read
            position = source.state()
        # The run lock keeps --grant and --revoke out until the run ends.
        manual, manual_text_now = by_hand(state.manual, now, opts.grace, warn)
        found = len(logins)
        logins = unrevoked(logins, manual, now, opts.grace, say)
        summary.logins -= found - len(logins)       # kept logins only
        was_open, sessions_problem = load_sessions(files.sessions)
        if sessions_problem:
            warn(sessions_problem)
        sessions = None
        if events is not None:
            still = sessions_still_allowed(was_open, manual, setup.mynetworks, opts, now, say)
            events = [e for e in events if not isinstance(e, Login)
                      or revoked_login(e, manual, now, opts.grace) is None]
            sessions = pair_sessions(still, events, now, opts.grace, opts.max_session)
            report_sessions(sessions, now, opts, say, warn)
            logins = logins + sessions.logins
            summary.sessions = len(sessions.sessions)

        staged = [] if position == saved else [
            (files.pending, pending_text(trim_pending(pending, now))),
            (files.offset, cursor_text(opts.journal_directory, position) if opts.journal
             else offset_text(opts.logfile, position))]
        # The sessions go before the offset, as the pending addresses do: a
        # crash between the two re-reads lines that open and end the same
        # sessions again.
        now_open = sessions.sessions if sessions is not None else {}
        if now_open != was_open or sessions_problem:
            staged.insert(len(staged) - 1 if staged else 0,
                          (files.sessions, sessions_text(now_open)))
        if manual_text_now is not None:
            staged.append((state.manual, manual_text_now))
        # From here to the end the store is read, merged and written under
        # the map lock, which a run locked out by a stuck one takes to purge.
        held.enter_context(run_lock(state.map_lock, opts.flock, wait=True))
        cache = load_map_cache(files.map_cache)
        if saved is not None and not logins and map_as_left(cache, store, opts.grace, now):
            # Nothing to add and nothing due to expire, and the map is the
            # one the last run left: reading and rewriting it would change
            # nothing, and on a quiet log that is most runs.
            say("no logins, and the map is as left with nothing due to expire: not read")
            summary.active = cache.get("active", 0)
            if opts.write:
                publish_with_state(store, Plan(entries={}), warn, staged)
            return summary, Plan(entries={}, sessions=sessions)

        plan, body = merge_store(store, files.entries, logins, now, opts, manual, warn)
        apply_manual(plan, manual, now, opts.grace)
        plan.sessions = sessions
        warn_invalid(plan, warn)
        summary.added, summary.refreshed = len(plan.added), len(plan.refreshed)
        summary.expired, summary.active = len(plan.expired), plan.size
        if opts.write:
            publish_with_state(store, plan, warn, staged)
            save_map_cache(files.map_cache, store, plan, opts.grace,
                           earliest=int(body[:body.find(" ")]) if body else None)
            save_entries(files.entries, store, plan, body)
    return summary, plan


def by_hand(path: str, now: float, grace: int, warn: Say) -> tuple[Manual, str | None]:
    """The grants and revocations in force for this run, and the state
    file's new text when some have ended (to stage with the run's other
    state files), else None. A corrupt file is left for the admin to see,
    with a warning on every run."""
    manual, problem = load_manual(path)
    if problem:
        warn(f"{problem}; no grant or revocation made by hand applies until it is "
             f"fixed or removed")
    live = live_manual(manual, now, grace)
    return live, (manual_text(live) if live != manual else None)


def unrevoked(logins: Iterable[Login], manual: Manual, now: float, grace: int, say: Say
              ) -> list[Login]:
    """The logins that no revocation keeps out (revoked_login)."""
    kept = []
    for login in logins:
        revoke = revoked_login(login, manual, now, grace)
        if revoke is None:
            kept.append(login)
        else:
            say(f"skipped {login.ip} ({login.pattern}): revoked by {printable(revoke.by)} at "
                f"{iso_local(revoke.at)}" + ("" if revoke.until is None else
                                             f" until {iso_local(revoke.until)}"))
    return kept


def sessions_still_allowed(sessions: Mapping[SessionKey, Session], manual: Manual,
                           mynetworks: Sequence[tuple[bool, Network]], opts: Options,
                           now: float, say: Say) -> dict[SessionKey, Session]:
    """The open sessions whose addresses may still be in the map. A
    revocation ends the sessions that began before it (one for a time, every
    session), and mynetworks, --ignore-net and --ipv6-shared-keys=skip end
    those they cover now: an open session must never keep an address in the
    map that a login could not put there. Their addresses then expire a
    grace window after their last refresh (a revocation removes them now)."""
    kept = {}
    for key, s in sessions.items():
        revoke = revoked_login(Login(s.ip, s.start, s.user, key[0]), manual, now, opts.grace)
        why = (f"revoked by {printable(revoke.by)}" if revoke is not None else
               excluded_reason(s.ip, mynetworks, opts.ignore_nets, opts.ipv6_shared_keys))
        if why:
            say(f"session {key[3]} of {s.ip} ({key[0]}) ended: {why}")
        else:
            kept[key] = s
    return kept


def report_sessions(plan: SessionPlan, now: float, opts: Options, say: Say, warn: Say
                    ) -> None:
    """--debug lines for what the sessions did; a warning when some were
    forgotten past SESSIONS_MAX."""
    for s in plan.opened:
        say(f"session {s.key[3]} of {s.ip} user={s.user} ({s.key[0]}) open since "
            f"{human_time(s.start, now)}")
    for s, end, why in plan.ended:
        say(f"session {s.key[3]} of {s.ip} ({s.key[0]}) ended by {why} at "
            f"{human_time(end, now, opts.grace)}")
    for s in plan.kept:
        say(f"session {s.key[3]} of {s.ip} ({s.key[0]}) still open: {s.ip} refreshed")
    if plan.dropped:
        warn(f"more than {SESSIONS_MAX} open sessions: forgot the {plan.dropped} oldest "
             f"(their addresses expire a grace window after their last refresh)")


def merge_store(store: Store, entries_file: str, logins: list[Login], now: float,
                opts: Options, manual: Manual, warn: Say) -> tuple[Plan, str | None]:
    """The plan for this run's logins and expiries. A Postfix map that can
    be updated in place, with an entries cache of its current version, is
    merged touching only what changes (the cache body after it is returned
    too); else the entries are read whole (from the cache, or the store).
    While a grant or revocation made by hand is in force, the entries are
    read whole: apply_manual must see every entry of the map."""
    updatable = store.updates_by_key() and not (manual.grants or manual.revokes)
    cache = open_entries(entries_file, store.stamp()) if updatable else None
    if cache is not None and cache.active >= UPDATE_IN_PLACE_MIN:
        try:
            done = merge_update(cache, logins, now, opts.grace, lambda keys: query_map(
                store.dbfile, store.map_type, keys, store.config_dir))
        except ValueError:
            done, cache = None, None         # not to be trusted: read the map
        if done is not None:
            return done
    cached = cached_entries(cache) if cache is not None else None
    base = read_store(store, opts, warn) if cached is None else cached
    plan = merge(base or {}, logins, now, opts.grace, checked=cached is not None)
    # A map set aside as unreadable is rebuilt whole, never updated.
    plan.base_is_map = base is not None
    return plan, None


def warn_invalid(plan: Plan, warn: Say) -> None:
    """Map entries that were not an address with an all-digit time are
    dropped: the admin hears of it once per run."""
    if plan.invalid:
        warn(f"dropped {len(plan.invalid)} map entries that are not an address "
             f"with an all-digit time, e.g. {next(iter(plan.invalid))!r}")


def read_store(store: Store, opts: Options, warn: Say) -> dict[str, str] | None:
    """The store's entries. A Postfix map that postmap cannot read stops a
    run (it would lose every entry); --reprocess, which rebuilds the grace
    window from the logs, copies it aside and starts from nothing (None)."""
    try:
        return store.read()
    except PbsmtpError as e:
        if not store.rebuildable:
            raise
        if not opts.reprocess:
            raise PbsmtpError(f"{e}; run pbsmtp-batch --reprocess to rebuild the map "
                              f"from the logs") from None
        if not opts.write:
            warn(f"{e}; --reprocess would copy it aside and rebuild it from the logs")
            return None
        try:
            aside = store.set_aside()
        except OSError as copy_error:
            raise PbsmtpError(f"{e}; cannot copy it aside to {copy_error.filename}: "
                              f"{copy_error.strerror}") from None
        warn(f"{e}; copied it to {aside} and rebuilt the map from the logs")
        return None


def purge_expired(store: Store, opts: Options, now: float, warn: Say) -> str:
    """Expiry for a run that a stuck run locks out (see run_lock).

    Expiry needs no log line: it is the map and the clock. So the run that
    finds the lock held too long still drops the expired entries, under the
    short map lock that every run takes only while it reads and writes the
    store. The stuck run, when it gets there, reads the store again (its
    stamp changed). The log, the offset and the pending addresses stay the
    stuck run's. Returns what was done, for the Error line.
    """
    with run_lock(StateDir(opts.state_dir).map_lock, True) as free:
        if free is not True:
            return "and the map is being written right now"
        try:
            plan = merge(store.read(), [], now, opts.grace)
            if opts.write and (plan.expired or plan.invalid):
                for w in store.publish(plan):
                    warn(w)
        except PbsmtpError as e:
            return f"and expired entries could not be purged: {e}"
    verb = "purged" if opts.write else "due (not purged: --nowrite)"
    return f"{len(plan.expired)} expired entries {verb}"


def unread_lines(opts: Options) -> bool:
    """Whether complete lines were added to the log after the offset that the
    last run committed."""
    if opts.journal:
        return False         # the path unit watches files; the journal is read by cron
    saved, _ = load_offset(StateDir(opts.state_dir).log(opts.logfile).offset)
    try:
        with open(opts.logfile, "rb") as f:
            if saved is None or os.fstat(f.fileno()).st_ino != saved.current.inode:
                return False
            f.seek(saved.current.offset)
            return b"\n" in f.read(1 << 20)
    except OSError:
        return False


def run_caught_up(opts: Options, now: float | None = None, say: Say = quiet,
                  warn: Say = quiet, passes: int = 3,
                  each: Callable[[Plan], None] = lambda plan: None
                  ) -> tuple[Summary, Plan | None]:
    """run(), again while lines arrived during the last pass, with one
    set-up for all passes.

    systemd's path unit ignores the writes made while its service runs, so a
    login logged during a run would wait for the next write or the timer;
    one more pass picks it up at once. Bounded: a log that never stops
    growing is left to the next trigger.
    """
    total = Summary()
    setup = prepare(opts, say, warn)
    for _ in range(passes):
        summary, plan = run(opts, now, say, warn, setup)
        if plan is not None:
            each(plan)
        for field in ("lines", "logins", "added", "refreshed", "expired"):
            setattr(total, field, getattr(total, field) + getattr(summary, field))
        total.active, total.locked_out = summary.active, summary.locked_out
        total.sessions = summary.sessions
        if summary.locked_out or not opts.write or not unread_lines(opts):
            break
    return total, plan


def list_entries(store: Store, now: float, grace: int,
                 sessions: Sequence[Session] = (), max_session: int = 0) -> list[dict]:
    """The map's entries, each with the open sessions that keep it (a
    session whose address is not in the map gets a row with no login)."""
    by_ip: dict[str, list[dict]] = {}
    for s in sorted(sessions, key=lambda x: (x.start, x.key)):
        by_ip.setdefault(s.ip, []).append({
            "id": s.key[3], "pattern": s.key[0], "host": s.key[1], "program": s.key[2],
            "user": s.user, "start": s.start, "age": int(now - s.start),
            "ends_by": s.start + max_session})
    rows = []
    entries = store.read()
    for ip in sorted(set(entries) | set(by_ip)):
        value = entries.get(ip, "")
        when = int(value) if value.isdigit() else None
        rows.append({"ip": ip, "login": when,
                     "age": None if when is None else int(now - when),
                     "left": None if when is None else int(when + grace - now),
                     "sessions": by_ip.get(ip, [])})
    return rows


def session_effects(plan: SessionPlan | None, now: float, grace: int) -> list[str]:
    """What a run did (or, dry, would do) to the open sessions, one line each."""
    if plan is None:
        return []
    lines = [f"would open session {s.key[3]} of {s.ip} user={s.user} ({s.key[0]}) "
             f"login {human_time(s.start, now)}" for s in plan.opened]
    lines += [f"would end session {s.key[3]} of {s.ip} ({s.key[0]}) by {why}: "
              f"{human_time(end, now, grace)}" for s, end, why in plan.ended]
    lines += [f"would keep session {s.key[3]} of {s.ip} ({s.key[0]}) open: refresh {s.ip}"
              for s in plan.kept]
    if plan.dropped:
        lines.append(f"would forget the {plan.dropped} oldest open sessions "
                     f"(more than {SESSIONS_MAX})")
    if lines or plan.sessions:
        lines.append(f"open sessions: {len(plan.sessions)}")
    return [printable(line) for line in lines]


def open_sessions(opts: Options, warn: Say) -> list[Session]:
    """The open sessions the last run left for this log (or journal); none
    when sessions are off (the next run forgets them)."""
    if not opts.max_session:
        return []
    sessions, problem = load_sessions(StateDir(opts.state_dir).files_for(opts).sessions)
    if problem:
        warn(problem)
    return list(sessions.values())


###############################################################################
# The support desk: --explain, --grant, --revoke, --check-postfix #############
###############################################################################

def invoking_user(environ: Mapping[str, str] = os.environ) -> str:
    """Who ran this, for the record: the user sudo was run by, else the
    login user, else the name of the real uid; only name characters (the
    record goes to syslog)."""
    name = environ.get("SUDO_USER") or ""
    if not name:
        with contextlib.suppress(OSError):
            name = os.getlogin()
    if not name:
        try:
            name = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            name = f"uid{os.getuid()}"
    return re.sub(r"[^A-Za-z0-9._@+-]", "?", name)[:64] or "?"


@contextlib.contextmanager
def patient_run_lock(path: str, enabled: bool, patience: float = MANUAL_LOCK_PATIENCE
                     ) -> Iterator[None]:
    """The run lock for a command run by hand: wait a while for the run that
    holds it (a run takes seconds), then give up with an Error."""
    deadline = time.monotonic() + patience
    while True:
        with run_lock(path, enabled) as locked:
            if locked is True:
                yield
                return
            if time.monotonic() > deadline:
                raise PbsmtpError(f"another run (PID {locked.pid or 'unknown'}) has held the "
                                  f"lock for {int(time.time() - locked.since)} s; nothing "
                                  f"changed, try again")
        time.sleep(0.2)


def change_by_hand(opts: Options, action: str, ip: str, seconds: int | None, now: float,
                   user: str, warn) -> tuple[Plan, ByHand] | None:
    """--grant or --revoke: record it in the state directory and apply it to
    the store, as a run does (state staged, store published, state
    committed), under the run's locks. None when the address is in
    mynetworks, which relays anyway (a warning says so)."""
    if not opts.write:
        raise PbsmtpError(f"--{action} changes the map: it cannot be a dry run "
                          f"(--dry-run, --nowrite)")
    store = open_store(opts)
    mynetworks = read_mynetworks(opts.postfix_config, warn if store.needs_postfix else quiet,
                                 required=store.needs_postfix)
    why = excluded_reason(ip, mynetworks, opts.ignore_nets, opts.ipv6_shared_keys)
    if why == IN_MYNETWORKS:
        warn(f"{ip} is in Postfix's mynetworks, which relays anyway: nothing to {action}")
        return None
    if why and action == "grant":
        raise PbsmtpError(f"cannot grant {ip}: {why}")
    store.check()
    ensure_state_dir(opts.state_dir)
    state = StateDir(opts.state_dir)
    path = state.manual
    # Checked before the lock too, so that a refusal leaves every file as it
    # was (taking the lock writes the holder into it).
    if (problem := load_manual(path)[1]) is not None:
        raise PbsmtpError(f"{problem}: fix or remove it first")
    with patient_run_lock(state.lock, opts.flock), \
            run_lock(state.map_lock, opts.flock, wait=True):
        manual, problem = load_manual(path)
        if problem:
            raise PbsmtpError(f"{problem}: fix or remove it first")
        manual = live_manual(manual, now, opts.grace)
        if action == "grant":
            record = ByHand(int(now), int(now) + (seconds or opts.grace), user)
            manual.grants[ip] = record
            manual.revokes.pop(ip, None)
        else:
            record = ByHand(int(now), None if seconds is None else int(now) + seconds, user)
            manual.revokes[ip] = record
            manual.grants.pop(ip, None)
        base = read_store(store, opts, warn)
        plan = merge(base or {}, [], now, opts.grace)
        plan.base_is_map = base is not None
        warn_invalid(plan, warn)
        if action == "revoke" and ip in plan.entries:
            # Whatever its value (a grant's lies in the future), it goes.
            plan.expired[ip] = plan.entries.pop(ip)
        apply_manual(plan, manual, now, opts.grace)
        publish_with_state(store, plan, warn, [(path, manual_text(manual))])
    return plan, record


def shortened_keys(ip: str) -> list[str]:
    """The keys Postfix also looks an IPv6 client up by in a fixed-key map:
    its address cut at the last ':', again and again (see shares_ipv6_key),
    that are themselves full addresses, which only such keys can be."""
    keys, key = [], ip
    while ":" in key and "." not in ip:
        key = key.rsplit(":", 1)[0]
        if key and normalise_ip(key) == key:
            keys.append(key)
    return keys


def explain_lines(opts: Options, patterns: Sequence[Pattern], ip: str, now: float, say,
                  warn) -> tuple[list[tuple[Login, str]], list[str]]:
    """The logins of this address in the log (or journal), from the day before
    the grace window on, with their lines, and the lines naming it that were
    refused as unsafe. Reads like a first run, from no saved position, and
    writes nothing."""
    since = now - opts.grace - EXPLAIN_LOOKBACK
    refused: list[str] = []
    if opts.journal:
        source = JournalReader(opts.journal_directory, opts.journal_match, None, since,
                               patterns, say=refused.append, warn=warn)
    else:
        if not os.path.isfile(opts.logfile) or not os.access(opts.logfile, os.R_OK):
            reason = "does not exist" if not os.path.exists(opts.logfile) else "cannot be read"
            raise PbsmtpError(f"log {opts.logfile} {reason}")
        source = FileSource(opts.logfile, None, since, warn, anchors=pattern_anchors(patterns),
                            now=now, rotated_dirs=opts.rotated_dirs)
    logins: list[tuple[Login, str]] = []
    pending: Pending = {}
    try:
        for raw in source:
            line = decode(raw)
            login, reason = match_login(line, patterns, now, pending)
            if login is not None and login.ip == ip:
                logins.append((login, line))
            elif reason and ip in line:
                refused.append(f"{reason}: {line}")
    except OSError as e:
        raise PbsmtpError(f"cannot read {e.filename or opts.logfile}: {e.strerror}") from None
    except DECOMPRESS_ERRORS as e:
        raise PbsmtpError(f"cannot read a rotated log of {opts.logfile}: {e}") from None
    return logins, [r for r in refused if ip in r]


def explain(opts: Options, ip: str, now: float, echo, warn) -> None:
    """--explain=IP: what pbsmtp-batch knows about one address, for support:
    the store's entry, grants and revocations by hand, whether the policy
    leaves it out and why, and its last logins in the log. Reads only."""
    grace = opts.grace
    echo(f"address {ip}")
    store = open_store(opts)
    entries: dict[str, str] = {}
    try:
        entries = store.read()
    except PbsmtpError as e:
        echo(f"  map: cannot be read: {e}")
    manual, problem = load_manual(StateDir(opts.state_dir).manual)
    if problem:
        warn(problem)
    grant, revoke = manual.grants.get(ip), manual.revokes.get(ip)
    value = entries.get(ip)
    if value is not None and value.isdigit():
        when = int(value)
        state = ("relays" if when + grace > now else
                 "expired: the next run removes it")
        if grant is not None and grant.until == when + grace:
            echo(f"  map: in the map by the grant below: {state} until "
                 f"{iso_local(when + grace)} (left {_age(int(when + grace - now))})")
        else:
            echo(f"  map: in the map, login {human_time(when, now, grace)}: {state} until "
                 f"{iso_local(when + grace)}")
    elif value is not None:
        echo(f"  map: in the map with {_short(value)}, which is not a time: the next run "
             f"drops it")
    else:
        echo("  map: not in the map")
    for key in shortened_keys(ip):
        if entries.get(key, "").isdigit():
            echo(f"  map: Postfix's shortened lookup of this client also hits the key {key}, "
                 f"which relays until {iso_local(int(entries[key]) + grace)}")

    if grant is not None:
        state = "in force" if now < (grant.until or 0) else "ended"
        echo(f"  by hand: granted by {printable(grant.by)} at {iso_local(grant.at)} until "
             f"{iso_local(grant.until)} ({state})")
    if revoke is not None:
        until = ("its next login" if revoke.until is None else iso_local(revoke.until))
        state = "in force" if revoke_holds(revoke, now, grace) else "ended"
        echo(f"  by hand: revoked by {printable(revoke.by)} at {iso_local(revoke.at)}, out until "
             f"{until} ({state})")

    try:
        sessions = [s for s in open_sessions(opts, warn) if s.ip == ip]
    except PbsmtpError as e:
        sessions = []
        warn(str(e))
    for s in sorted(sessions, key=lambda x: (x.start, x.key)):
        echo(printable(f"  session: {s.key[3]} ({s.key[0]}, {s.key[1] or '-'} {s.key[2]}) "
                       f"user={s.user} open since {human_time(s.start, now)}: keeps it in the "
                       f"map until it ends, at the latest "
                       f"{iso_local(s.start + opts.max_session)}"))

    notes: list[str] = []
    mynetworks = read_mynetworks(opts.postfix_config, notes.append, required=False)
    why = excluded_reason(ip, mynetworks, opts.ignore_nets, opts.ipv6_shared_keys)
    if why:
        echo(f"  left out: {why}")
    elif shares_ipv6_key(ip):
        echo("  note: its key is also hit by Postfix's shortened lookups for other clients "
             "of its /64 (--ipv6-shared-keys=skip leaves such keys out)")
    for note in notes:
        echo(f"  note: {note}")

    patterns = load_patterns(opts.patterns_dir, opts.patterns)
    logins, refused = explain_lines(opts, patterns, ip, now, lambda msg: None, warn)
    where = "the journal" if opts.journal else opts.logfile
    echo(f"  logins in {where} since {iso_local(now - grace - EXPLAIN_LOOKBACK)}: "
         f"{len(logins) or 'none'}" + (f", the last {EXPLAIN_LINES}:" if len(logins) >
                                       EXPLAIN_LINES else ""))
    live = live_manual(manual, now, grace)
    open_keys = {s.key for s in sessions}
    for login, line in logins[-EXPLAIN_LINES:]:
        if why:
            verdict = f"left out: {why}"
        elif (r := revoked_login(login, live, now, grace)) is not None:
            verdict = f"left out: revoked by {printable(r.by)} at {iso_local(r.at)}"
        elif login.session in open_keys:
            verdict = "counts: its session is open (above)"
        elif login.when < now - grace:
            verdict = f"too old: the grace window ended at {iso_local(login.when + grace)}"
        else:
            verdict = f"counts: relays until {iso_local(min(login.when, now) + grace)}"
        echo(f"    {iso_local(login.when)} user={printable(str(login.user))} "
             f"pattern={login.pattern}: {verdict}")
        echo(f"      {printable(line)}")
    if refused:
        echo(f"  lines naming it that were refused as unsafe: {len(refused)}")
        for item in refused[-EXPLAIN_LINES:]:
            echo(f"    {printable(item)}")


def postconf_values(names: Sequence[str], config_dir: str | None) -> dict[str, str]:
    """Postfix parameters, expanded (postconf -x), in one call."""
    out = run_tool(postfix_cmd("postconf", config_dir, "-x", *names), "postconf")
    values = {}
    for line in out.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name.strip()] = value.strip()
        elif line.endswith(" ="):
            values[line[:-2].strip()] = ""
    return values


def _path_chain(path: str) -> list[tuple[str, os.stat_result]]:
    path = os.path.abspath(path)
    parts = [path]
    while os.path.dirname(parts[-1]) != parts[-1]:
        parts.append(os.path.dirname(parts[-1]))
    return [(p, os.stat(p)) for p in reversed(parts)]


def readable_by(path: str, user: str, needed: bool) -> Finding:
    """Whether USER (mail_owner) can read PATH by its mode bits and those of
    its directories. smtpd opens its tables as root, before it drops
    privileges and enters its chroot (Postfix's single_server/multi_server
    run pre_init first), so only what reads them as the user needs it:
    proxymap for a ``proxy:`` table (``needed``), or a tool run as postfix."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return Finding(False, f"user {user} (mail_owner) does not exist")
    try:
        chain = _path_chain(path)
    except OSError as e:
        return Finding(False, f"cannot check {path}: {e.strerror}")
    why = unreadable_reason(chain, account.pw_uid, os.getgrouplist(user, account.pw_gid), user)
    if why is None:
        return Finding(True, f"user {user} (mail_owner) can read {path}")
    if needed:
        return Finding(False, f"{why}: proxymap, which reads proxy: tables as {user}, cannot")
    return Finding(None, f"{why}: smtpd opens the map as root, so it works, but "
                         f"nothing running as {user} can read it (proxy:, postmap -q)")


def postmap_query(table: str, config_dir: str | None) -> Finding:
    """Whether postmap -q reads the table (a lookup of an address that is
    never stored: found or not found are both a working table)."""
    cmd = postfix_cmd("postmap", config_dir, "-q", "0.0.0.0", table)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Finding(False, f"cannot run postmap -q on {table}: {e}")
    detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    # Not found is exit 1 too, but with nothing on stderr; a table it cannot
    # open is exit 1 with a "fatal:" line.
    if done.returncode not in (0, 1) or "fatal:" in done.stderr:
        return Finding(False, f"postmap -q cannot read {table}: {detail}")
    if done.stderr.strip():
        return Finding(None, f"postmap -q reads {table}, but says: {detail}")
    return Finding(True, f"postmap -q reads {table}")


def cf_settings(path: str) -> dict[str, str]:
    """A Postfix *_table(5) file's name = value settings (continuation
    lines start with white space)."""
    settings, last = {}, None
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and last:
            settings[last] += " " + line.strip()
            continue
        name, _, value = line.partition("=")
        last = name.strip()
        settings[last] = value.strip()
    return settings


def check_postfix(opts: Options) -> list[Finding]:
    """--check-postfix: is the store wired into this Postfix instance so that
    smtpd asks it before refusing relay, and can Postfix read it?"""
    if opts.backend in ("sendmail", "qmail", "exim"):
        raise PbsmtpError(f"--check-postfix checks Postfix's configuration; "
                          f"--backend={opts.backend} is read by another MTA")
    find_tool("postconf")
    problem = postfix_not_configured(opts.postfix_config)
    if problem:
        raise PbsmtpError(problem)
    values = postconf_values(["mail_version", "mail_owner", "config_directory",
                              "smtpd_relay_restrictions", "smtpd_recipient_restrictions"],
                             opts.postfix_config)
    version = postfix_version(values.get("mail_version", ""))
    owner = values.get("mail_owner") or "postfix"
    findings = [Finding(True, f"Postfix {values.get('mail_version', '?')} "
                              f"({values.get('config_directory', '?')})")]
    if opts.backend == "postfix":
        map_type = opts.map_type or default_map_type(opts.postfix_config)
        findings += wiring_findings(version, values.get("smtpd_relay_restrictions", ""),
                                    values.get("smtpd_recipient_restrictions", ""),
                                    map_type, opts.dbfile)
        path = map_file(opts.dbfile, map_type)
        if not os.path.exists(path):
            findings.append(Finding(False, f"map file {path} does not exist (smtpd answers "
                                           f"\"451 temporary lookup failure\"): run "
                                           f"pbsmtp-batch once"))
            return findings
        findings.append(Finding(True, f"map file {path} exists"))
        findings.append(postmap_query(f"{map_type}:{opts.dbfile}", opts.postfix_config))
        proxied = any(r == "check_client_access" and t and t.startswith("proxy:")
                      and table_parts(t) == (map_type, opts.dbfile)
                      for v in (values.get("smtpd_relay_restrictions", ""),
                                values.get("smtpd_recipient_restrictions", ""))
                      for r, t in restriction_items(v))
        findings.append(readable_by(path, owner, proxied))
        return findings
    # The shared stores: their Postfix tables are *.cf files named in the
    # restriction lists; find those of the backend's type.
    findings += wiring_findings(version, values.get("smtpd_relay_restrictions", ""),
                                values.get("smtpd_recipient_restrictions", ""),
                                opts.backend, None)
    tables = sorted({t for v in (values.get("smtpd_relay_restrictions", ""),
                                 values.get("smtpd_recipient_restrictions", ""))
                     for r, t in restriction_items(v) if r == "check_client_access" and t
                     and table_parts(t)[0] == opts.backend})
    for table in tables:
        cf = table_parts(table)[1]
        if not os.path.isfile(cf):
            findings.append(Finding(False, f"{table}: {cf} does not exist"))
            continue
        proxied = table.startswith("proxy:")
        findings.append(readable_by(cf, owner, proxied))
        try:
            settings = cf_settings(cf)
        except OSError as e:
            findings.append(Finding(False, f"cannot read {cf}: {e.strerror}"))
            continue
        if opts.backend == "sqlite":
            dbpath = settings.get("dbpath", "")
            if os.path.abspath(dbpath) != os.path.abspath(opts.dbfile):
                findings.append(Finding(False, f"{cf}: dbpath = {dbpath or '(none)'}, but "
                                               f"pbsmtp-batch writes {opts.dbfile}"))
            elif os.path.exists(dbpath):
                findings.append(readable_by(dbpath, owner, proxied))
        if opts.backend == "memcache":
            key_format = settings.get("key_format", "%s")
            if key_format != opts.memcache_prefix + "%s":
                findings.append(Finding(False, f"{cf}: key_format = {key_format}, but "
                                               f"--memcache-prefix is {opts.memcache_prefix} "
                                               f"(key_format must be {opts.memcache_prefix}%s)"))
        if opts.backend in ("pgsql", "mysql", "sqlite"):
            table_name = opts.pg_table if opts.backend == "pgsql" else (
                opts.mysql_table if opts.backend == "mysql" else DEFAULT_TABLE)
            if table_name not in settings.get("query", ""):
                findings.append(Finding(False, f"{cf}: the query does not read the table "
                                               f"{table_name}"))
            if str(opts.grace) not in settings.get("query", ""):
                findings.append(Finding(None, f"{cf}: the query's grace window does not "
                                              f"look like --grace={opts.grace}"))
        findings.append(postmap_query(table, opts.postfix_config))
    return findings


###############################################################################
# The pattern tester ##########################################################
###############################################################################

def match_sample(sample: Sample, patterns: Sequence[Pattern], now: float
                 ) -> tuple[Login | None, str | None]:
    """match_login for a pattern file's sample, after its earlier lines."""
    pending: Pending = {}
    for line in sample.before:
        match_login(line, patterns, now, pending)
    return match_login(sample.line, patterns, now, pending)


# Sample lines may be years old: their sessions may last that long.
MAX_SESSION_SAMPLES = 100 * 366 * 86400


def match_logout_sample(sample: Sample, patterns: Sequence[Pattern], now: float) -> str | None:
    """The session id a [[logout.sample]] ends: after the login lines in its
    ``before``, the id of the session that pairing really ended (so the
    whole key counts); without them, the id the line names."""
    end, _ = match_logout(sample.line, patterns, now)
    if end is None or not sample.before:
        return end and end.key[3]
    logins = [login for login, _ in (match_login(b, patterns, now) for b in sample.before)
              if login is not None and login.session is not None]
    plan = pair_sessions({}, [*logins, end], end.when, 1, MAX_SESSION_SAMPLES)
    return next((s.key[3] for s, _, why in plan.ended if why == "logout"), None)


# What a login line tends to say, for lines that no pattern matched: a login
# word and an address. Lines that say why a login failed are left out.
_LOGINISH = re.compile(r"(?i)\b(?:log(?:ged)?[ -]?in|auth\w*|user=)")
_ADDRESSISH = re.compile(r"[0-9A-Fa-f:.]{2,}")

# Dovecot 2.4's auth process logs a refused name verbatim: "Username character
# disallowed by auth_username_chars ... (username: x, rip=...)".
_FAILURE = re.compile(r"(?i)fail|fatal|invalid|denied|mismatch|unknown user|not found|abort|"
                      r"disconnect|logout|logged out|error|refused|timeout|exceeded|empty|bad|"
                      r"disallow|not allowed|reject|forbidden|block|unauthori|illegal|"
                      r"disabled|expired|locked|unsupported|too many|too long|penalty|"
                      r"cancel")


def sample_failures(patterns: Sequence[Pattern], now: float) -> list[str]:
    """Every sample whose result differs from what its file expects."""
    failures = []
    for pattern in patterns:
        for sample in pattern.samples:
            login, _ = match_sample(sample, patterns, now)
            got = (login.ip, login.user) if login else None
            want = (sample.ip, sample.user) if sample.ip else None
            if sample.ip and sample.user is None and login:
                want = (sample.ip, login.user)           # the sample names no user
            if got != want:
                failures.append(f"{pattern.path}: sample {sample.desc!r}: "
                                f"expected {want or 'no match'}, got {got or 'no match'}")
            elif sample.session and (login.session or "-")[-1] != sample.session:
                failures.append(f"{pattern.path}: sample {sample.desc!r}: expected session "
                                f"{sample.session}, got {login.session and login.session[3]}")
        for sample in pattern.logout.samples if pattern.logout else ():
            got = match_logout_sample(sample, patterns, now)
            if got != sample.session:
                failures.append(f"{pattern.path}: logout sample {sample.desc!r}: expected "
                                f"{sample.session or 'no end'}, got {got or 'no end'}")
    return failures


@dataclasses.dataclass
class PatternReport:
    lines: int = 0
    hits: dict[str, int] = dataclasses.field(default_factory=dict)
    addresses: dict[str, set] = dataclasses.field(default_factory=dict)
    refused: list[str] = dataclasses.field(default_factory=list)
    unmatched: list[str] = dataclasses.field(default_factory=list)
    untimed: int = 0             # lines whose prefix gives no time: never a login
    untimed_examples: list[str] = dataclasses.field(default_factory=list)

    def as_json(self, failures: Sequence[str]) -> dict:
        return {"lines": self.lines,
                "patterns": {name: {"hits": self.hits[name],
                                    "addresses": sorted(self.addresses[name])}
                             for name in sorted(self.hits)},
                "logins": sum(self.hits.values()),
                "distinct_addresses": len(set().union(*self.addresses.values())
                                          if self.addresses else ()),
                "untimed": self.untimed, "untimed_examples": self.untimed_examples,
                "refused": self.refused, "unmatched": self.unmatched,
                "sample_failures": list(failures)}


def check_log(lines: Iterable[str], patterns: Sequence[Pattern], now: float) -> PatternReport:
    """What the patterns find in a log, and what looks like a login but
    matched nothing (to be read by a person: a heuristic, not a verdict)."""
    report = PatternReport(hits={p.name: 0 for p in patterns},
                           addresses={p.name: set() for p in patterns})
    pending: Pending = {}     # two-line servers pair their lines here as in a run
    for raw in lines:
        report.lines += 1
        line = decode(raw)
        login, reason = match_login(line, patterns, now, pending)
        if login:
            report.hits[login.pattern] += 1
            report.addresses[login.pattern].add(login.ip)
        elif reason:
            report.refused.append(f"{reason}: {line}")
        elif not line.strip():
            continue
        elif (prefix := parse_prefix(line, now)) is None or prefix.when is None:
            report.untimed += 1
            if len(report.untimed_examples) < UNTIMED_EXAMPLES:
                report.untimed_examples.append(line)
        elif (_LOGINISH.search(line) and not _FAILURE.search(line)
              and any(normalise_ip(t.strip(".:")) for t in _ADDRESSISH.findall(line))):
            report.unmatched.append(line)
    return report


def check_journal_patterns(opts: Options, patterns: Sequence[Pattern], now: float
                           ) -> PatternReport:
    """check_log over the whole journal: entries whose sender the pattern for
    their identifier does not trust are "refused as unsafe"."""
    refused: list[str] = []
    reader = JournalReader(opts.journal_directory, opts.journal_match, None, None, patterns,
                           say=refused.append, everything=True)
    report = check_log(reader, patterns, now)
    report.lines = reader.lines_read
    report.refused.extend(refused)
    return report


def print_pattern_report(report: PatternReport, failures: Sequence[str],
                         shown: int | None = 20, echo: Say = print, every_pattern: bool = False
                         ) -> None:
    """The tester's report; only patterns with hits unless every_pattern,
    and at most ``shown`` lines of each finding (None: all of them)."""
    echo(f"{'pattern':<20} {'hits':>8} {'addresses':>10}")
    for name in sorted(report.hits, key=lambda n: (-report.hits[n], n)):
        if report.hits[name] or every_pattern:
            echo(f"{name:<20} {report.hits[name]:>8} {len(report.addresses[name]):>10}")
    everyone = set().union(*report.addresses.values()) if report.addresses else set()
    echo(f"{report.lines} lines, {sum(report.hits.values())} logins from "
         f"{len(everyone)} distinct addresses")
    for title, items in (("refused as unsafe", report.refused),
                         ("look like logins but matched no pattern", report.unmatched),
                         ("sample failures", failures)):
        echo(f"{len(items)} {title}" + (":" if items else ""))
        for item in items if shown is None else items[:shown]:
            echo(f"  {printable(item)}")
        if shown is not None and len(items) > shown:
            echo(f"  ... and {len(items) - shown} more (-v shows all)")
    echo(f"{report.untimed} lines without a time it can read (never a login)"
         + (", e.g.:" if report.untimed else ""))
    for item in report.untimed_examples:
        echo(f"  {item}")


###############################################################################
# The command line ############################################################
###############################################################################

class ChangeLog:
    """--logto=FILE: every add and remove on its own line, as pop-before-smtp
    wrote them ("%b %e %T added IP to DB", "... removed IP from DB");
    ``-`` is standard output. The file is opened (appended to) before the
    run, so that an unwritable one fails before anything changed."""

    def __init__(self, target: str):
        self.target = target
        self._file = None
        if target != "-":
            try:
                self._file = open(target, "a", encoding="utf-8")
            except OSError as e:
                raise PbsmtpError(f"cannot write --logto file {target}: {e.strerror}") from None

    def record(self, plan: Plan, now: float) -> None:
        t = time.localtime(now)
        stamp = time.strftime("%b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S", t)
        lines = [f"{stamp} added {ip} to DB" for ip in sorted(plan.added)]
        lines += [f"{stamp} removed {ip} from DB" for ip in sorted({**plan.expired,
                                                                    **plan.invalid})]
        if self._file is None:
            for line in lines:
                click.echo(line)
            return
        try:
            self._file.writelines(line + "\n" for line in lines)
            self._file.flush()
        except OSError as e:
            raise PbsmtpError(f"cannot write --logto file {self.target}: {e.strerror}") from None

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()


# Where syslog(3) sends its datagrams. A module constant, not an option or a
# variable: nothing in cron's environment can point the run log elsewhere.
SYSLOG_SOCKET = "/dev/log"
SYSLOG_MAIL_INFO = 2 * 8 + 6     # facility mail, severity info (RFC 5424 numbers)


def log_run(summary: Summary, now: float) -> None:
    """One line through syslog, facility mail, for a run that changed the
    map, in Postfix's style: ``pbsmtp-batch[PID]: added=3 refreshed=5
    expired=2 active=120 lines=5000``."""
    syslog_line(f"added={summary.added} refreshed={summary.refreshed} "
                f"expired={summary.expired} active={summary.active} lines={summary.lines}", now)


def log_by_hand(action: str, ip: str, record: ByHand) -> None:
    """The syslog record of a --grant or --revoke: ``pbsmtp-batch[PID]:
    grant=192.0.2.10 until=2026-11-25T00:00:00+00:00 by=alice``."""
    until = "next-login" if record.until is None else iso_local(record.until)
    syslog_line(f"{action}={ip} until={until} by={record.by}", record.at)


def syslog_line(text: str, now: float) -> None:
    """One line through syslog, facility mail, severity info. Like
    syslog(3), a missing or full log socket loses the line silently: what
    it reports has succeeded."""
    t = time.localtime(now)
    stamp = time.strftime("%b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S", t)
    message = f"<{SYSLOG_MAIL_INFO}>{stamp} pbsmtp-batch[{os.getpid()}]: {text}"
    with contextlib.suppress(OSError):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.sendto(message.encode(), SYSLOG_SOCKET)


# The node_exporter textfile-collector metrics: name -> (type, help).
METRICS = {
    "pbsmtp_batch_last_run_timestamp_seconds": ("gauge", "When the last run ended (Unix time)."),
    "pbsmtp_batch_last_run_success": ("gauge", "1 if the last run succeeded, 0 if it failed."),
    "pbsmtp_batch_last_run_duration_seconds": ("gauge", "How long the last run took."),
    "pbsmtp_batch_last_run_lines_read": ("gauge", "Log lines the last run read."),
    "pbsmtp_batch_last_run_logins": ("gauge", "Logins the last run found and kept."),
    "pbsmtp_batch_last_run_added": ("gauge", "Addresses the last run added."),
    "pbsmtp_batch_last_run_refreshed": ("gauge", "Addresses the last run refreshed."),
    "pbsmtp_batch_last_run_expired": ("gauge", "Addresses the last run expired."),
    "pbsmtp_batch_active_entries": ("gauge", "Addresses allowed to relay after the last "
                                             "successful run."),
    "pbsmtp_batch_open_sessions": ("gauge", "Sessions (logins whose end the log will tell) "
                                            "open after the last successful run."),
    "pbsmtp_batch_errors_total": ("counter", "Runs that failed."),
}


class MetricsFile:
    """--metrics-file=PATH: the node_exporter textfile-collector format,
    replaced by rename so the collector never reads half a file. Every run
    writes it, an idle one too (a small file, no fsync): its last-run time
    is the heartbeat that shows cron is alive. A failed run keeps the last
    known counts, sets success to 0 and counts the error."""

    def __init__(self, path: str):
        self.path = path

    def _previous(self) -> dict[str, float]:
        values = {}
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in Path(self.path).read_text().splitlines():
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    if name in METRICS:
                        values[name] = float(value)
        return values

    def write(self, now: float, duration: float, summary: Summary | None) -> str | None:
        """Write the file; returns a warning instead of raising."""
        values = self._previous()
        values.update({"pbsmtp_batch_last_run_timestamp_seconds": int(now),
                       "pbsmtp_batch_last_run_success": int(summary is not None),
                       "pbsmtp_batch_last_run_duration_seconds": round(duration, 3)})
        if summary is None:
            values["pbsmtp_batch_errors_total"] = \
                values.get("pbsmtp_batch_errors_total", 0) + 1
        else:
            values.update({"pbsmtp_batch_last_run_lines_read": summary.lines,
                           "pbsmtp_batch_last_run_logins": summary.logins,
                           "pbsmtp_batch_last_run_added": summary.added,
                           "pbsmtp_batch_last_run_refreshed": summary.refreshed,
                           "pbsmtp_batch_last_run_expired": summary.expired,
                           "pbsmtp_batch_active_entries": summary.active,
                           "pbsmtp_batch_open_sessions": summary.sessions})
            values.setdefault("pbsmtp_batch_errors_total", 0)
        lines = []
        for name, (kind, text) in METRICS.items():
            if name in values:
                value = values[name]
                shown = int(value) if float(value).is_integer() else value
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {shown}"]
        directory, base = os.path.split(os.path.abspath(self.path))
        remove_leftovers(directory, base)
        try:
            tmp = temp_name(self.path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write("\n".join(lines) + "\n")
                os.chmod(tmp, 0o644)         # the collector runs as its own user
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            return f"cannot write metrics file {self.path}: {e.strerror}"
        return None


_DSN_SECRET = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)|(://[^:/@\s]*:)[^@\s]*(@)")


def _masked(value: str) -> str:
    """A connection string without its password, for printing."""
    return _DSN_SECRET.sub(lambda m: (m[1] + "***") if m[1] else f"{m[3]}***{m[4]}", value)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(str(v)) for v in value) + "]"
    return json.dumps(str(value))


def dump_config(ctx: click.Context, opts: Options, echo: Say, warn: Say) -> None:
    """--dumpconfig: every effective setting and where it came from, the
    pattern files in use, the Postfix instance and its mynetworks, the map.
    The settings are printed as TOML, so they can seed a config file."""
    config = ctx.meta.get("pbsmtp.config")
    echo(f"# pbsmtp-batch {__version__}")
    echo(f"# config file: {config or f'none ({DEFAULT_CONFIG} does not exist)'}")
    for param in ctx.command.params:
        if (not isinstance(param, click.Option) or param.hidden or param.name in ACTIONS
                or param.name == "config"):
            continue
        name = param.opts[0].lstrip("-") if param.opts[0].startswith("--") else param.name
        source = ctx.get_parameter_source(param.name)
        value = ctx.params.get(param.name)
        if source == click.core.ParameterSource.COMMANDLINE:
            where = "command line"
        elif source == click.core.ParameterSource.ENVIRONMENT:
            where = "environment " + next((v for v in option_envvars(param)
                                           if os.environ.get(v)), "")
        elif source == click.core.ParameterSource.DEFAULT_MAP:
            where = f"config file {config}"
        else:
            where = "default"
        if param.name == "logfile" and value is None:
            value, where = opts.logfile, "default (the first that exists of "\
                + ", ".join(DEFAULT_LOGFILES) + ")"
        if param.multiple:
            value = [str(v) for v in value or ()]
        if param.name in ("pg_dsn", "mysql_url") and value:
            value = _masked(value)
        text = "# (not set)" if value is None else _toml_value(value)
        line = f"{name} = {text}" if not text.startswith("#") else f"# {name} {text[2:]}"
        echo(f"{line:<48} # {where}")

    admin = "" if opts.patterns_dir else (
        f", overlaid by {ADMIN_PATTERNS_DIR}" if os.path.isdir(ADMIN_PATTERNS_DIR)
        else f" ({ADMIN_PATTERNS_DIR} does not exist)")
    echo(f"# patterns: {opts.patterns_dir or default_patterns_dir()}{admin}")
    for src in pattern_files(opts.patterns_dir):
        used = not opts.patterns or src.name in opts.patterns
        state = src.origin if used or not src.path else "not selected by --pattern"
        echo(f"#   {src.name:<18} {src.path or '-'} ({state})")
    try:
        load_patterns(opts.patterns_dir, opts.patterns)
    except PbsmtpError as e:
        warn(str(e))

    try:
        directory = postconf("config_directory", opts.postfix_config)
        echo(f"# postfix instance: {directory}"
             + ("" if opts.postfix_config else " (the default instance)"))
        nets = postconf("mynetworks", opts.postfix_config)
        echo(f"# mynetworks (never added): {' '.join(nets.split()) or '(empty)'}")
    except PbsmtpError as e:
        echo("# postfix instance: cannot be read")
        warn(f"cannot read Postfix's mynetworks ({e}); "
             + ("a run would fail" if store_class(opts.backend).needs_postfix
                else "only --ignore-net applies"))
    if opts.backend == "postfix":
        try:
            map_type = opts.map_type or default_map_type(opts.postfix_config)
            path = map_file(opts.dbfile, map_type)
            where = "command line or config" if opts.map_type else "postconf default_database_type"
            echo(f"# map: {map_type}:{opts.dbfile} (type from {where}; file {path}, "
                 f"{'exists' if os.path.exists(path) else 'not yet written'})")
        except PbsmtpError as e:
            warn(f"cannot tell the map type: {e}")
    else:
        echo(f"# store: --backend={opts.backend}")


def config_option(command):
    """--config: read first (is_eager), into the defaults of the others."""
    return click.option(
        "--config", metavar="FILE", is_eager=True, callback=_config_callback,
        expose_value=False,
        help=f"TOML settings file, keys named like these options "
             f"[default: {DEFAULT_CONFIG}, if it exists].")(command)


def compat_options(command):
    """The classic daemon's --daemon, refused; the test hook --now."""
    # A test hook: from the command line only, never from the environment of
    # a production cron job.
    command = click.option("--now", hidden=True, callback=_now,
                           allow_from_autoenv=False)(command)
    return click.option(
        "--daemon", metavar="PIDFILE", callback=_no_daemon, expose_value=False,
        allow_from_autoenv=False,
        help="The classic daemon's option: refused (use cron or the systemd path unit)."
    )(command)


def check_usage(ctx: click.Context, params: Mapping[str, object]) -> None:
    """Options that make sense only with another: a usage error (exit 2)."""
    if params["as_json"] and not (params["list_"] or params["check_patterns"]):
        raise click.UsageError("--json goes with --list or --check-patterns", ctx)
    if params["line"] and not params["check_patterns"]:
        raise click.UsageError("--line goes with --check-patterns", ctx)
    # The modes (cli() runs one): an option left over must not be ignored.
    chosen = [f.metadata["option"][0][0] for f in dataclasses.fields(Options)
              if f.metadata["group"] == "mode" and f.metadata["action"]
              and f.name not in ("as_json", "line") and params[f.name]]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)}: one at a time", ctx)
    if params["logfile"] == "-" and not params["check_patterns"]:
        raise click.UsageError("--logfile=- (standard input) works only with "
                               "--check-patterns: a run must keep an offset in a file", ctx)


def run_mode(opts: Options, now: float, warn: Say) -> None:
    """A run (no mode option): the passes, then the change log (--logto),
    the syslog line, the metrics, and what --dry-run, --debug and -v print."""
    metrics = MetricsFile(opts.metrics_file) if opts.metrics_file and opts.write else None
    started = time.monotonic()
    say: Say = (lambda msg: click.echo(f"debug: {printable(msg)}")) if opts.debug else quiet
    changes = None
    try:
        changes = ChangeLog(opts.logto) if opts.logto and opts.write else None
        record = (lambda plan: changes.record(plan, now)) if changes else (lambda plan: None)
        summary, plan = run_caught_up(opts, now=now, say=say, warn=warn, each=record)
    except PbsmtpError:
        if metrics is not None and (problem := metrics.write(
                now, time.monotonic() - started, None)):
            warn(problem)
        raise
    finally:
        if changes is not None:
            changes.close()
    if opts.write and not summary.locked_out:
        if opts.use_syslog and (summary.added or summary.refreshed or summary.expired):
            log_run(summary, now)
        if metrics is not None and (problem := metrics.write(
                now, time.monotonic() - started, summary)):
            warn(problem)
    if opts.dry_run and plan is not None:
        dry_run_report(plan, now, opts.grace, click.echo)
    if opts.verbose or opts.debug or (opts.dry_run and not summary.locked_out):
        click.echo(summary.line())


def check_postfix_mode(opts: Options) -> None:
    """--check-postfix: a line per check; a failed check makes the Error."""
    findings = check_postfix(opts)
    for finding in findings:
        label = {True: "ok", False: "FAIL", None: "warning"}[finding.ok]
        click.echo(f"{label}: {printable(finding.text)}")
    failed = sum(f.ok is False for f in findings)
    if failed:
        raise PbsmtpError(f"{failed} of the checks failed")


def by_hand_mode(opts: Options, now: float, warn: Say) -> None:
    """--grant or --revoke: change one entry now, record it for the runs
    that follow, and log it (syslog, --logto)."""
    action, ip = ("grant", opts.grant) if opts.grant else ("revoke", opts.revoke)
    changes = ChangeLog(opts.logto) if opts.logto and opts.write else None
    try:
        done = change_by_hand(opts, action, ip, opts.grant_for if opts.grant else opts.revoke_for,
                              now, invoking_user(), warn)
        if done is None:
            return
        plan, record = done
        if opts.use_syslog:
            log_by_hand(action, ip, record)
        if changes is not None:
            changes.record(plan, now)
    finally:
        if changes is not None:
            changes.close()
    until = ("until its next login" if record.until is None
             else f"until {iso_local(record.until)}")
    click.echo(f"{action}{'ed' if action == 'grant' else 'd'} {ip} {until}")


def dry_run_report(plan: Plan, now: float, grace: int, echo: Say) -> None:
    """--dry-run: what the run would add, refresh, expire and drop."""
    for title, items in (("add", plan.added), ("refresh", plan.refreshed),
                         ("expire", plan.expired)):
        for ip, value in sorted(items.items()):
            echo(f"would {title} {ip} {value} login {human_time(value, now, grace)}")
    for ip, value in sorted(plan.invalid.items()):
        echo(f"would drop invalid {ip} {value}")
    for line in session_effects(plan.sessions, now, grace):
        echo(line)


def list_mode(opts: Options, now: float) -> None:
    """--list [--json]: the store's entries, their ages and time left."""
    rows = list_entries(open_store(opts), now, opts.grace, open_sessions(opts, warning_printer()),
                        opts.max_session)
    if opts.as_json:
        for row in rows:
            row["login_iso"] = None if row["login"] is None else iso_local(row["login"])
            row["expires_iso"] = (None if row["login"] is None
                                  else iso_local(row["login"] + opts.grace))
            for session in row["sessions"]:
                session["start_iso"] = iso_local(session["start"])
                session["ends_by_iso"] = iso_local(session["ends_by"])
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        stamp = "-" if row["login"] is None else iso_local(row["login"])
        click.echo(f"{row['ip']:<40} {stamp:<25}  age {_age(row['age']):>9}  "
                   f"left {_age(row['left']):>9}")
        for session in row["sessions"]:
            click.echo(printable(
                f"  session {session['id']} ({session['pattern']}, "
                f"{session['host'] or '-'} {session['program']}) user="
                f"{session['user']} open since {iso_local(session['start'])} "
                f"(age {_age(session['age'])}), ends by "
                f"{iso_local(session['ends_by'])} at the latest"))


def check_patterns_mode(opts: Options, now: float) -> None:
    """--check-patterns on --logfile, standard input (-), --line TEXT or the
    journal."""
    patterns = load_patterns(opts.patterns_dir, opts.patterns)
    failures = sample_failures(patterns, now)
    if opts.journal and not opts.line:
        report = check_journal_patterns(opts, patterns, now)
        lines = None
    elif opts.line:
        # The reader hands on lines as latin-1 text of the raw bytes.
        lines = [t.encode("utf-8", "surrogateescape").decode("latin-1") for t in opts.line]
    elif opts.logfile == "-":
        data = sys.stdin.buffer.read()
        lines = data.decode("latin-1").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
    else:
        lines = read_span(opts.logfile, 0, [])
    try:
        if lines is not None:
            report = check_log(lines, patterns, now)
    except OSError as e:
        raise PbsmtpError(f"cannot read log file {opts.logfile}: {e.strerror}")
    if opts.as_json:
        click.echo(json.dumps(report.as_json(failures), indent=2))
    else:
        print_pattern_report(report, failures, shown=None if opts.verbose else 20,
                             echo=click.echo, every_pattern=opts.verbose)
    if failures:
        raise PbsmtpError(f"{len(failures)} pattern samples failed")


@click.command(context_settings={"auto_envvar_prefix": "PBSMTP",
                                 "help_option_names": ["-h", "--help"]})
@config_option
@source_options
@map_options
@run_options
@mode_options
@site_options
@store_options
@compat_options
@click.version_option(__version__, "--version", prog_name="pbsmtp-batch")
@click.pass_context
def cli(ctx: click.Context, now: float | None, **params) -> None:
    """Allow relaying for clients that logged in over POP3 or IMAP.

    Reads the mail log lines written since the last run, finds the successful
    POP/IMAP logins, and merges their client addresses into a Postfix access
    map that smtpd_relay_restrictions consults. Silent on success. Run it from
    cron every minute:

    \b
        * * * * * root pbsmtp-batch
        pbsmtp-batch --dry-run --debug      # what would change, and why
        pbsmtp-batch --list                 # who may relay now
        pbsmtp-batch --dumpconfig           # every setting, and where it came from
        pbsmtp-batch --explain=192.0.2.10   # why this address may relay, or not
        pbsmtp-batch --check-postfix        # is the map wired into Postfix
        pbsmtp-batch --reprocess            # rebuild after losing the map
    """
    check_usage(ctx, params)
    now = time.time() if now is None else now
    warn = warning_printer()
    # The one error boundary: a PbsmtpError from any mode is one Error: line.
    try:
        opts = options_from(params)
        if opts.dumpconfig:
            dump_config(ctx, opts, click.echo, warn)
        elif opts.check_patterns:
            check_patterns_mode(opts, now)
        elif opts.list_:
            list_mode(opts, now)
        elif opts.explain_ip:
            explain(opts, opts.explain_ip, now, click.echo, warn)
        elif opts.postfix_check:
            check_postfix_mode(opts)
        elif opts.grant or opts.revoke:
            by_hand_mode(opts, now, warn)
        else:
            run_mode(opts, now, warn)
    except PbsmtpError as e:
        raise click.ClickException(str(e))


# sd-daemon(3) priority prefixes: journald files a stderr line that starts with
# one at that priority, so LogLevelMax=notice keeps errors and warnings.
SD_ERR, SD_WARNING = "<3>", "<4>"


def stderr_is_journal() -> bool:
    """True when stderr is systemd's journal stream: systemd.exec(5) sets
    JOURNAL_STREAM to its "device:inode". A child that only inherited the
    variable (cron started from a unit, output piped on) has another stderr,
    and its lines stay as they are."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def warning_printer() -> Say:
    """Warnings on stderr, for cron to mail; tagged as warnings for journald."""
    tag = SD_WARNING if stderr_is_journal() else ""
    return lambda msg: click.echo(f"{tag}pbsmtp-batch: warning: {printable(msg)}", err=True)


def main() -> None:
    if not stderr_is_journal():
        cli(prog_name="pbsmtp-batch")
        return
    # Click's own handling, with the Error: line tagged as an error.
    try:
        code = cli.main(prog_name="pbsmtp-batch", standalone_mode=False)
    except click.ClickException as e:
        shown = io.StringIO()
        e.show(file=shown)
        for line in shown.getvalue().splitlines():
            click.echo(f"{SD_ERR if line.startswith('Error:') else ''}{line}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo(f"{SD_ERR}Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
