#!/usr/bin/env python3
"""Write a realistic mail log of a given size, for the benchmarks.

Most lines are what a busy Postfix host logs (postscreen, smtpd, cleanup,
qmgr, smtp, local, anvil, Dovecot LDA). About 5 % are Dovecot 2.3 POP/IMAP
login-process lines: successful logins, authentication failures, disconnects
without a login and session ends, from many distinct IPv4 and IPv6 clients.
Client addresses are public-looking (never 10/8, 127/8, 172.16/12,
192.168/16, 100.64/10, 169.254/16, multicast) so that no default mynetworks
swallows them; IPv6 clients are in 2001:db8::/32.

The log's timestamps run evenly from ``now - span`` to ``now``, so a run
started with ``pbsmtp-batch --now=NOW --grace=G`` keeps exactly the logins of
the last G seconds. ``--manifest FILE`` writes what a correct tool must find:
for a grace window, the distinct addresses of the successful logins in it.

Stdlib only and deterministic: the same --seed, --size, --format and --now
give the same bytes.

    python3 benchmarks/genlog.py --size 100M --now 1795000000 -o /tmp/maillog
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

DEFAULT_NOW = 1795000000          # 2026-11-18 11:06:40 UTC: fixed, so runs are repeatable
POP_SHARE = 0.05                  # share of lines from the POP/IMAP login processes
HOSTS = "mail"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in _UNITS else ""
    return int(float(text[:len(text) - len(unit)]) * _UNITS[unit])


###############################################################################
# Addresses ###################################################################
###############################################################################

_PRIVATE_FIRST_OCTETS = {0, 10, 100, 127, 169, 172, 192} | set(range(224, 256))


def ipv4(rng: random.Random) -> str:
    # Skipping a few whole /8s that hold private or special ranges keeps the
    # addresses public-looking without a per-address range check.
    while True:
        a = rng.randint(1, 223)
        if a not in _PRIVATE_FIRST_OCTETS:
            break
    return f"{a}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def ipv6(rng: random.Random) -> str:
    # Canonical (inet_ntop) form: no zero groups, so nothing to compress.
    groups = [rng.randint(1, 0xffff) for _ in range(6)]
    return "2001:db8:" + ":".join(f"{g:x}" for g in groups)


def client_pool(rng: random.Random, count: int, v6_share: float = 0.3) -> list[str]:
    seen: set[str] = set()
    pool = []
    while len(pool) < count:
        ip = ipv6(rng) if rng.random() < v6_share else ipv4(rng)
        if ip not in seen:
            seen.add(ip)
            pool.append(ip)
    return pool


###############################################################################
# Timestamps ##################################################################
###############################################################################

class Stamper:
    """The line prefix up to the program tag, cached per second."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self._sec = None
        self._base = ""

    def prefix(self, when: float, program: str, pid: int | None) -> str:
        sec = int(when)
        if sec != self._sec:
            self._sec = sec
            if self.fmt == "rfc3164":
                # Local time, like rsyslog's traditional format; the tool reads
                # it in the same TZ (the benchmark runs everything with TZ=UTC).
                t = time.localtime(sec)
                self._base = time.strftime("%b ", t) + f"{t.tm_mday:2d} " + time.strftime("%H:%M:%S", t)
            else:
                self._base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        if self.fmt == "rfc3164":
            tag = f"{program}[{pid}]" if pid is not None else program
            return f"{self._base} {HOSTS} {tag}: "
        usec = int((when - sec) * 1e6)
        if self.fmt == "rfc3339":
            tag = f"{program}[{pid}]" if pid is not None else program
            return f"{self._base}.{usec:06d}+00:00 {HOSTS} {tag}: "
        # RFC 5424 as rsyslog's RSYSLOG_SyslogProtocol23Format writes it (mail.info = <22>).
        return f"<22>1 {self._base}.{usec:06d}+00:00 {HOSTS} {program} {pid if pid is not None else '-'} - - "


###############################################################################
# Line makers #################################################################
###############################################################################

_HEX = "0123456789ABCDEF"
_B62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DOMAINS = ["example.org", "example.com", "example.net", "mail.example.org", "lists.example.com",
            "newsletter.example.net", "shop.example.com", "university.example.edu"]
_USERS = [f"user{i:04d}" for i in range(2000)] + ["alice", "bob", "carol", "dave", "erin",
                                                   "frank", "grace", "heidi", "ivan", "judy"]


