"""A run's log line through a real rsyslogd; the other tests of the operator's
toolbox are in test_tools.py and test_tools_unit.py.
"""

import shutil

import pytest

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login
from runs import invoke, query

pytestmark = pytest.mark.live


###############################################################################
# The run line in syslog, and metrics #########################################
###############################################################################

def test_a_run_that_changed_the_map_logs_one_line_through_syslog(site, monkeypatch):
    """A real rsyslogd (facility mail only) on a socket of its own."""
    import os
    import daemons
    from conftest import require
    require("rsyslogd")
    workdir = daemons.make_workdir()
    rsyslog = daemons.Rsyslog(workdir, template=daemons.TRADITIONAL)
    try:
        with rsyslog:
            monkeypatch.setattr(pb, "SYSLOG_SOCKET", rsyslog.socket)
            site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "192.0.2.11"),
                        dovecot_login(NOW - 3000, "192.0.2.12"))
            assert invoke(*site.args("--syslog")).output == ""
            line = f"pbsmtp-batch[{os.getpid()}]: added=2 refreshed=0 expired=0 active=2 lines=3"
            daemons.wait_for_log(rsyslog.maillog, line)
            # Nothing changed: no line. A refresh and an expiry: one line.
            invoke(*site.args("--syslog", now=NOW + 60))
            site.append(dovecot_login(NOW + 1700, "192.0.2.11"))
            invoke(*site.args("--syslog", now=NOW + 1745))
            last = (f"pbsmtp-batch[{os.getpid()}]: added=0 refreshed=1 expired=1 active=1 "
                    f"lines=1")
            daemons.wait_for_log(rsyslog.maillog, last)
            invoke(*site.args("--nosyslog", now=NOW + 3600))      # expires the last one
            assert query(site, "192.0.2.11") is None
            rsyslog.send("pbsmtp-harness", "flush")                # every earlier datagram is in
            daemons.wait_for_log(rsyslog.maillog, "pbsmtp-harness")
            lines = [l for l in daemons.read_text(rsyslog.maillog).splitlines()
                     if "pbsmtp-batch[" in l]
            assert len(lines) == 2 and lines[0].endswith(line) and lines[1].endswith(last)
            # The run line in the mail log is never read as a login.
            assert invoke(*site.args("--dry-run", f"--logfile={rsyslog.maillog}",
                                     "--reprocess")).output.count("would add") == 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
