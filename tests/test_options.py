"""The command line is built from Options' fields, and the state directory's
file names come from StateDir: both checked without Postfix."""

import dataclasses
import os

import click
import pytest

import pbsmtp_batch as pb

pytestmark = pytest.mark.unit

# Parameters of the command that are not settings of a run.
NOT_FIELDS = {"config", "daemon", "now", "version", "help"}


@pytest.fixture
def clean_env(monkeypatch):
    """No PBSMTP_* or MAIL_CONFIG variable from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("PBSMTP_") or name == "MAIL_CONFIG":
            monkeypatch.delenv(name)


def parse(*args: str) -> click.Context:
    """The command's values for these arguments, without running it (an
    empty config file, so /etc/pbsmtp-batch.conf is never read)."""
    return pb.cli.make_context("pbsmtp-batch", ["--config=/dev/null", *args])


def test_every_field_is_an_option_of_the_same_name_and_nothing_else():
    fields = [f.name for f in dataclasses.fields(pb.Options)]
    params = [p.name for p in pb.cli.params if p.name not in NOT_FIELDS]
    assert params == fields                    # --help lists them in the fields' order
    assert {p.name for p in pb.cli.params} - set(fields) <= NOT_FIELDS


def test_the_defaults_are_the_fields_defaults(clean_env):
    """One default per setting: what the command gives without options is
    what Options gives without arguments."""
    ctx = parse("--logfile=/var/log/mail.log")
    assert pb.options_from(ctx.params) == pb.Options(logfile="/var/log/mail.log")


def test_actions_are_the_fields_marked_action_and_never_come_from_the_environment():
    actions = {f.name for f in dataclasses.fields(pb.Options) if f.metadata["action"]}
    assert actions == {"dry_run", "verbose", "list_", "as_json", "dumpconfig",
                       "check_patterns", "line", "explain_ip", "grant", "revoke",
                       "postfix_check"}
    for param in pb.cli.params:
        if param.name in actions:
            assert pb.option_envvars(param) == [] and not param.allow_from_autoenv


def test_what_follows_from_the_values(clean_env):
    opts = pb.options_from(parse("--logfile=/l", "--dry-run", "--ipv6-shared-keys=skip",
                                 "--journal-directory=/j", "--grace=60").params)
    assert (opts.write, opts.dry_run, opts.ipv6_shared_keys, opts.journal, opts.grace) == \
        (False, True, False, True, 60)
    with pytest.raises(pb.PbsmtpError, match="--journal-match needs"):
        pb.options_from(parse("--logfile=/l", "--journal-match=_UID=0").params)


def test_state_files_keep_their_names():
    """Existing state directories hold these names (idle_run reads them too)."""
    state = pb.StateDir("/s")
    assert (state.lock, state.map_lock, state.manual) == ("/s/lock", "/s/map.lock", "/s/manual")
    assert state.log("/var/log/mail.log") == pb.SourceFiles(
        "/s/var_log_mail.log.offset", "/s/var_log_mail.log.pending",
        "/s/var_log_mail.log.sessions", "/s/var_log_mail.log.map",
        "/s/var_log_mail.log.entries")
    assert state.journal(None).offset == "/s/journal.offset"
    assert state.journal("/var/log/journal/remote/").pending == \
        "/s/journal_var_log_journal_remote.pending"
    assert pb.offset_path("/s", "/var/log/mail.log") == "/s/var_log_mail.log.offset"
