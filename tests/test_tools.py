"""The operator's toolbox: the classic command line, the PBSMTP_* variables,
--dumpconfig, the patterns overlay, the pattern tester and human times.
All through click's CliRunner against the real postmap and postconf."""

import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import pbsmtp_batch as pb
from conftest import NOW, dovecot_login, syslog_time
from runs import invoke, query

pytestmark = pytest.mark.tools

README = Path(__file__).resolve().parent.parent / "README"


def readme_block(after: str) -> str:
    """The first fenced block after the line that contains ``after``."""
    text = README.read_text()
    start = text.index(after)
    block = re.search(r"```\n(.*?)```", text[start:], re.DOTALL)
    return block[1]


###############################################################################
# The classic command line ####################################################
###############################################################################

def test_the_readme_migration_command_works_verbatim(site):
    """The README's classic command, with only its two paths pointed at the
    test site; the state directory and the Postfix instance come from the
    environment, so the argument list is the README's own."""
    command = readme_block("so a test run\nyou used to make with the daemon works as it was")
    argv = shlex.split(command.strip())
    assert argv[0] == "pbsmtp-batch"
    argv = [a.replace("/var/log/mail.log", str(site.log))
             .replace("/etc/postfix/pop-before-smtp", str(site.map)) for a in argv[1:]]
    now = int(time.time())
    site.append(dovecot_login(now - 60, "192.0.2.10"), dovecot_login(now - 7200, "192.0.2.11"))
    result = invoke(*argv, env={"PBSMTP_STATE_DIR": str(site.state),
                                "MAIL_CONFIG": str(site.conf)})
    assert result.exit_code == 0, result.output
    assert "debug: login 192.0.2.10 user=alice at " in result.output
    assert "debug: skipped 192.0.2.11 (dovecot): login at " in result.output
    assert not site.map.with_suffix(".db").exists()          # --nowrite
    assert "added 192.0.2.10 to DB" not in result.output     # nothing written, nothing logged


def test_every_classic_option_is_accepted(site, tmp_path):
    config = tmp_path / "pbsmtp.conf"
    config.write_text(f'state-dir = "{site.state}"\n')
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    logto = tmp_path / "changes.log"
    result = invoke(f"--config={config}", "--write", "--nodebug", "--flock", "--noreprocess",
                    f"--watchlog={site.log}", f"--dbfile={site.map}", f"--logto={logto}",
                    "--grace=1800", f"--postfix-config={site.conf}", f"--now={NOW}")
    assert (result.exit_code, result.output) == (0, "")
    assert query(site, "192.0.2.10") == str(NOW - 60)
    assert logto.read_text() == "Nov 24 23:30:00 added 192.0.2.10 to DB\n"
    listed = invoke(f"--config={config}", f"--dbfile={site.map}", "--list",
                    f"--postfix-config={site.conf}", f"--now={NOW}")
    assert listed.output.startswith("192.0.2.10 ")
    dumped = invoke(f"--config={config}", f"--watchlog={site.log}", "--dumpconfig",
                    f"--postfix-config={site.conf}")
    assert f'logfile = "{site.log}"' in dumped.output
    assert invoke("--version").output == f"pbsmtp-batch, version {pb.__version__}\n"


PERL_CONFIGS = {
    "shebang": "#!/usr/bin/perl -w\n# pop-before-smtp-conf.pl\n",
    "use": "# config\nuse strict;\n",
    "assignment": "# Set the log file we will watch for pop3d/imapd records.\n"
                  "$file_tail{'name'} = '/var/log/maillog';\n$grace = 30*60;\n",
    "sub": "sub custom_match\n{\n    return;\n}\n",
}


@pytest.mark.parametrize("name", sorted(PERL_CONFIGS))
def test_a_perl_config_gets_one_error_line_pointing_to_the_migration(site, tmp_path, name):
    config = tmp_path / "pop-before-smtp-conf.pl"
    config.write_text(PERL_CONFIGS[name] + "1;\n")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = CliRunner().invoke(pb.cli, [f"--config={config}", *site.args()])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: config file {config} is the classic pop-before-smtp Perl config "
        f"(pop-before-smtp-conf.pl); pbsmtp-batch reads TOML: see the README, "
        f"\"Migrating from the Perl pop-before-smtp\"\n")
    assert "## Migrating from the Perl pop-before-smtp" in README.read_text()
    assert not site.state.exists() and query(site, "192.0.2.10") is None


def test_a_toml_config_is_not_taken_for_perl(site, tmp_path):
    config = tmp_path / "pbsmtp.conf"
    config.write_text('# grace in seconds: $grace = 1800; in the Perl file\n'
                      'grace = 900\nlogto = "-"\n')
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(f"--config={config}", *site.args())
    assert (result.exit_code, result.output) == (0, "Nov 24 23:30:00 added 192.0.2.10 to DB\n")