class Maker:
    def __init__(self, rng: random.Random, pool: list[str], mx_pool: list[str]):
        self.rng = rng
        self.pool = pool
        self.mx_pool = mx_pool
        self.qids = ["".join(rng.choice(_HEX) for _ in range(10)) for _ in range(4096)]
        self.sessions = ["".join(rng.choice(_B62) for _ in range(16)) for _ in range(4096)]

    def _qid(self) -> str:
        return self.qids[self.rng.getrandbits(12)]

    def _pid(self) -> int:
        return 1000 + self.rng.getrandbits(15)

    def _client(self) -> str:
        # A few clients log in often, most rarely (roughly Zipf-like).
        r = self.rng.random()
        return self.pool[int(len(self.pool) * r * r * r)]

    def _mx(self) -> str:
        return self.mx_pool[self.rng.getrandbits(10) % len(self.mx_pool)]

    def _addr(self) -> str:
        r = self.rng
        return f"{r.choice(_USERS)}@{r.choice(_DOMAINS)}"

    def noise(self) -> tuple[str, int | None, str]:
        """A non-login line: (program, pid, message)."""
        r = self.rng
        k = r.getrandbits(4)
        q = self._qid()
        if k == 0:
            return ("postfix/postscreen", self._pid(),
                    f"CONNECT from [{self._mx()}]:{r.randint(1024, 65535)} to [198.51.100.25]:25")
        if k == 1:
            return ("postfix/smtpd", self._pid(), f"connect from unknown[{self._mx()}]")
        if k in (2, 3):
            return ("postfix/smtpd", self._pid(), f"{q}: client=mx{r.getrandbits(8)}.{r.choice(_DOMAINS)}[{self._mx()}]")
        if k in (4, 5):
            return ("postfix/cleanup", self._pid(),
                    f"{q}: message-id=<{r.getrandbits(64):016x}.{r.getrandbits(20)}@{r.choice(_DOMAINS)}>")
        if k in (6, 7):
            return ("postfix/qmgr", self._pid(),
                    f"{q}: from=<{self._addr()}>, size={r.randint(800, 400000)}, nrcpt=1 (queue active)")
        if k == 8:
            d = r.random() * 2
            return ("postfix/smtp", self._pid(),
                    f"{q}: to=<{self._addr()}>, relay=mx{r.getrandbits(4)}.{r.choice(_DOMAINS)}[{self._mx()}]:25, "
                    f"delay={d:.2f}, delays=0.1/0.01/{d / 3:.2f}/{d / 2:.2f}, dsn=2.0.0, "
                    f"status=sent (250 2.0.0 Ok: queued as {self._qid()})")
        if k == 9:
            return ("postfix/local", self._pid(),
                    f"{q}: to=<{r.choice(_USERS)}@example.org>, relay=local, delay=0.{r.getrandbits(6):02d}, "
                    f"delays=0.02/0.01/0/0.02, dsn=2.0.0, status=sent (delivered to command: /usr/lib/dovecot/deliver)")
        if k in (10, 11):
            return ("postfix/qmgr", self._pid(), f"{q}: removed")
        if k == 12:
            return ("postfix/smtpd", self._pid(),
                    f"disconnect from unknown[{self._mx()}] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")
        if k == 13:
            return ("postfix/smtpd", self._pid(),
                    f"NOQUEUE: reject: RCPT from unknown[{self._mx()}]: 554 5.7.1 <{self._addr()}>: "
                    f"Relay access denied; from=<{self._addr()}> to=<{self._addr()}> proto=ESMTP "
                    f"helo=<{r.choice(_DOMAINS)}>")
        if k == 14:
            return ("dovecot", None,
                    f"lda({r.choice(_USERS)})<{self._pid()}><{r.choice(self.sessions)}>: "
                    f"sieve: msgid=<{r.getrandbits(48):x}@{r.choice(_DOMAINS)}>: stored mail into mailbox 'INBOX'")
        return ("postfix/anvil", self._pid(),
                f"statistics: max connection rate {r.randint(1, 40)}/60s for (smtp:{self._mx()}) at "
                f"Nov 18 09:{r.randint(10, 59)}:{r.randint(10, 59)}")

    def pop(self) -> tuple[str, int | None, str, str | None]:
        """A POP/IMAP line: (program, pid, message, ip of a successful login or None)."""
        r = self.rng
        ip = self._client()
        proto = "imap" if r.random() < 0.7 else "pop3"
        user = r.choice(_USERS)
        sess = r.choice(self.sessions)
        lip = "198.51.100.1" if ":" not in ip else "2001:db8::1"
        pid = self._pid() if r.random() < 0.5 else None     # "dovecot:" and "dovecot[PID]:"
        k = r.random()
        if k < 0.50:
            word = "Login" if r.random() < 0.9 else "Logged in"   # 2.3 and 2.4 wording
            tls = r.choice(("TLS", "secured", "TLS, TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"))
            return ("dovecot", pid,
                    f"{proto}-login: {word}: user=<{user}>, method=PLAIN, rip={ip}, lip={lip}, "
                    f"mpid={self._pid()}, {tls}, session=<{sess}>", ip)
        if k < 0.65:
            return ("dovecot", pid,
                    f"{proto}-login: Disconnected (auth failed, {r.randint(1, 3)} attempts in {r.randint(1, 12)} secs): "
                    f"user=<{user}>, method=PLAIN, rip={ip}, lip={lip}, TLS, session=<{sess}>", None)
        if k < 0.75:
            return ("dovecot", pid,
                    f"{proto}-login: Disconnected (no auth attempts in {r.randint(0, 30)} secs): "
                    f"user=<>, rip={ip}, lip={lip}, TLS handshaking: SSL_accept() failed: "
                    f"error:0A000416:SSL routines::sslv3 alert certificate unknown: SSL alert number 46, "
                    f"session=<{sess}>", None)
        if k < 0.80:
            return ("dovecot", pid,
                    f"auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot "
                    f"ruser={user} rhost={ip}  user={user}", None)
        if proto == "imap":
            return ("dovecot", pid,
                    f"imap({user})<{self._pid()}><{sess}>: Disconnected: Logged out in={r.randint(50, 9000)} "
                    f"out={r.randint(300, 900000)} deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 "
                    f"body_count=0 body_bytes=0", None)
        return ("dovecot", pid,
                f"pop3({user})<{self._pid()}><{sess}>: Disconnected: Logged out top=0/0, "
                f"retr={r.randint(0, 9)}/{r.randint(0, 900000)}, del=0/{r.randint(0, 9)}, size={r.randint(0, 900000)}",
                None)


