"""Logins against real POP/IMAP servers, and what the shipped patterns and a
real run make of the server's log: shared by the daemon tests
(test_daemon_logins.py, test_daemon_perdition.py, test_daemon_imapproxy.py).

The clients speak the raw line protocol (IMAP, POP3, with STARTTLS/STLS or
implicit TLS), so that every byte of a user name reaches the daemon verbatim,
crafted ones included; tests/daemons.py's clients go through imaplib/poplib.
"""

import base64
import contextlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

import pbsmtp_batch as pb

import daemons

PATTERNS = pb.load_patterns(pb.shipped_patterns_dir())

# The address a crafted user name tries to get into the map.
ATTACKER = "203.0.113.9"


# Clients: a raw line protocol, so that user names reach the daemon verbatim ###

class TLS:
    """How a client session uses TLS: *mode* "starttls" (IMAP STARTTLS, POP3
    STLS) or "implicit" (imaps/pop3s ports), checking the server's
    certificate against *cafile*."""

    def __init__(self, mode, cafile):
        assert mode in ("starttls", "implicit")
        self.mode = mode
        self.context = ssl.create_default_context(cafile=cafile)


class Client:
    def __init__(self, port, source, host="127.0.0.1", tls=None):
        self.sock = socket.create_connection((host, port), timeout=10,
                                             source_address=(source, 0))
        if tls is not None and tls.mode == "implicit":
            self.sock = tls.context.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def starttls(self, tls, command, ok):
        """Send STARTTLS/STLS (*command*) when *tls* asks for it; the answer
        must start with *ok*."""
        if tls is None or tls.mode != "starttls":
            return
        self.send(command)
        answer = self.line()
        while answer.startswith("* "):         # IMAP untagged lines
            answer = self.line()
        assert answer.startswith(ok), f"{command} refused: {answer}"
        self.file.close()
        self.sock = tls.context.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def reset(self):
        """Close with a TCP RST (SO_LINGER 0), no LOGOUT/QUIT: a client that
        crashed or lost its network after logging in."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.file.close()
        self.sock.close()

    def line(self):
        return self.file.readline().decode("utf-8", "replace").rstrip("\r\n")

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def close(self, bye=None):
        """Say *bye* if the server still listens, then close."""
        with contextlib.suppress(OSError):
            if bye:
                self.send(bye)
                self.line()
        self.file.close()
        self.sock.close()


def imap_tagged(client, tag):
    """The server's tagged answer (or "" once it hung up)."""
    while True:
        line = client.line()
        if line.startswith(f"{tag} ") or not line:
            return line


def imap_command(client, tag, command):
    client.send(f"{tag} {command}")
    return imap_tagged(client, tag)


def imap_quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def session(port, source, host, tls, starttls, bye, reset=False):
    """A connected Client, after STARTTLS/STLS when *tls* asks for it
    (*starttls*: the command and its OK answer); it ends with *bye*, or with
    a TCP reset."""
    c = Client(port, source, host, tls)
    try:
        c.starttls(tls, *starttls)
        yield c
    finally:
        c.reset() if reset else c.close(bye)


def imap_session(port, source, host="127.0.0.1", tls=None, reset=False):
    return session(port, source, host, tls, ("a0 STARTTLS", "a0 OK"), "a9 LOGOUT", reset)


def pop3_session(port, source, host="127.0.0.1", tls=None):
    return session(port, source, host, tls, ("STLS", "+OK"), "QUIT")


def imap_continued(c, command, data):
    """A command that waits for a "+" continuation before *data* (bytes,
    sent as is, CRLF included): AUTHENTICATE, or a LOGIN literal."""
    c.send(command)
    if not c.line().startswith("+"):
        return False
    c.sock.sendall(data)
    return imap_tagged(c, "a1").startswith("a1 OK")


def imap_login(port, source, user, password, host="127.0.0.1", tls=None, reset=False):
    """LOGIN; with *reset* the session ends in a TCP RST instead of LOGOUT."""
    with imap_session(port, source, host, tls, reset) as c:
        return imap_command(c, "a1", f"LOGIN {imap_quote(user)} {imap_quote(password)}"
                            ).startswith("a1 OK")


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def imap_authenticate_plain(port, source, user, password, host="127.0.0.1", tls=None):
    with imap_session(port, source, host, tls) as c:
        return imap_continued(c, "a1 AUTHENTICATE PLAIN", f"{plain(user, password)}\r\n".encode())


