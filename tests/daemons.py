"""Real mail daemons on loopback, for the end-to-end test and the demo.

Everything here starts Debian's own binaries (rsyslogd, dovecot, postfix) with a
private configuration under one temporary directory, listening on 127.0.0.1 (and
::1 when loopback has IPv6) on ports picked at run time. Nothing writes to
/etc/postfix, /etc/dovecot, /etc/rsyslog* or the host's /dev/log; the only
system files read are Debian's /etc/postfix/master.cf (copied, then edited)
and /etc/postfix/dynamicmaps.cf (Postfix loads lmdb support through it).

Plain Python on purpose (no pytest): ``examples/demo.sh`` drives the same code
through the small command line at the bottom of this file.

How Dovecot's syslog reaches *our* rsyslogd
-------------------------------------------
Dovecot (``log_path = syslog``) logs through glibc's syslog(3), which always
writes to the fixed path ``/dev/log``; Dovecot has no setting for another
socket, and ``log_path = FILE`` would write Dovecot's own format
(``imap-login: Info: Login: ...``, no syslog tag), which is not what an admin's
maillog holds. Taking over the host's /dev/log would disturb the
machine's own logger (journald owns it on a systemd host). So Dovecot is started
in a private mount namespace (``unshare --mount``): there, an overlay over /dev
adds ``/dev/log`` as a symlink to the unix socket that the test's rsyslogd
listens on (imuxsock). The host's /dev is untouched, and the maillog line is the
real one: written by rsyslogd from Dovecot's real syslog(3) datagram.

Process lifetime
----------------
Each daemon is started in its own session and stopped by its PID (SIGTERM,
then SIGKILL). Afterwards any process left in that session is stopped by PID
as well, so a failed test leaves nothing running. Postfix is stopped with
``postfix -c DIR stop`` first, as an admin would.
"""

import argparse
import contextlib
import imaplib
import json
import os
import poplib
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time

# Binaries the harness needs, and the Debian package that ships each.
REQUIRED_BINARIES = {
    "rsyslogd": "rsyslog",
    "dovecot": "dovecot-core",
    "postfix": "postfix",
    "postmap": "postfix",
    "postconf": "postfix",
    "unshare": "util-linux",
    "mount": "mount",
    "openssl": "openssl",
}
APT_PACKAGES = ("postfix", "postfix-lmdb", "dovecot-pop3d", "dovecot-imapd", "rsyslog")
# Postfix map types that Debian ships in a package of their own; the others
# (hash, btree, memcache, ...) come with postfix itself.
MAP_PACKAGES = {"lmdb": "postfix-lmdb", "cdb": "postfix-cdb", "pgsql": "postfix-pgsql",
                "mysql": "postfix-mysql", "sqlite": "postfix-sqlite", "ldap": "postfix-ldap",
                "pcre": "postfix-pcre"}

# rsyslog's built-in default for files, and what Debian 12's rsyslog.conf uses
# (it no longer sets $ActionFileDefaultTemplate): RFC 3339 with microseconds.
RFC3339 = "RSYSLOG_FileFormat"
# The classic "Nov 24 23:53:04 host tag: msg" that older configs still write.
TRADITIONAL = "RSYSLOG_TraditionalFileFormat"

TIMEOUT = 15.0  # seconds for any daemon to come up, go down or write a log line


class DaemonError(Exception):
    """A daemon did not start, stop or log as expected."""


###############################################################################
# Small helpers ###############################################################
###############################################################################

