"""The operator's toolbox where it needs nothing but Python: the classic
command line's errors, the README's variable list, --dumpconfig without
Postfix, the shipped patterns, and the pattern tester. The others are in
test_tools.py (Postfix's tools) and test_tools_live.py (rsyslogd).
"""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login
from runs import invoke

README = Path(__file__).resolve().parent.parent / "README"

pytestmark = pytest.mark.unit


def test_daemon_is_a_usage_error_that_says_what_to_use():
    result = CliRunner().invoke(pb.cli, ["--daemon=/run/pop-before-smtp.pid"])
    assert result.exit_code == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1
    assert "not a daemon" in error[0] and "cron" in error[0] and "path unit" in error[0]


###############################################################################
# PBSMTP_* variables ##########################################################
###############################################################################

def readme_variables() -> set[str]:
    text = README.read_text()
    block = text[text.index("<!-- environment variables:"):
                 text.index("<!-- end of environment variables -->")]
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", block))


def test_the_readme_lists_exactly_the_variables_of_the_command():
    derived = set()
    for param in pb.cli.params:
        derived.update(pb.option_envvars(param))
    assert "PBSMTP_LIST" not in derived and "PBSMTP_DRY_RUN" not in derived
    assert readme_variables() == derived


def test_dumpconfig_warns_when_mynetworks_cannot_be_read(tmp_path):
    result = CliRunner().invoke(pb.cli, ["--dumpconfig", f"--postfix-config={tmp_path}/none",
                                         f"--logfile={tmp_path}/log"])
    assert result.exit_code == 0
    assert "# postfix instance: cannot be read" in result.stdout
    assert "pbsmtp-batch: warning: cannot read Postfix's mynetworks" in result.stderr


def test_without_an_admin_directory_the_shipped_set_is_used(admin_dir):
    shipped = sorted(p.stem for p in Path(pb.shipped_patterns_dir()).glob("*.toml"))
    assert [src.name for src in pb.pattern_files()] == shipped
    assert {src.origin for src in pb.pattern_files()} == {"shipped"}


###############################################################################
# The pattern tester ##########################################################
###############################################################################

CAROL = "Nov 24 23:00:00 mail newpop[7]: user carol logged in from 198.51.100.9"


def test_check_patterns_reads_standard_input_and_single_lines(tmp_path):
    text = dovecot_login(NOW - 60, "192.0.2.10") + CAROL + "\n"
    result = invoke("--check-patterns", "--logfile=-", f"--now={NOW}", input=text)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["dovecot", "1", "1"]
    assert "2 lines, 1 logins from 1 distinct addresses" in lines
    assert f"  {CAROL}" in lines
    result = invoke("--check-patterns", f"--line={CAROL}", f"--now={NOW}")
    assert "1 lines, 0 logins from 0 distinct addresses" in result.output
    assert "1 look like logins but matched no pattern:" in result.output
    result = invoke("--check-patterns", f"--line={dovecot_login(NOW - 5, '2001:db8::5')}",
                    f"--line={CAROL}", "--json", f"--now={NOW}")
    data = json.loads(result.output)
    assert data["lines"] == 2 and data["patterns"]["dovecot"]["addresses"] == ["2001:db8::5"]


def test_check_patterns_counts_lines_without_a_time(tmp_path):
    log = tmp_path / "log"
    untimed = [f"mail dovecot: imap-login: Login: user=<u{i}>, rip=192.0.2.{i}, lip=192.0.2.1"
               for i in range(8)]
    log.write_text("\n".join(untimed) + "\n" + dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke("--check-patterns", f"--logfile={log}", f"--now={NOW}")
    lines = result.output.splitlines()
    at = lines.index("8 lines without a time it can read (never a login), e.g.:")
    assert lines[at + 1:] == [f"  {line}" for line in untimed[:pb.UNTIMED_EXAMPLES]]
    data = json.loads(invoke("--check-patterns", f"--logfile={log}", "--json",
                             f"--now={NOW}").output)
    assert (data["untimed"], data["untimed_examples"]) == (8, untimed[:pb.UNTIMED_EXAMPLES])


def test_check_patterns_lists_matched_patterns_unless_verbose(tmp_path):
    log = tmp_path / "log"
    near = [f"Nov 24 23:00:{i:02d} mail newpop[7]: user u{i} logged in from 198.51.100.{i}"
            for i in range(25)]
    log.write_text(dovecot_login(NOW - 60, "192.0.2.10") + "\n".join(near) + "\n")
    short = invoke("--check-patterns", f"--logfile={log}", f"--now={NOW}").output
    table = short.split("\n2")[0].splitlines()[1:]        # the rows before the totals
    assert [row.split()[0] for row in table] == ["dovecot"]
    assert "  ... and 5 more (-v shows all)" in short
    assert sum(line.startswith("  Nov 24") for line in short.splitlines()) == 20
    full = invoke("--check-patterns", f"--logfile={log}", "-v", f"--now={NOW}").output
    assert "courier" in full and "... and" not in full
    assert sum(line.startswith("  Nov 24") for line in full.splitlines()) == 25