###############################################################################
# Writing #####################################################################
###############################################################################

def generate(out, size: int, fmt: str, now: float, span: float, seed: int, clients: int,
             pop_share: float = POP_SHARE, graces: tuple[int, ...] = ()) -> dict:
    """Write about ``size`` bytes of complete lines; return the manifest."""
    rng = random.Random(seed)
    pool = client_pool(rng, clients)
    mx_pool = [ipv4(rng) for _ in range(1000)]
    maker = Maker(rng, pool, mx_pool)
    stamper = Stamper(fmt)
    start = now - span
    written = lines = pop_lines = successes = 0
    windows = {g: set() for g in graces}
    buf: list[str] = []
    buf_bytes = 0
    random_ = rng.random
    while written < size:
        # Time follows the bytes written, so the stamps spread evenly over the span.
        when = start + span * written / size
        if random_() < pop_share:
            program, pid, msg, ok_ip = maker.pop()
            pop_lines += 1
            if ok_ip is not None:
                successes += 1
                for g, seen in windows.items():
                    if int(when) >= now - g:
                        seen.add(ok_ip)
        else:
            program, pid, msg = maker.noise()
        line = stamper.prefix(when, program, pid) + msg + "\n"
        buf.append(line)
        n = len(line)              # ASCII only, so characters are bytes
        buf_bytes += n
        written += n
        lines += 1
        if buf_bytes >= 1 << 20:
            out.write("".join(buf).encode("ascii"))
            buf.clear()
            buf_bytes = 0
    out.write("".join(buf).encode("ascii"))
    return {"bytes": written, "lines": lines, "pop_lines": pop_lines, "successes": successes,
            "format": fmt, "now": now, "span": span, "seed": seed,
            "in_grace": {str(g): sorted(seen) for g, seen in windows.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="10M", help="bytes to write: 500K, 100M, 1G [%(default)s]")
    p.add_argument("--format", default="rfc3164", choices=("rfc3164", "rfc3339", "rfc5424"))
    p.add_argument("--now", type=float, default=DEFAULT_NOW,
                   help="epoch time of the last line [%(default)s]")
    p.add_argument("--span", type=float, default=86400, help="seconds the log covers [%(default)s]")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--clients", type=int, default=50000, help="distinct POP/IMAP clients [%(default)s]")
    p.add_argument("--pop-share", type=float, default=POP_SHARE)
    p.add_argument("--grace", type=int, action="append", default=[],
                   help="list the logins of this last window in the manifest (repeatable)")
    p.add_argument("--manifest", metavar="FILE", help="write what was generated, as JSON")
    p.add_argument("-o", "--output", default="-", help="file to write [stdout]")
    args = p.parse_args(argv)
    size = parse_size(args.size)
    if args.output == "-":
        manifest = generate(sys.stdout.buffer, size, args.format, args.now, args.span, args.seed,
                            args.clients, args.pop_share, tuple(args.grace))
    else:
        with open(args.output, "wb") as f:
            manifest = generate(f, size, args.format, args.now, args.span, args.seed,
                                args.clients, args.pop_share, tuple(args.grace))
    if args.manifest:
        with open(args.manifest, "w") as f:
            json.dump(manifest, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
