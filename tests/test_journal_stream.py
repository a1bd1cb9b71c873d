"""Under systemd, with stderr connected to the journal, the Error: and
warning lines carry sd-daemon(3) priorities; under cron nothing changes.

The program runs as a real process whose stderr is a real file; systemd's
JOURNAL_STREAM names a stream by "device:inode", and here it names that file
(or, for cron, another one). The errors alone are in
test_journal_stream_unit.py, a real journald in test_journal_stream_live.py."""

from pathlib import Path

import pytest

from conftest import NOW, dovecot_login
from journal import run_with_journal_stream

pytestmark = pytest.mark.tools


def test_warning_is_tagged_as_a_warning(site, tmp_path):
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    code, _, err = run_with_journal_stream(site.args(), tmp_path / "err1", "same")
    assert (code, err) == (0, "")                       # success stays silent
    site.log.write_text("")                             # truncated under the saved offset
    code, _, err = run_with_journal_stream(site.args(), tmp_path / "err2", "same")
    assert code == 0
    assert err.startswith("<4>pbsmtp-batch: warning: ")
    assert all(line.startswith("<4>") for line in err.splitlines())


def test_cron_output_is_unchanged(site, tmp_path):
    """No JOURNAL_STREAM, or one inherited from elsewhere: plain lines."""
    for journal in (None, str(tmp_path / "elsewhere")):
        Path(tmp_path / "elsewhere").touch()
        code, _, err = run_with_journal_stream(["--grace=soon"], tmp_path / "err", journal)
        assert (code, err) == (1, "Error: --grace must be a whole number of seconds above 0, "
                                  "not 'soon'\n")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    code, out, err = run_with_journal_stream(site.args(), tmp_path / "err",
                                             str(tmp_path / "elsewhere"))
    assert (code, out, err) == (0, "", "")
    site.log.write_text("")
    code, _, err = run_with_journal_stream(site.args(), tmp_path / "err", None)
    assert err.startswith("pbsmtp-batch: warning: ")


def test_version_and_success_exit_zero_in_the_journal(site, tmp_path):
    code, out, err = run_with_journal_stream(["--version"], tmp_path / "err", "same")
    assert (code, err) == (0, "") and out.startswith("pbsmtp-batch, version ")
    site.append(dovecot_login(NOW - 60, "192.0.2.10"))
    code, out, err = run_with_journal_stream(site.args(), tmp_path / "err", "same")
    assert (code, out, err) == (0, "", "")
    code, out, err = run_with_journal_stream(site.args("--list"), tmp_path / "err", "same")
    assert code == 0 and out.startswith("192.0.2.10 ") and err == ""