def test_logto_writes_each_add_and_remove_like_the_classic_daemon(site, tmp_path):
    logto = tmp_path / "pbs.log"
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "2001:db8::10"))
    assert invoke(*site.args(f"--logto={logto}")).exit_code == 0
    site.append(dovecot_login(NOW + 1000, "192.0.2.10"))        # a refresh: not logged
    assert invoke(*site.args(f"--logto={logto}", now=NOW + 1000)).exit_code == 0
    result = invoke(*site.args("--logto=-", now=NOW + 1800))
    assert result.output == "Nov 25 00:00:00 removed 2001:db8::10 from DB\n"
    assert logto.read_text() == ("Nov 24 23:30:00 added 192.0.2.10 to DB\n"
                                 "Nov 24 23:30:00 added 2001:db8::10 to DB\n")
    assert query(site, "2001:db8::10") is None
    # Dry runs change nothing, so they log nothing.
    site.append(dovecot_login(NOW + 1790, "192.0.2.30"))
    invoke(*site.args(f"--logto={logto}", "--dry-run", now=NOW + 1800))
    assert "192.0.2.30" not in logto.read_text()


def test_an_unwritable_logto_fails_before_anything_changes(site, tmp_path):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = CliRunner().invoke(pb.cli, site.args(f"--logto={tmp_path}/nodir/x.log"))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: cannot write --logto file {tmp_path}/nodir/x.log: "
                             f"No such file or directory\n")
    assert query(site, "192.0.2.10") is None


###############################################################################
# PBSMTP_* variables ##########################################################
###############################################################################

def test_every_variable_of_every_option_works(site):
    """Each repeatable option is read from its documented (singular) name."""
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 60, "198.51.100.7"),
                dovecot_login(NOW - 60, "203.0.113.5"))
    result = invoke(*site.args("--dry-run"),
                    env={"PBSMTP_IGNORE_NET": "198.51.100.0/24 203.0.113.0/24",
                         "PBSMTP_PATTERN": "dovecot courier"})
    assert result.exit_code == 0
    assert [line.split()[2] for line in result.output.splitlines()
            if line.startswith("would add")] == ["192.0.2.10"]
    result = invoke(*site.args("--dry-run"), env={"PBSMTP_IGNORE_NETS": "192.0.2.0/24"})
    assert "would add 192.0.2.10" not in result.output       # the old plural still works
    result = invoke(*site.args("--dry-run"), env={"PBSMTP_PATTERN": "courier"})
    assert "would add" not in result.output


def test_actions_are_not_read_from_the_environment(site):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = invoke(*site.args(), env={"PBSMTP_LIST": "1", "PBSMTP_DRY_RUN": "1",
                                       "PBSMTP_JSON": "1", "PBSMTP_DUMPCONFIG": "1"})
    assert (result.exit_code, result.output) == (0, "")
    assert query(site, "192.0.2.10") == str(NOW - 60)


###############################################################################
# --dumpconfig ################################################################
###############################################################################

def dumped_settings(output: str) -> dict[str, tuple[str, str]]:
    """setting -> (value as printed, where it came from)."""
    found = {}
    for line in output.splitlines():
        m = re.fullmatch(r"(?:# )?([a-z0-9-]+) (?:= )?(.*?) +# (.*)", line)
        if m:
            found[m[1]] = (m[2], m[3])
    return found


def test_dumpconfig_names_each_settings_source(site, tmp_path):
    config = tmp_path / "pbsmtp.conf"
    config.write_text(f'grace = 600\ndbfile = "{site.map}"\nignore-net = ["10.0.0.0/8"]\n'
                      f'pg-dsn = "host=db user=pbsmtp password=s3cret"\n'
                      f'mysql-url = "mysql://pbsmtp:t0psecret@db.example.com/mail"\n')
    result = invoke(f"--config={config}", f"--logfile={site.log}", "--dumpconfig",
                    f"--postfix-config={site.conf}",
                    env={"PBSMTP_STATE_DIR": str(site.state), "PBSMTP_GRACE": None})
    assert result.exit_code == 0, result.output
    settings = dumped_settings(result.output)
    assert settings["logfile"] == (f'"{site.log}"', "command line")
    assert settings["state-dir"] == (f'"{site.state}"', "environment PBSMTP_STATE_DIR")
    assert settings["grace"] == ("600", f"config file {config}")
    assert settings["ignore-net"] == ('["10.0.0.0/8"]', f"config file {config}")
    assert settings["write"] == ("true", "default")
    assert settings["pg-dsn"][0] == '"host=db user=pbsmtp password=***"'
    assert settings["mysql-url"][0] == '"mysql://pbsmtp:***@db.example.com/mail"'
    assert "s3cret" not in result.output and "t0psecret" not in result.output
    assert settings["postfix-config"] == (f'"{site.conf}"', "command line")
    assert f"# config file: {config}" in result.output
    assert f"# postfix instance: {site.conf}\n" in result.output
    assert "# mynetworks (never added): 127.0.0.1/32 [::1]/128\n" in result.output
    assert (f"# map: hash:{site.map} (type from postconf default_database_type; "
            f"file {site.map}.db, not yet written)") in result.output
    # Every setting is listed, and no action.
    for param in pb.cli.params:
        name = param.opts[0].lstrip("-")
        listed = name in settings
        assert listed == (bool(pb.option_envvars(param)) and param.name != "config"), name


