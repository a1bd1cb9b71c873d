"""A plain `pip install .` (not editable) finds the shipped patterns."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# pip installs the project's requirements from the package index: a tool and
# the network, not Python alone.
pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent


def test_plain_install_ships_the_patterns(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", str(ROOT)], check=True,
                   cwd=tmp_path)
    module = subprocess.run([venv / "bin" / "python", "-c",
                             "import pbsmtp_batch as p; print(p.__file__); "
                             "print(p.shipped_patterns_dir())"],
                            check=True, capture_output=True, text=True, cwd=tmp_path)
    module_file, patterns = module.stdout.split()
    assert module_file.startswith(str(venv))                  # the installed copy
    assert patterns == str(venv / "share" / "pbsmtp-batch" / "patterns")
    shipped = sorted(p.name for p in (ROOT / "patterns").glob("*.toml"))
    assert sorted(os.listdir(patterns)) == shipped
    done = subprocess.run([venv / "bin" / "pbsmtp-batch", "--logfile",
                           str(ROOT / "examples" / "maillog"), "--state-dir",
                           str(tmp_path / "state"), "--grace=31622400", "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "would add 192.0.2.10 " in done.stdout
