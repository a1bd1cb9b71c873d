"""The store registry: every --backend name has one class that registers
itself with @backend, the optional ones load from pbsmtp_stores only when a
run names one, and the core never imports the companion on its own."""

import subprocess
import sys
from pathlib import Path

import pytest

import pbsmtp_batch as pb

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "print(' '.join(sorted(sys.modules)))"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_core_alone_does_not_load_the_companion():
    assert "pbsmtp_stores" not in imported_modules("import pbsmtp_batch")
    loaded = imported_modules("import pbsmtp_batch as pb; pb.store_class('postfix')")
    assert "pbsmtp_stores" not in loaded


def test_naming_an_optional_backend_loads_the_companion():
    loaded = imported_modules("import pbsmtp_batch as pb; pb.store_class('sqlite')")
    assert "pbsmtp_stores" in loaded


def test_every_name_has_exactly_one_class_with_the_interface():
    for name in pb.BACKEND_NAMES:
        pb.store_class(name)
    assert set(pb.BACKENDS) == set(pb.BACKEND_NAMES)
    for name, cls in pb.BACKENDS.items():
        for member in ("from_options", "read", "publish", "exists", "check", "stamp",
                       "updates_by_key", "set_aside"):
            assert callable(getattr(cls, member)), (name, member)
        assert cls.needs_postfix is (name == "postfix"), name
        assert cls.rebuildable is (name == "postfix"), name
        assert cls.__module__ == ("pbsmtp_batch" if name == "postfix" else "pbsmtp_stores")


def test_a_store_is_built_from_the_options(tmp_path):
    opts = pb.Options(logfile="/dev/null", dbfile=str(tmp_path / "relay"), backend="exim")
    store = pb.open_store(opts)
    assert type(store).__name__ == "EximList" and store.dbfile == opts.dbfile
    assert store.stamp() is None
    opts = pb.Options(logfile="/dev/null", dbfile=str(tmp_path / "relay"), map_type="cdb")
    store = pb.open_store(opts)
    assert isinstance(store, pb.PostfixMap) and store.map_type == "cdb"
    assert store.stamp() is None                    # no map yet
    with pytest.raises(pb.PbsmtpError, match="--backend 'nope' is not supported"):
        pb.store_class("nope")


def test_the_help_lists_every_backend():
    help_text = " ".join(p.help for p in pb.cli.params if p.name == "backend")
    for name, what in pb.BACKEND_NAMES.items():
        assert f"{name} ({what})" in help_text


def test_run_as_a_script_the_companion_shares_the_core(tmp_path):
    """python3 pbsmtp_batch.py runs the module as __main__: the companion
    must register into it (its errors are then the one Error: line)."""
    log = tmp_path / "mail.log"
    log.write_text("")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    done = subprocess.run([sys.executable, str(ROOT / "pbsmtp_batch.py"), "--backend=mysql",
                           f"--logfile={log}", f"--state-dir={state}"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "Error: the mysql backend needs --mysql-url (or PBSMTP_MYSQL_URL), "
        "e.g. 'mysql://pbsmtp:PASSWORD@db.example.com/mail'"]