def test_dumpconfig_output_is_a_config_file(site, tmp_path):
    """The settings it prints, fed back as a config file, give the same settings."""
    first = invoke(f"--logfile={site.log}", "--grace=77", "--ignore-net=10.0.0.0/8",
                   "--dumpconfig", f"--postfix-config={site.conf}").output
    config = tmp_path / "seed.conf"
    config.write_text(first)
    second = invoke(f"--config={config}", "--dumpconfig").output
    values = lambda out: {k: v for k, (v, _) in dumped_settings(out).items()}
    assert values(second) == values(first)
    assert dumped_settings(second)["grace"] == ("77", f"config file {config}")


###############################################################################
# Patterns overlay ############################################################
###############################################################################

MYPOP = """\
description = "a site's own POP server"
version = "mypop 1.0"
program = 'mypop'
pid = true
contains = ["logged in from"]
regex = ['^user (?P<user>\\S+) logged in from (?P<ip>[0-9.]+)$']

[[sample]]
line = 'Nov 24 23:00:00 mail mypop[7]: user carol logged in from 198.51.100.9'
ip = '198.51.100.9'
user = 'carol'
"""


def test_the_admin_directory_adds_replaces_and_disables(admin_dir, site):
    admin_dir.mkdir()
    (admin_dir / "mypop.toml").write_text(MYPOP)
    (admin_dir / "cucipop.toml").write_text("disabled = true\n")
    shipped_dovecot = Path(pb.shipped_patterns_dir()) / "dovecot.toml"
    # A replaced dovecot that no longer reads IMAP logins.
    (admin_dir / "dovecot.toml").write_text(
        shipped_dovecot.read_text().replace("(?:imap|pop3)-login", "pop3-login"))
    sources = {src.name: src for src in pb.pattern_files()}
    assert sources["mypop"].origin == "added"
    assert sources["cucipop"].path is None
    assert sources["dovecot"] == pb.PatternSource("dovecot", str(admin_dir / "dovecot.toml"),
                                                  "replaces the shipped one")
    assert sources["courier"].origin == "shipped"          # every other shipped file stays
    names = [p.name for p in pb.load_patterns(None)]
    assert "mypop" in names and "cucipop" not in names and "courier" in names

    site.append("Nov 24 23:29:00 mail mypop[7]: user carol logged in from 198.51.100.9\n",
                dovecot_login(NOW - 60, "192.0.2.10", proto="imap"),
                dovecot_login(NOW - 60, "192.0.2.11", proto="pop3"))
    result = invoke(*site.args("--dry-run"))
    added = sorted(line.split()[2] for line in result.output.splitlines()
                   if line.startswith("would add"))
    assert added == ["192.0.2.11", "198.51.100.9"]

    dumped = invoke("--dumpconfig", f"--postfix-config={site.conf}",
                    f"--logfile={site.log}").output
    assert f"overlaid by {admin_dir}" in dumped
    assert f"#   cucipop            - (disabled by {admin_dir}/cucipop.toml)" in dumped
    assert f"#   mypop              {admin_dir}/mypop.toml (added)" in dumped
    assert f"#   dovecot            {admin_dir}/dovecot.toml (replaces the shipped one)" in dumped


def test_an_explicit_patterns_dir_means_exactly_that_directory(admin_dir, tmp_path, site):
    admin_dir.mkdir()
    (admin_dir / "mypop.toml").write_text(MYPOP)
    own = tmp_path / "own"
    own.mkdir()
    shutil.copy(Path(pb.shipped_patterns_dir()) / "courier.toml", own)
    assert [p.name for p in pb.load_patterns(str(own))] == ["courier"]
    site.append("Nov 24 23:29:00 mail mypop[7]: user carol logged in from 198.51.100.9\n")
    result = invoke(*site.args("--dry-run", f"--patterns-dir={own}"))
    assert "would add" not in result.output


