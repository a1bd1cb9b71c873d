"""Cyrus IMAP 3.6 from Debian's .debs (cyrus-common, cyrus-imapd,
cyrus-pop3d, unpacked by tests/debs.py), run on loopback under the private
rsyslogd of tests/daemons.py: shared by test_daemon_logins.py and
test_cyrus_sessions_live.py."""

import os
import subprocess

import daemons
import debs
from logins import wait_until_listening


def library_path(root):
    return debs.library_path(root, "usr/lib/cyrus/lib")


class Cyrus:
    """cyrmaster with imapd and pop3d on 127.0.0.1, users in a private sasldb.

    Runs as root; Cyrus itself becomes ``cyrus_user`` (nobody). syslog(3)
    goes to the harness's rsyslogd through the private /dev/log.
    *imap_options* are added to the imap service's line in cyrus.conf
    (``maxchild=1``: one process serves every IMAP client, one at a time)."""

    def __init__(self, root, workdir, devlog, users, imap_options=""):
        self.root = root
        self.imap_options = imap_options
        self.workdir = workdir
        self.devlog = devlog
        self.users = users
        self.dir = os.path.join(workdir, "cyrus")
        self.conf = os.path.join(self.dir, "imapd.conf")
        self.ipv6 = daemons.ipv6_loopback()
        self.imap_port = daemons.free_port(("127.0.0.1", "::1") if self.ipv6 else ("127.0.0.1",))
        self.pop3_port = daemons.free_port()
        self.imaps_port = daemons.free_port()
        self.pop3s_port = daemons.free_port()
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        self.env = dict(os.environ, LD_LIBRARY_PATH=library_path(root))
        self.proc = None

    def configure(self):
        d = self.dir
        for sub in ("conf/db", "conf/socket", "conf/proc", "conf/lock", "spool", "run"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        sasldb = os.path.join(d, "sasldb2")
        daemons.make_cert(self.cert, self.key)
        with open(self.conf, "w") as f:
            f.write(f"""\
configdirectory: {d}/conf
partition-default: {d}/spool
cyrus_user: nobody
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {sasldb}
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
autocreate_quota: 0
autocreate_post: 1
lmtpsocket: {d}/conf/socket/lmtp
idlesocket: {d}/conf/socket/idle
notifysocket: {d}/conf/socket/notify
proc_path: {d}/conf/proc
mboxname_lockpath: {d}/conf/lock
unixhierarchysep: yes
tls_server_cert: {self.cert}
tls_server_key: {self.key}
# STARTTLS/STLS: Cyrus 3.10.2 and 3.12.1 (Debian 13 has 3.10.2) no longer offer
# them unless allowstarttls is on (their release notes); Debian 12's 3.6
# offers them anyway and ignores the option.
allowstarttls: on
""")
        bin_ = os.path.join(self.root, "usr/lib/cyrus/bin")
        # imapd -s / pop3d -s below: implicit TLS, logged as cyrus/imaps and
        # cyrus/pop3s. The ::1 listener is a service of its own, cyrus/imap6.
        imap6 = (f'imap6 cmd="{bin_}/imapd -C {self.conf}" listen="[::1]:{self.imap_port}" '
                 f"prefork=0" if self.ipv6 else "")
        with open(os.path.join(d, "cyrus.conf"), "w") as f:
            f.write(f"""\
START {{
  recover cmd="{bin_}/ctl_cyrusdb -C {self.conf} -r"
}}
SERVICES {{
  imap cmd="{bin_}/imapd -C {self.conf}" listen="127.0.0.1:{self.imap_port}" prefork=0 {self.imap_options}
  pop3 cmd="{bin_}/pop3d -C {self.conf}" listen="127.0.0.1:{self.pop3_port}" prefork=0
  imaps cmd="{bin_}/imapd -s -C {self.conf}" listen="127.0.0.1:{self.imaps_port}" prefork=0
  pop3s cmd="{bin_}/pop3d -s -C {self.conf}" listen="127.0.0.1:{self.pop3s_port}" prefork=0
  {imap6}
}}
EVENTS {{
}}
""")
        for user, password in self.users.items():
            subprocess.run([os.path.join(self.root, "usr/sbin/saslpasswd2"), "-f", sasldb,
                            "-p", "-c", "-u", "", user], input=password.encode(),
                           env=self.env, check=True, capture_output=True)
        subprocess.run(["chown", "-R", "nobody:nogroup", d], check=True)

    def start(self):
        self.configure()
        argv = [os.path.join(self.root, "usr/sbin/cyrmaster"), "-D", "-C", self.conf,
                "-M", os.path.join(self.dir, "cyrus.conf"),
                "-p", os.path.join(self.dir, "run/master.pid")]
        self.output = os.path.join(self.dir, "master.out")
        self.proc = daemons.start_with_devlog(self.workdir, self.devlog, argv, self.output, self.env)
        wait_until_listening(self)

    def stop(self):
        daemons.stop_process(self.proc)
        self.proc = None
