"""Password-checking POP3, IMAP and ManageSieve servers on 127.0.0.1, in the
test process: the upstreams (back-ends) of the proxies under test
(imapproxy, Perdition, Dovecot as a proxy). A proxy logs what its upstream
answered, so the upstream must refuse a wrong password for real."""

import base64
import re
import socketserver
import threading


class ThreadingServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


# POP3 and ManageSieve ################################################################

def serve(handler):
    server = ThreadingServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pop3_upstream(users):
    """A POP3 server that accepts USER/PASS only with a right password."""
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"+OK upstream ready\r\n")
            user = None
            for raw in self.rfile:
                command, _, arg = raw.decode(errors="replace").rstrip("\r\n").partition(" ")
                command = command.upper()
                if command == "USER":
                    user = arg
                    self.wfile.write(b"+OK\r\n")
                elif command == "PASS" and user is not None and users.get(user) == arg:
                    self.wfile.write(b"+OK logged in\r\n")
                elif command == "QUIT":
                    self.wfile.write(b"+OK bye\r\n")
                    return
                else:
                    user = None
                    self.wfile.write(b"-ERR [AUTH] failed\r\n")
    return serve(Handler)


_SIEVE_WORD = re.compile(rb'"((?:[^"\\]|\\.)*)"|\{(\d+)\+?\}$|(\S+)')


def sieve_upstream(users):
    """A ManageSieve server: AUTHENTICATE "PLAIN" (as a quoted string or a
    literal) succeeds only with a right password; the authorisation id is
    not checked."""
    greeting = (b'"IMPLEMENTATION" "upstream"\r\n"SASL" "PLAIN"\r\n"VERSION" "1.0"\r\n'
                b'OK "ready"\r\n')

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(greeting)
            for raw in self.rfile:
                words = []
                for m in _SIEVE_WORD.finditer(raw.rstrip(b"\r\n")):
                    if m[2] is not None:
                        words.append(self.rfile.read(int(m[2])))
                        self.rfile.readline()
                    else:
                        words.append(m[1] if m[1] is not None else m[3])
                command = words[0].upper() if words else b""
                if command == b"AUTHENTICATE" and len(words) == 3:
                    try:
                        _, user, password = base64.b64decode(words[2]).decode().split("\0")
                    except ValueError:
                        user = password = None
                    ok = user is not None and users.get(user) == password
                    self.wfile.write(b'OK "in"\r\n' if ok else b'NO "failed"\r\n')
                elif command == b"CAPABILITY":
                    self.wfile.write(greeting)
                elif command == b"LOGOUT":
                    self.wfile.write(b'OK "bye"\r\n')
                    return
                else:
                    self.wfile.write(b'NO "unknown"\r\n')
    return serve(Handler)


# The upstream IMAP server ######################################################

_TOKEN = re.compile(rb' *(?:"((?:[^"\\\r\n]|\\.)*)"|\{(\d+)\}$|([^ "(){}\r\n]+))')


def read_command(rfile, wfile):
    """The words of one IMAP command (quoted strings unquoted, synchronising
    literals read in) and whether it parsed; None at end of input."""
    raw = rfile.readline()
    if not raw:
        return None
    line, words = raw.rstrip(b"\r\n"), []
    while True:
        pos, literal = 0, None
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if not m:
                return words, False
            pos = m.end()
            if m[2] is not None:
                literal = int(m[2])
            elif m[1] is not None:
                words.append(re.sub(rb"\\(.)", rb"\1", m[1]))
            else:
                words.append(m[3])
        if literal is None:
            return words, True
        wfile.write(b"+ go ahead\r\n")
        words.append(rfile.read(literal))
        line = rfile.readline().rstrip(b"\r\n")


def imap_upstream(users):
    """An IMAP server on 127.0.0.1 that accepts LOGIN only with a right password."""
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"* OK [CAPABILITY IMAP4rev1 UNSELECT] upstream ready\r\n")
            while True:
                got = read_command(self.rfile, self.wfile)
                if got is None:
                    return
                words, parsed = got
                if len(words) < 2:
                    self.wfile.write(b"* BAD no command\r\n")
                    continue
                tag, command = words[0], words[1].upper()
                if command == b"CAPABILITY":
                    self.wfile.write(b"* CAPABILITY IMAP4rev1 UNSELECT\r\n" + tag + b" OK done\r\n")
                elif command == b"LOGIN":
                    args = [w.decode(errors="replace") for w in words[2:]]
                    if parsed and len(args) == 2 and users.get(args[0]) == args[1]:
                        self.wfile.write(tag + b" OK logged in\r\n")
                    else:
                        self.wfile.write(tag + b" NO [AUTHENTICATIONFAILED] failed\r\n")
                elif command == b"LOGOUT":
                    self.wfile.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                    return
                else:
                    self.wfile.write(tag + b" OK done\r\n")
    return serve(Handler)