def test_a_broken_admin_file_is_one_error_naming_it(admin_dir, site):
    admin_dir.mkdir()
    (admin_dir / "mypop.toml").write_text("disabled = 'yes'\n")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = CliRunner().invoke(pb.cli, site.args())
    assert result.exit_code == 1
    assert result.stderr == (f"Error: pattern file {admin_dir}/mypop.toml: "
                             f"disabled must be true or false\n")
    assert query(site, "192.0.2.10") is None


###############################################################################
# The pattern tester ##########################################################
###############################################################################

@pytest.mark.parametrize("args", [["--json"], ["--json", "--dry-run"], ["--line=x"],
                                  ["--logfile=-"]])
def test_options_of_other_actions_alone_are_usage_errors(site, args):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = CliRunner().invoke(pb.cli, [*site.args(), *args])
    assert result.exit_code == 2, result.output
    assert query(site, "192.0.2.10") is None and not site.state.exists()


def test_debug_prints_local_iso_times_in_the_local_zone(site, monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        site.append(f"{syslog_time(NOW - 60)} mail dovecot: imap-login: Login: user=<alice>, "
                    f"method=PLAIN, rip=192.0.2.10, lip=192.0.2.1, session=<x>\n")
        result = invoke(*site.args("--dry-run", "--debug"))
    finally:
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
    assert ("debug: login 192.0.2.10 user=alice at 2026-11-25T00:29:00+01:00 "
            "(age 1m00s, left 29m00s) (dovecot)") in result.output


###############################################################################
# The run line in syslog, and metrics #########################################
###############################################################################

def metrics(path):
    values = {}
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            name, value = line.split()
            values[name] = float(value)
    return values


def test_metrics_file_in_node_exporter_format(site, tmp_path):
    prom = tmp_path / "pbsmtp_batch.prom"
    site.append(dovecot_login(NOW - 60, "192.0.2.10"), dovecot_login(NOW - 50, "192.0.2.11"))
    assert invoke(*site.args(f"--metrics-file={prom}")).output == ""
    got = metrics(prom)
    assert {k: v for k, v in got.items() if k != "pbsmtp_batch_last_run_duration_seconds"} == {
        "pbsmtp_batch_last_run_timestamp_seconds": NOW, "pbsmtp_batch_last_run_success": 1,
        "pbsmtp_batch_last_run_lines_read": 2, "pbsmtp_batch_last_run_logins": 2,
        "pbsmtp_batch_last_run_added": 2, "pbsmtp_batch_last_run_refreshed": 0,
        "pbsmtp_batch_last_run_expired": 0, "pbsmtp_batch_active_entries": 2,
        "pbsmtp_batch_open_sessions": 0,
        "pbsmtp_batch_errors_total": 0}
    assert 0 <= got["pbsmtp_batch_last_run_duration_seconds"] < 3600
    text = prom.read_text()
    for name, (kind, _) in pb.METRICS.items():
        assert f"# TYPE {name} {kind}\n" in text and f"# HELP {name} " in text
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    # An idle run: the heartbeat moves, the counts stay right.
    invoke(*site.args(f"--metrics-file={prom}", now=NOW + 60))
    got = metrics(prom)
    assert got["pbsmtp_batch_last_run_timestamp_seconds"] == NOW + 60
    assert (got["pbsmtp_batch_last_run_added"], got["pbsmtp_batch_active_entries"]) == (0, 2)
    # A failed run: success 0, the error counted, the last counts kept.
    site.log.unlink()
    result = CliRunner().invoke(pb.cli, site.args(f"--metrics-file={prom}", now=NOW + 120))
    assert result.exit_code == 1
    got = metrics(prom)
    assert (got["pbsmtp_batch_last_run_success"], got["pbsmtp_batch_errors_total"],
            got["pbsmtp_batch_active_entries"],
            got["pbsmtp_batch_last_run_timestamp_seconds"]) == (0, 1, 2, NOW + 120)
    assert sorted(p.name for p in tmp_path.iterdir() if "prom" in p.name) == ["pbsmtp_batch.prom"]
    # Dry runs leave it alone.
    before = prom.read_text()
    site.log.write_text("")
    invoke(*site.args(f"--metrics-file={prom}", "--dry-run", now=NOW + 180))
    assert prom.read_text() == before


def test_an_unwritable_metrics_file_is_a_warning_not_a_failure(site, tmp_path):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    result = CliRunner().invoke(pb.cli, site.args(f"--metrics-file={tmp_path}/nodir/m.prom"))
    assert result.exit_code == 0
    assert result.stderr == (f"pbsmtp-batch: warning: cannot write metrics file "
                             f"{tmp_path}/nodir/m.prom: No such file or directory\n")
    assert query(site, "192.0.2.10") == str(NOW - 60)
