"""The journal source's trust rule and its pattern-file keys, with nothing
but Python; runs over a written journal are in test_journal.py.
"""

import os
from pathlib import Path

import pytest

import pbsmtp_batch as pb
from journal import DOVECOT

pytestmark = pytest.mark.unit


def test_the_trust_rule_alone():
    pattern = pb.load_pattern(os.path.join(pb.shipped_patterns_dir(), "dovecot.toml"))
    fields = {k.encode(): v.encode() for k, v in DOVECOT.items()}
    assert pb.journal_refusal(fields, pattern) is None
    deleted = {**fields, b"_EXE": b"/usr/lib/dovecot/log (deleted)"}   # after an upgrade
    assert pb.journal_refusal(deleted, pattern) is None
    no_unit = {k: v for k, v in fields.items() if k != b"_SYSTEMD_UNIT"}  # not under systemd
    assert pb.journal_refusal(no_unit, pattern) is None
    other = {**fields, b"_EXE": b"/tmp/usr/lib/dovecot/log"}
    assert "_EXE=/tmp/usr/lib/dovecot/log" in pb.journal_refusal(other, pattern)
    assert "_UID=(none)" in pb.journal_refusal({**fields, b"_UID": b""}, pattern)


def test_journal_keys_in_pattern_files_are_checked(tmp_path):
    good = (Path(pb.shipped_patterns_dir()) / "dovecot.toml").read_text()
    for bad, message in (("journal_exe = ['log']", "not an absolute path"),
                         ("journal_users = 'root'", "must be a list"),
                         ("journal_units = []", "must be a list")):
        path = tmp_path / "x.toml"
        text = "".join(l for l in good.splitlines(keepends=True) if not l.startswith("journal_"))
        path.write_text(bad + "\n" + text)
        with pytest.raises(pb.PbsmtpError, match=message):
            pb.load_pattern(str(path))