def missing_binaries(names=REQUIRED_BINARIES):
    """Return the names of required binaries that are not installed."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [n for n in names if shutil.which(n, path=path) is None]


def which(name):
    """Full path of a binary, also looking in /usr/sbin (not on every PATH)."""
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise DaemonError(f"{name} is not installed")
    return found


def supported_map_types():
    """Map types this Postfix supports (``postconf -m``), e.g. hash, lmdb.

    postconf reads a main.cf even for -m, and a machine whose Postfix was
    never configured has none: it runs against an empty private one (map
    types added by packages come from dynamicmaps.cf in meta_directory)."""
    with tempfile.TemporaryDirectory(prefix="pbsmtp-postconf-") as conf:
        for name in ("main.cf", "master.cf"):
            open(os.path.join(conf, name), "w").close()
        r = subprocess.run([which("postconf"), "-c", conf, "-m"], capture_output=True,
                           text=True)
    return set(r.stdout.split())


def map_package(map_type):
    """The Debian package that gives Postfix the map type *map_type*."""
    return MAP_PACKAGES.get(map_type, "postfix")


def ipv6_loopback():
    """True when ::1 can be bound here (loopback has IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


_ports_given = set()


def free_port(hosts=("127.0.0.1",)):
    """A TCP port that is free on every host in *hosts* right now (and not
    handed out before by this process: the daemons bind them later)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if port in _ports_given:
            continue
        try:
            for host in hosts[1:]:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _ports_given.add(port)
        return port
    raise DaemonError(f"no free port on {hosts}")


def wait_until(predicate, what, timeout=TIMEOUT, interval=0.05):
    """Poll *predicate* until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DaemonError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def wait_for_log(path, *needles, timeout=TIMEOUT, start=0):
    """Wait until one line of the file at *path* (from byte *start*) holds all
    *needles*; return that line."""
    def find():
        with contextlib.suppress(FileNotFoundError):
            with open(path, "rb") as f:
                f.seek(start)
                for raw in f:
                    line = raw.decode("utf-8", "replace")
                    if all(n in line for n in needles):
                        return line.rstrip("\n")
        return None
    return wait_until(find, f"{needles!r} in {path}", timeout)


def file_size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def wait_for_port(host, port, pid=None, timeout=TIMEOUT):
    """Wait until host:port accepts a TCP connection (and *pid* still lives)."""
    def up():
        if pid is not None and not pid_alive(pid):
            raise DaemonError(f"process {pid} died before listening on {host}:{port}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_until(up, f"{host}:{port} to accept connections", timeout)


###############################################################################
# Processes, by PID ###########################################################
###############################################################################

def _stat(pid):
    """(state, ppid, session id) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces.
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[3])


def pid_alive(pid):
    """True while *pid* runs (a zombie counts as gone)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def session_members(sid):
    """PIDs of the live processes whose session id is *sid*."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[2] == sid and st[0] not in ("Z", "X"):
                pids.append(int(name))
    return pids


def stop_pid(pid, proc=None, timeout=10.0):
    """SIGTERM *pid*, wait, then SIGKILL it. *proc* (a Popen) is reaped."""
    def gone():
        if proc is not None:
            return proc.poll() is not None
        return not pid_alive(pid)
    if gone():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until(gone, f"process {pid} to exit", timeout)
    except DaemonError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(gone, f"process {pid} to die", timeout)


def stop_session(sid, timeout=10.0):
    """Stop, by PID, every process still left in session *sid*."""
    for pid in session_members(sid):
        stop_pid(pid, timeout=timeout)


def start_process(argv, logfile, env=None, **popen):
    """Start *argv* in a new session with output to *logfile*; return Popen.
    *popen*: more of Popen's keywords (user, group, cwd ...)."""
    with open(logfile, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, **popen)


def stop_process(proc):
    """Stop a process of start_process (None: never started) and whatever
    is left in its session."""
    if proc is not None:
        stop_pid(proc.pid, proc)
        stop_session(proc.pid)


# Daemons log through syslog(3), which always writes to /dev/log. To send
# their lines to the test's own rsyslogd without touching the host's /dev, they
# run in a private mount namespace: /dev is overlaid on a small tmpfs and
# /dev/log there is a link to our rsyslogd's socket; then the daemon is exec'd.
DEVLOG_SCRIPT = """\
set -e
mount -t tmpfs -o mode=0700,size=1m pbsmtp-devns "$1"
mkdir "$1/upper" "$1/work"
mount -t overlay -o "lowerdir=/dev,upperdir=$1/upper,workdir=$1/work" pbsmtp-dev /dev
ln -sfn "$2" /dev/log
shift 2
exec "$@"
"""


def start_with_devlog(workdir, devlog, argv, output, env=None):
    """start_process(argv) in its own mount namespace whose /dev/log is devlog.
    unshare and sh exec, so the PID is the daemon's."""
    ns = os.path.join(workdir, "devns")
    os.makedirs(ns, mode=0o700)
    return start_process([which("unshare"), "--mount", "--propagation", "private", "--",
                          "/bin/sh", "-c", DEVLOG_SCRIPT, "sh", ns, devlog, *argv], output, env)


class Daemon:
    """Base: a context manager that calls start() and always stop()."""

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


def make_workdir(prefix="pbsmtp-"):
    """A short, world-traversable temporary directory.

    Short: unix socket paths must stay under 108 bytes. Traversable (0755):
    postfix, dovecot and dovenull must reach files below it, which pytest's
    0700 tmp_path forbids."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    return path


def _mkdir(path, mode=0o755, owner=None):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


###############################################################################
# rsyslogd ####################################################################
###############################################################################

class Rsyslog(Daemon):
    """rsyslogd writing facility ``mail`` to ``<workdir>/maillog``.

    Keyword arguments:
    - template: the file format; RFC3339 (Debian 12's default) or TRADITIONAL.
    - pid_from_system: tag each line with the sender's PID from the socket's
      credentials, ``dovecot[PID]:``. This is what a systemd host's maillog
      shows (journald forwards to rsyslog with the PID it saw). Off: the tag
      exactly as syslog(3) sent it; Dovecot opens syslog without LOG_PID, so
      ``dovecot:`` without a PID, as when rsyslogd itself owns /dev/log.
    - tz: TZ for rsyslogd (the zone of RFC 3164 times); default: inherited.

    It listens only on its own unix socket ``<workdir>/devlog`` (imuxsock with
    the system socket switched off, so it never touches /dev/log)."""

    def __init__(self, workdir, template=RFC3339, pid_from_system=True, tz=None):
        self.workdir = workdir
        self.template = template
        self.pid_from_system = pid_from_system
        self.tz = tz
        self.socket = os.path.join(workdir, "devlog")
        self.maillog = os.path.join(workdir, "maillog")
        self.conf = os.path.join(workdir, "rsyslog.conf")
        self.pidfile = os.path.join(workdir, "rsyslogd.pid")
        self.output = os.path.join(workdir, "rsyslogd.out")
        self.spool = os.path.join(workdir, "rsyslog-spool")
        self.proc = None
        self.pid = None

    def config(self):
        return f"""\
# Private rsyslogd for pbsmtp-batch tests: no /dev/log, no kernel log, no network.
global(workDirectory="{self.spool}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{self.socket}" CreatePath="on"
      RateLimit.Interval="0" UsePIDFromSystem="{"on" if self.pid_from_system else "off"}")
mail.* action(type="omfile" file="{self.maillog}" template="{self.template}")
"""

    def start(self):
        _mkdir(self.spool, 0o700)
        _write(self.conf, self.config())
        env = dict(os.environ, TZ=self.tz) if self.tz else None
        self.proc = start_process([which("rsyslogd"), "-n", "-f", self.conf, "-i", self.pidfile],
                           self.output, env)
        self.pid = self.proc.pid
        wait_until(lambda: self._check() and os.path.exists(self.socket),
                   f"rsyslogd socket {self.socket}")
        # Prove the whole path: a datagram in, a line in the maillog out.
        probe = f"rsyslog ready {time.time():.6f}"
        self.send("pbsmtp-harness", probe)
        wait_for_log(self.maillog, probe)

    def _check(self):
        if self.proc.poll() is not None:
            raise DaemonError(f"rsyslogd exited with {self.proc.returncode}: "
                              f"{read_text(self.output)}")
        return True

    def send(self, tag, message, priority=2 * 8 + 6):  # mail.info
        """Send one syslog datagram, as syslog(3) would."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(f"<{priority}>{tag}[{os.getpid()}]: {message}".encode(), self.socket)

    def stop(self):
        if self.pid is not None:
            stop_pid(self.pid, self.proc)
            stop_session(self.pid)
            self.pid = None


###############################################################################
# Dovecot #####################################################################
###############################################################################

def make_cert(cert, key):
    """A throw-away self-signed certificate for localhost, 127.0.0.1 and ::1,
    written to *cert* and *key* (mode 0600)."""
    subprocess.run(
        [which("openssl"), "req", "-x509", "-newkey", "ec",
         "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True)
    os.chmod(key, 0o600)


def dovecot_version():
    """(major, minor) of the installed Dovecot, from ``dovecot --version``
    ("2.3.19.1 (9b53102964)" on Debian 12, "2.4.1-4 (7d8c0e5759)" on 13)."""
    out = subprocess.run([which("dovecot"), "--version"], capture_output=True, text=True).stdout
    found = re.match(r"(\d+)\.(\d+)", out)
    if found is None:
        raise DaemonError(f"dovecot --version said {out!r}")
    return int(found[1]), int(found[2])


# Dovecot 2.3's one-letter login variables and their 2.4 names
# (https://doc.dovecot.org/2.4.1/installation/upgrade/2.3-to-2.4.html).
DOVECOT24_VARIABLES = {"%u": "%{user}", "%m": "%{mechanism}", "%r": "%{remote_ip}",
                       "%l": "%{local_ip}", "%e": "%{mail_pid}", "%c": "%{secured}",
                       "%s": "%{protocol}"}


def dovecot24_variables(text):
    """*text* (2.3 variables) in Dovecot 2.4's variable syntax."""
    return re.sub(r"%[a-z]", lambda m: DOVECOT24_VARIABLES[m[0]], text)


class Dovecot(Daemon):
    """Dovecot POP3 and IMAP on loopback, logging through syslog(3) to *devlog*.

    Keyword arguments:
    - users: {name: password}; a passwd-file with {PLAIN} passwords.
    - devlog: the unix socket that stands in for /dev/log (Rsyslog.socket).
    - ipv6: also listen on ::1.
    - auth_failure_delay: Dovecot's delay before a failed login answers
      (default 2 s upstream; tests use 0 to stay fast).
    - tls: offer STARTTLS/STLS with a throw-away self-signed certificate
      (``make_cert``: ``self.cert``), and implicit TLS on ``self.imaps_port``
      and ``self.pop3s_port``. Plaintext logins stay allowed either way.
    - log_file: Dovecot's own log file (``log_path``) instead of syslog, with
      *log_timestamp* and *login_log_format_elements* when given (Dovecot's
      defaults otherwise).
    - proxy_ports: (imap, pop3) ports on 127.0.0.1 to proxy every login to,
      once Dovecot itself accepted the password (passdb proxy=y).

    Runs as root with ``dovecot -F -c CONF`` inside a private mount namespace
    (see the module docstring); ``self.pid`` is the Dovecot master's PID."""

    def __init__(self, workdir, users, devlog, ipv6=False, auth_failure_delay=0, tls=True,
                 log_file=None, log_timestamp=None, login_log_format_elements=None,
                 proxy_ports=None):
        self.workdir = workdir
        self.proxy_ports = proxy_ports
        self.log_file = log_file
        self.log_timestamp = log_timestamp
        self.login_log_format_elements = login_log_format_elements
        self.users = dict(users)
        self.devlog = devlog
        self.ipv6 = ipv6
        self.auth_failure_delay = auth_failure_delay
        self.tls = tls
        self.dir = os.path.join(workdir, "dovecot")
        self.cert = os.path.join(self.dir, "cert.pem") if tls else None
        self.key = os.path.join(self.dir, "key.pem")
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.passwd = os.path.join(self.dir, "users")
        self.base_dir = os.path.join(self.dir, "run")
        self.state_dir = os.path.join(self.dir, "state")
        self.mail_dir = os.path.join(self.dir, "mail")
        self.output = os.path.join(self.dir, "dovecot.out")
        hosts = ("127.0.0.1", "::1") if ipv6 else ("127.0.0.1",)
        self.hosts = hosts
        self.pop3_port = free_port(hosts)
        self.imap_port = free_port(hosts)
        # 0 tells Dovecot not to listen.
        self.pop3s_port = free_port(hosts) if tls else 0
        self.imaps_port = free_port(hosts) if tls else 0
        self.version = dovecot_version()
        # How a login process words a success and a failed login:
        # "imap-login: Login: user=<u>, ..." and "Disconnected (auth failed,
        # ...)" up to 2.3; "Logged in: " and "Login aborted: ... (auth failed,
        # ...)" from 2.4 (seen live with 2.3.19 and 2.4.1).
        new = self.version >= (2, 4)
        self.login_text = "Logged in: " if new else "Login: "
        self.failure_text = "Login aborted" if new else "Disconnected"
        self.proc = None
        self.pid = None

    def log_config(self):
        if self.log_file is None:
            return ("# The real default path: syslog(3), facility mail, ident \"dovecot\".\n"
                    "log_path = syslog\nsyslog_facility = mail")
        lines = [f"log_path = {self.log_file}"]
        if self.log_timestamp is not None:
            lines.append(f'log_timestamp = "{self.log_timestamp}"')
        if self.login_log_format_elements is not None:
            elements = self.login_log_format_elements
            if self.version >= (2, 4):
                elements = dovecot24_variables(elements)
            lines.append(f"login_log_format_elements = {elements}")
        return "\n".join(lines)

    def config(self):
        if self.version >= (2, 4):
            return self.config24()
        return f"""\
# Private Dovecot for pbsmtp-batch tests. Nothing from /etc/dovecot is read.
{self.common()}{self.ssl_config()}
# Plaintext logins without TLS, too: a client at 127.0.0.x talking to
# 127.0.0.1 is not "secured" for Dovecot (only rip == lip is).
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd}
{self.proxy_config()}}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={self.mail_dir}/%u
}}
mail_location = maildir:~/Maildir
{self.listeners()}"""

    def common(self):
        """The settings that 2.3 and 2.4 name alike."""
        listen = ", ".join(self.hosts)
        return f"""\
protocols = pop3 imap
listen = {listen}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
{self.log_config()}
auth_verbose = yes
auth_failure_delay = {self.auth_failure_delay} secs
"""

    def listeners(self):
        """The login services' ports, in the syntax of 2.3 and 2.4 alike."""
        return f"""\
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port}
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
  }}
}}
"""

    def proxy_config(self):
        if self.proxy_ports is None:
            return ""
        imap, pop3 = self.proxy_ports
        return (f"  override_fields = proxy=y host=127.0.0.1 "
                f"port=%{{if;%s;eq;imap;{imap};{pop3}}}\n")

    def ssl_config(self):
        if not self.tls:
            return "ssl = no"
        return f"ssl = yes\nssl_cert = <{self.cert}\nssl_key = <{self.key}"

    def config24(self):
        """The same server in Dovecot 2.4's syntax, which refuses 2.3's
        (https://doc.dovecot.org/2.4.1/installation/upgrade/2.3-to-2.4.html):
        named passdb/userdb blocks whose settings replace "args", %{name}
        variables, auth_allow_cleartext, ssl_server_*_file, mail_driver and
        mail_path, and dovecot_config_version as the very first setting."""
        return f"""\
dovecot_config_version = 2.4.1
# Private Dovecot for pbsmtp-batch tests. Nothing from /etc/dovecot is read.
dovecot_storage_version = 2.4.1
{self.common()}{self.ssl_config24()}
# Plaintext logins without TLS, too: a client at 127.0.0.x talking to
# 127.0.0.1 is not "secured" for Dovecot (only rip == lip is).
auth_allow_cleartext = yes
auth_mechanisms = plain login
passdb passwd-file {{
  passwd_file_path = {self.passwd}
  default_password_scheme = PLAIN
{self.proxy_config24()}}}
userdb static {{
  fields {{
    uid = nobody
    gid = nogroup
    home = {self.mail_dir}/%{{user}}
  }}
}}
mail_driver = maildir
mail_path = ~/Maildir
{self.listeners()}{self.proxy_ports24()}"""

    def proxy_config24(self):
        if self.proxy_ports is None:
            return ""
        # 2.4 forwards the client's password only when the passdb says so.
        return ("  fields {\n    proxy = y\n    host = 127.0.0.1\n"
                "    pass = %{password}\n  }\n")

    def proxy_ports24(self):
        """Each protocol's upstream port, in a protocol filter (2.4 has no %{if})."""
        if self.proxy_ports is None:
            return ""
        return "".join(f"protocol {name} {{\n  passdb passwd-file {{\n    fields {{\n"
                       f"      port = {port}\n    }}\n  }}\n}}\n"
                       for name, port in zip(("imap", "pop3"), self.proxy_ports))

    def ssl_config24(self):
        if not self.tls:
            return "ssl = no"
        return f"ssl = yes\nssl_server_cert_file = {self.cert}\nssl_server_key_file = {self.key}"

    def start(self):
        _mkdir(self.dir)
        _mkdir(self.state_dir)
        if self.tls:
            make_cert(self.cert, self.key)
        _mkdir(self.mail_dir, 0o755, owner="nobody")
        _write(self.passwd, "".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items()))
        _write(self.conf, self.config())
        # In a private mount namespace whose /dev/log is our rsyslogd's socket.
        self.proc = start_with_devlog(self.dir, self.devlog,
                                      [which("dovecot"), "-F", "-c", self.conf], self.output)
        self.pid = self.proc.pid  # unshare and sh exec, so this becomes dovecot's master
        for host in self.hosts:
            for port in (self.pop3_port, self.imap_port, self.pop3s_port, self.imaps_port):
                if not port:
                    continue
                try:
                    wait_for_port(host, port, self.pid)
                except DaemonError as e:
                    raise DaemonError(f"{e}; dovecot said: {read_text(self.output)}") from None

    def stop(self):
        if self.pid is not None:
            stop_pid(self.pid, self.proc)
            stop_session(self.pid)
            self.pid = None


###############################################################################
# Postfix #####################################################################
###############################################################################

class Postfix(Daemon):
    """Postfix master + smtpd with its own MAIL_CONFIG directory.

    Keyword arguments:
    - map_type: "hash" or "lmdb" (any type postmap knows).
    - map_path: the map without suffix, e.g. ``<dir>/pop-before-smtp``.
    - ipv6: also listen on [::1].

    smtpd listens on 127.0.0.1:``self.port`` (and [::1]:``self.port``).
    ``mynetworks`` holds 127.0.0.1/32 only, so every other loopback address
    (127.0.0.2 ... and ::1) is an outside client that must not relay unless
    the pop-before-smtp map says so."""

    def __init__(self, workdir, map_type, map_path, ipv6=False):
        self.workdir = workdir
        self.map_type = map_type
        self.map_path = map_path
        self.map_spec = f"{map_type}:{map_path}"
        self.ipv6 = ipv6
        self.dir = os.path.join(workdir, "postfix")
        self.config_dir = os.path.join(self.dir, "etc")
        self.queue_dir = os.path.join(self.dir, "queue")
        self.data_dir = os.path.join(self.dir, "data")
        self.maillog = os.path.join(self.dir, "postfix.log")
        hosts = ("127.0.0.1", "::1") if ipv6 else ("127.0.0.1",)
        self.hosts = hosts
        self.port = free_port(hosts)
        self.pid = None

    def main_cf(self):
        protocols = "ipv4, ipv6" if self.ipv6 else "ipv4"
        interfaces = "127.0.0.1, [::1]" if self.ipv6 else "127.0.0.1"
        return f"""\
# Private Postfix for pbsmtp-batch tests. The system's /etc/postfix is not used
# (except dynamicmaps.cf in meta_directory, read-only, which loads lmdb).
compatibility_level = 3.6
myhostname = pbsmtp-test.localdomain
mydestination = localhost
inet_interfaces = {interfaces}
inet_protocols = {protocols}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
maillog_file = {self.maillog}
maillog_file_prefixes = {self.dir}
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
smtpd_banner = $myhostname ESMTP pbsmtp-batch test
# The client's name is never looked up: every client is "unknown", so
# check_client_access decides on the address alone (and needs no DNS).
smtpd_peername_lookup = no
mynetworks = 127.0.0.1/32
# Since Postfix 2.10 relay decisions are made here, before
# smtpd_recipient_restrictions; a check_client_access placed only there is
# never reached for a relay recipient.
smtpd_relay_restrictions = permit_mynetworks,
    check_client_access {self.map_spec}, reject_unauth_destination
# Second guard (the client QUITs after RCPT, so nothing is queued anyway):
# anything that was queued would be thrown away, never relayed. Not "error":
# with default_transport = error, smtpd itself rejects the RCPT with
# "550 5.1.1 ... Recipient address rejected" for every non-local recipient,
# accepted or not, which hides the relay decision this test is about.
default_transport = discard
relay_transport = discard
"""

    def master_cf(self):
        # Debian's own master.cf (read only); the packaged copy if the admin
        # chose "No configuration" and has none.
        source = "/etc/postfix/master.cf"
        if not os.path.exists(source):
            source = "/usr/share/postfix/master.cf.dist"
        with open(source) as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            fields = line.split()
            if fields[:2] == ["smtp", "inet"]:
                out.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
                if self.ipv6:
                    out.append(f"[::1]:{self.port} inet n - n - - smtpd")
                continue
            out.append(line)
        return "\n".join(out) + "\n"

    def postconf(self, *args):
        return subprocess.run([which("postconf"), "-c", self.config_dir, *args],
                              check=True, capture_output=True, text=True).stdout

    def _postfix(self, command):
        return subprocess.run([which("postfix"), "-c", self.config_dir, command],
                              capture_output=True, text=True, timeout=60)

    def configure(self):
        """Write main.cf and master.cf (the tool reads mynetworks from them)."""
        _mkdir(self.dir)
        _mkdir(self.config_dir)
        _mkdir(self.queue_dir)
        _mkdir(self.data_dir, 0o700, owner="postfix")
        _write(os.path.join(self.config_dir, "main.cf"), self.main_cf())
        _write(os.path.join(self.config_dir, "master.cf"), self.master_cf())
        # No chroot anywhere: the private queue directory has no etc/ copy.
        self.postconf("-F", "*/*/chroot = n")

    def start(self):
        if not os.path.exists(os.path.join(self.config_dir, "main.cf")):
            self.configure()
        if not os.path.exists(self.map_file()):
            raise DaemonError(f"map {self.map_file()} must exist before Postfix starts")
        r = self._postfix("start")
        if r.returncode != 0:
            raise DaemonError(f"postfix start failed ({r.returncode}): {r.stdout}{r.stderr}"
                              f"{read_text(self.maillog)}")
        pidfile = os.path.join(self.queue_dir, "pid", "master.pid")
        self.pid = int(wait_until(lambda: read_text(pidfile).strip(), "master.pid"))
        for host in self.hosts:
            wait_for_port(host, self.port, self.pid)

    def map_file(self):
        suffix = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb",
                  "dbm": ".db"}.get(self.map_type, "")
        return self.map_path + suffix

    def smtpd_pids(self):
        """PIDs of the master's live smtpd children."""
        pids = []
        for pid in session_members(self.pid or -1):
            st = _stat(pid)
            with contextlib.suppress(OSError):
                comm = read_text(f"/proc/{pid}/comm").strip()
                if st and st[1] == self.pid and comm == "smtpd":
                    pids.append(pid)
        return pids

    def stop(self):
        if self.pid is None:
            pidfile = os.path.join(self.queue_dir, "pid", "master.pid")
            with contextlib.suppress(ValueError):
                self.pid = int(read_text(pidfile).strip() or "x")
        if self.pid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._postfix("stop")
        try:
            wait_until(lambda: not pid_alive(self.pid), f"postfix master {self.pid} to exit")
        except DaemonError:
            stop_pid(self.pid)
        stop_session(self.pid)
        self.pid = None


###############################################################################
# Clients #####################################################################
###############################################################################

def _connect(host, port, source, timeout):
    return socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0))


class _POP3(poplib.POP3):
    def __init__(self, host, port, source, timeout):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return _connect(self.host, self.port, self._source, timeout)


class _IMAP4(imaplib.IMAP4):
    def __init__(self, host, port, source, timeout):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return _connect(self.host, self.port, self._source, timeout)


def tls_context(cafile):
    """Client TLS context that trusts exactly the lab's certificate."""
    return ssl.create_default_context(cafile=cafile)


def pop3_login(host, port, user, password, source, tls_ca=None, timeout=10):
    """USER/PASS over POP3 from *source*; return (ok, server reply).

    With *tls_ca* (the server's certificate), STLS first."""
    client = _POP3(host, port, source, timeout)
    try:
        if tls_ca:
            client.stls(tls_context(tls_ca))
        client.user(user)
        try:
            reply = client.pass_(password).decode()
        except poplib.error_proto as e:
            return False, e.args[0].decode() if isinstance(e.args[0], bytes) else str(e)
        client.stat()  # the session really works
        return True, reply
    finally:
        with contextlib.suppress(Exception):
            client.quit()
        with contextlib.suppress(Exception):
            client.close()


def imap_login(host, port, user, password, source, tls_ca=None, timeout=10):
    """LOGIN over IMAP from *source*; return (ok, server reply).

    With *tls_ca* (the server's certificate), STARTTLS first."""
    client = _IMAP4(host, port, source, timeout)
    try:
        if tls_ca:
            client.starttls(tls_context(tls_ca))
        try:
            typ, data = client.login(user, password)
        except imaplib.IMAP4.error as e:
            text = e.args[0] if e.args else ""
            return False, text.decode() if isinstance(text, bytes) else str(text)
        client.select("INBOX")  # the session really works
        return typ == "OK", b" ".join(data).decode()
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def smtp_rcpt(host, port, rcpt, source, sender="", timeout=10):
    """EHLO, MAIL FROM, RCPT TO from *source*, then QUIT (nothing is queued).

    Return RCPT's (code, text)."""
    with smtplib.SMTP(host, port, timeout=timeout, source_address=(source, 0)) as client:
        client.ehlo("client.example.org")
        code, text = client.mail(f"<{sender}>")
        if code != 250:
            raise DaemonError(f"MAIL FROM refused: {code} {text!r}")
        code, text = client.rcpt(f"<{rcpt}>")
        client.quit()
        return code, text.decode()


###############################################################################
# The whole lab, and a command line for demo.sh ###############################
###############################################################################

class MailLab:
    """rsyslogd + Dovecot + Postfix in one work directory, ready for pbsmtp-batch.

    Keyword arguments:
    - map_type: "hash" or "lmdb".
    - users: {name: password} for Dovecot.
    - ipv6: listen on ::1 too (default: when loopback has IPv6).
    - template, pid_from_system, tz: for Rsyslog.
    - workdir: use this directory instead of a new temporary one.
    - make_map: a callable(lab) run once before Postfix starts, which must
      create the map file (smtpd answers 451 for a missing map).
    - auth_failure_delay, tls: for Dovecot.

    Paths for the tool: ``maillog``, ``dbfile``, ``state_dir``,
    ``postfix_config``."""

    def __init__(self, map_type="hash", users=None, ipv6=None, template=RFC3339,
                 pid_from_system=True, tz=None, workdir=None, make_map=None,
                 auth_failure_delay=0, tls=True):
        self.own_workdir = workdir is None
        self.workdir = workdir or make_workdir()
        self.map_type = map_type
        self.ipv6 = ipv6_loopback() if ipv6 is None else ipv6
        self.make_map = make_map
        self.dbfile = os.path.join(self.workdir, "map", "pop-before-smtp")
        self.state_dir = os.path.join(self.workdir, "state")
        self.rsyslog = Rsyslog(self.workdir, template, pid_from_system, tz)
        self.dovecot = Dovecot(self.workdir, users or {}, self.rsyslog.socket, self.ipv6,
                               auth_failure_delay, tls)
        self.postfix = Postfix(self.workdir, map_type, self.dbfile, self.ipv6)
        self.maillog = self.rsyslog.maillog
        self.postfix_config = self.postfix.config_dir
        self.stack = None

    def start(self):
        _mkdir(os.path.dirname(self.dbfile))
        _mkdir(self.state_dir)
        self.stack = contextlib.ExitStack()
        try:
            self.stack.enter_context(self.rsyslog)
            self.stack.enter_context(self.dovecot)
            # Dovecot's start-up line came through syslog(3) -> our rsyslogd.
            wait_for_log(self.maillog, " dovecot", "master: Dovecot v", "starting up")
            self.postfix.configure()
            if self.make_map is not None:
                self.make_map(self)
            self.stack.enter_context(self.postfix)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.stack is not None:
            self.stack.close()
            self.stack = None

    def cleanup(self):
        self.stop()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc):
        self.cleanup()

    def pids(self):
        return {"rsyslogd": self.rsyslog.pid, "dovecot": self.dovecot.pid,
                "postfix": self.postfix.pid}

    def describe(self):
        return {
            "workdir": self.workdir, "maillog": self.maillog, "postfix_log": self.postfix.maillog,
            "dbfile": self.dbfile, "map_spec": self.postfix.map_spec, "state_dir": self.state_dir,
            "postfix_config": self.postfix_config, "smtp_port": self.postfix.port,
            "pop3_port": self.dovecot.pop3_port, "imap_port": self.dovecot.imap_port,
            "ipv6": self.ipv6, "pids": self.pids(),
        }