def imap_login_literal(port, source, user, password, tls=None):
    """LOGIN with the user name as a synchronising literal, which carries any
    bytes (blanks, quotes, line feeds); *tls*: TLS("implicit", ...) for imaps."""
    data = user.encode()
    with imap_session(port, source, tls=tls) as c:
        return imap_continued(c, f"a1 LOGIN {{{len(data)}}}", data + f" {password}\r\n".encode())


def pop3_user_pass(port, source, user, password, host="127.0.0.1", tls=None):
    with pop3_session(port, source, host, tls) as c:
        c.send(f"USER {user}")
        if not c.line().startswith("+OK"):
            return False
        c.send(f"PASS {password}")
        return c.line().startswith("+OK")


def pop3_auth_plain(port, source, user, password, host="127.0.0.1", tls=None):
    with pop3_session(port, source, host, tls) as c:
        c.send(f"AUTH PLAIN {plain(user, password)}")
        return c.line().startswith("+OK")


def leave_before_auth(port, source, bye):
    Client(port, source).close(bye)


# What the patterns and a real run find in the server's log ###################

def logins_found(maillog):
    """Every login the shipped patterns find in the daemon's log."""
    found, pending = [], {}
    with open(maillog, encoding="utf-8", errors="replace") as f:
        for line in f:
            login, _ = pb.match_login(line.rstrip("\n"), PATTERNS, time.time() + 60, pending)
            if login:
                found.append(login)
    return found


def tool_argv(maillog):
    """pbsmtp-batch's command line for *maillog*, with a new hash map and
    state directory. mynetworks is a documentation address, so no loopback
    client is filtered out as a local one."""
    work = tempfile.mkdtemp(prefix="map-", dir=os.path.dirname(maillog))
    conf = os.path.join(work, "postfix")
    os.makedirs(conf)
    with open(os.path.join(conf, "main.cf"), "w") as f:
        f.write("mynetworks = 192.0.2.1/32\n")
    # Postfix waits ~1.5 s on a main.cf younger than a second (conftest).
    os.utime(os.path.join(conf, "main.cf"), (time.time() - 60, time.time() - 60))
    open(os.path.join(conf, "master.cf"), "w").close()
    return [sys.executable, "-m", "pbsmtp_batch", f"--logfile={maillog}",
            f"--dbfile={work}/pop-before-smtp", f"--state-dir={work}/state",
            f"--postfix-config={conf}"]


def run_and_list(argv):
    """One run, as cron would, then the addresses ``--list --json`` shows in
    the map (written by the real postmap)."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    r = subprocess.run([*argv, "--list", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    return {entry["ip"] for entry in json.loads(r.stdout)}


def map_after_run(maillog):
    return run_and_list(tool_argv(maillog))


def check(maillog, good, bad, family):
    """Every good address, and nothing else, is found by *family* with its
    user, and lands in the map that a real run writes."""
    logins = logins_found(maillog)
    ips = {login.ip for login in logins}
    log = daemons.read_text(maillog)
    assert set(good) <= ips, f"missed successful logins {set(good) - ips}:\n{log}"
    assert not ips & set(bad), f"failed logins matched {ips & set(bad)}:\n{log}"
    assert ATTACKER not in ips, f"an injected user name reached the map:\n{log}"
    assert ips == set(good), f"unexpected addresses {ips - set(good)}:\n{log}"
    assert {login.pattern for login in logins} == {family}
    for login in logins:
        assert login.user == good[login.ip], login
    assert map_after_run(maillog) == set(good), log


def wait_until_listening(server):
    """Every port of an IMAP+POP3 server that ``exercise`` uses."""
    for port in (server.imap_port, server.pop3_port, server.imaps_port, server.pop3s_port):
        daemons.wait_for_port("127.0.0.1", port, server.proc.pid)
    if server.ipv6:
        daemons.wait_for_port("::1", server.imap_port, server.proc.pid)
