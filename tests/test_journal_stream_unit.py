"""Under systemd, with stderr connected to the journal, the Error: lines
carry sd-daemon(3) priorities: the errors that need nothing but Python. The
runs over a log are in test_journal_stream.py.
"""

import pytest

from journal import run_with_journal_stream

pytestmark = pytest.mark.unit


def test_error_line_is_tagged_as_an_error_in_the_journal(tmp_path):
    code, out, err = run_with_journal_stream(["--grace=soon"], tmp_path / "err", "same")
    assert (code, out) == (1, "")
    assert err == "<3>Error: --grace must be a whole number of seconds above 0, not 'soon'\n"


def test_usage_error_keeps_its_usage_lines_and_exit_status(tmp_path):
    code, _, err = run_with_journal_stream(["--no-such-option"], tmp_path / "err", "same")
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith("Usage: ")
    assert lines[-1].startswith("<3>Error: No such option")
    assert [line for line in lines if line.startswith("<")] == [lines[-1]]