def _up(args):
    """Start the lab in args.dir and leave it running; print its description."""
    os.makedirs(args.dir, exist_ok=True)
    os.chmod(args.dir, 0o755)
    users = dict(u.split(":", 1) for u in args.user)

    def first_run(lab):
        if args.first_run:
            subprocess.run(args.first_run, check=True)

    lab = MailLab(args.map_type, users=users, workdir=args.dir, make_map=first_run,
                  auth_failure_delay=args.auth_failure_delay,
                  ipv6=False if args.no_ipv6 else None)
    try:
        lab.start()
    except BaseException:
        lab.stop()
        raise
    info = lab.describe()
    with open(os.path.join(args.dir, "lab.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))
    return 0  # the daemons outlive this process; "down" stops them by PID


def _down(args):
    """Stop, by PID, what "up" started in args.dir."""
    path = os.path.join(args.dir, "lab.json")
    try:
        with open(path) as f:
            pids = json.load(f)["pids"]
    except (FileNotFoundError, ValueError):
        pids = {}
    postfix = Postfix(args.dir, "hash", "unused")
    postfix.pid = pids.get("postfix")
    if os.path.exists(os.path.join(postfix.config_dir, "main.cf")):
        postfix.stop()        # postfix -c DIR stop, then by PID if needed
    for name in ("dovecot", "rsyslogd"):
        pid = pids.get(name)
        if pid:
            stop_pid(pid)
            stop_session(pid)
    return 0


def _client(args):
    host = args.host or ("::1" if ":" in args.source else "127.0.0.1")
    if args.command == "smtp":
        code, text = smtp_rcpt(host, args.port, args.rcpt, args.source)
        print(code, text)
        return 0 if code == 250 else 1
    login = pop3_login if args.command == "pop3" else imap_login
    ok, reply = login(host, args.port, args.user, args.password, args.source)
    print(reply)
    return 0 if ok else 1


def main(argv=None):
    """Command line for examples/demo.sh (see --help)."""
    p = argparse.ArgumentParser(prog="daemons.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start rsyslogd, Dovecot and Postfix in DIR, leave them up;"
                        " 'up DIR [options] -- COMMAND' runs COMMAND to create the map")
    up.add_argument("dir")
    up.add_argument("--map-type", default="hash")
    up.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    up.add_argument("--auth-failure-delay", type=int, default=2)
    up.add_argument("--no-ipv6", action="store_true")
    down = sub.add_parser("down", help="stop what 'up' started in DIR, by PID")
    down.add_argument("dir")
    for name in ("pop3", "imap", "smtp"):
        c = sub.add_parser(name, help=f"one {name.upper()} client from a chosen source address")
        c.add_argument("--source", required=True)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--host")
        if name == "smtp":
            c.add_argument("--rcpt", default="someone@example.net")
        else:
            c.add_argument("--user", required=True)
            c.add_argument("--password", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    # "up DIR [options] -- COMMAND...": COMMAND runs before Postfix starts and
    # must create the map (demo.sh passes its first pbsmtp-batch run).
    first_run = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = p.parse_args(argv)
    args.first_run = first_run
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            return _down(args)
        return _client(args)
    except (DaemonError, OSError, subprocess.CalledProcessError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
