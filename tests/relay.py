"""Postfix's smtpd deciding relay from the map pbsmtp-batch wrote, for the
tests that start daemons (on top of tests/daemons.py).

- The end-to-end lab (test_e2e.py, test_e2e_maptypes.py): rsyslogd, Dovecot
  and Postfix; ``Relay`` logs a client in, runs pbsmtp-batch as cron would,
  and asks smtpd whether it relays for that client.
- A private Postfix over any map type (test_backends.py, test_backends_sql.py):
  ``postfix_with_map`` and the RCPT TO verdicts.
"""

import os
import subprocess
import sys

import pytest

import daemons
from conftest import require_map_type, unavailable

RELAY_RCPT = "someone@example.net"       # not a local domain: a relay recipient


def postfix_with_map(workdir, map_type, cf_text):
    """A private Postfix (daemons.Postfix) whose relay map is MAP_TYPE:CF."""
    if os.geteuid() != 0:
        unavailable("Postfix must be started as root")
    require_map_type(map_type)
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


def postfix_lookup_keys(client: str) -> list[str]:
    """The keys smtpd's check_addr_access tries for a client address on a
    fixed-key table: the address, then cut at the last ':' (IPv6) or '.'
    (IPv4) again and again (split_at_right)."""
    key = client
    delim = ":" if ":" in client else "."
    keys = [key]
    while delim in key:
        key = key[:key.rindex(delim)]
        keys.append(key)
    return keys


###############################################################################
# The end-to-end lab ##########################################################
###############################################################################

USERS = {"alice": "wonderland", "bob": "builder-42"}




GRACE = 300                              # --grace for every run


TZ = "UTC"                               # rsyslogd and the tool agree on local time


def require_daemons(map_type):
    """Skip (fail under CI) when this machine cannot run the daemons."""
    missing = daemons.missing_binaries()
    problems = [f"{b} is not installed" for b in missing]
    packages = [daemons.REQUIRED_BINARIES[b] for b in missing]
    if os.geteuid() != 0:
        problems.append("the daemons must be started as root")
    if not missing and map_type not in daemons.supported_map_types():
        problems.append(f"Postfix has no {map_type} map support")
        packages.append(daemons.map_package(map_type))
    if problems:
        message = "; ".join(problems)
        if packages:
            message += f" (Debian: apt-get install {' '.join(dict.fromkeys(packages))})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def tool(lab, *extra):
    """Run pbsmtp-batch against the lab's log, map and Postfix config."""
    argv = [sys.executable, "-m", "pbsmtp_batch",
            f"--logfile={lab.maillog}", f"--dbfile={lab.dbfile}",
            f"--map-type={lab.map_type}", f"--state-dir={lab.state_dir}",
            f"--grace={GRACE}", f"--postfix-config={lab.postfix_config}", *extra]
    env = dict(os.environ, TZ=TZ)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def first_run(lab):
    """Before Postfix starts: the tool's first run must create an empty map
    (smtpd answers 451 for a missing one)."""
    r = tool(lab)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    assert os.path.exists(lab.postfix.map_file()), "the first run wrote no map"


class Relay:
    """One lab and the client moves a test makes."""

    def __init__(self, lab):
        self.lab = lab

    @staticmethod
    def host(source):
        return "::1" if ":" in source else "127.0.0.1"

    def rcpt(self, source):
        return daemons.smtp_rcpt(self.host(source), self.lab.postfix.port, RELAY_RCPT, source)

    def login(self, proto, source, user="alice", password=None, tls=False):
        """Log in (after STARTTLS if *tls*) and wait until the server's line
        is in the maillog."""
        password = USERS[user] if password is None else password
        start = daemons.file_size(self.lab.maillog)
        ca = self.lab.dovecot.cert if tls else None
        if proto == "pop3":
            ok, reply = daemons.pop3_login(self.host(source), self.lab.dovecot.pop3_port,
                                           user, password, source, tls_ca=ca)
        else:
            ok, reply = daemons.imap_login(self.host(source), self.lab.dovecot.imap_port,
                                           user, password, source, tls_ca=ca)
        dovecot = self.lab.dovecot
        if ok:
            line = daemons.wait_for_log(self.lab.maillog,
                                        f"{proto}-login: {dovecot.login_text}user=<{user}>",
                                        f"rip={source},", start=start)
        else:
            line = daemons.wait_for_log(self.lab.maillog, f"{proto}-login: {dovecot.failure_text}",
                                        "auth failed", f"rip={source},", start=start)
        return ok, reply, line

    def run(self, *extra):
        r = tool(self.lab, *extra)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), (r, self.logs())
        return r

    def logs(self, lines=12):
        """The ends of the maillog and the Postfix log, for failure messages."""
        tail = lambda path: daemons.read_text(path).splitlines()[-lines:]
        return {"maillog": tail(self.lab.maillog), "postfix": tail(self.lab.postfix.maillog)}

    def lookup(self, key):
        """The map's value for *key* as Postfix's postmap sees it, or None."""
        r = subprocess.run([daemons.which("postmap"), "-c", self.lab.postfix_config, "-q", key,
                            self.lab.postfix.map_spec], capture_output=True, text=True)
        assert r.returncode in (0, 1), r
        return r.stdout.strip() if r.returncode == 0 else None

    def assert_refused(self, source):
        code, text = self.rcpt(source)
        assert code == 554 and "Relay access denied" in text, (source, code, text, self.logs())

    def assert_accepted(self, source):
        code, text = self.rcpt(source)
        assert code == 250, (source, code, text, self.logs())


def relay_lab(map_type, **kwargs):
    """rsyslogd + Dovecot + Postfix (daemons.MailLab) for MAP_TYPE, its map made by a first run."""
    require_daemons(map_type)
    return daemons.MailLab(map_type, users=USERS, make_map=first_run, tz=TZ, **kwargs)
