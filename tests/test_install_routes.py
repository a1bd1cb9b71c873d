"""The README's install routes for systems without the Debian package, tried
for real under a temporary prefix: a venv under /opt/pbsmtp-batch with a
link into /usr/local/bin, and pipx with PIPX_HOME and PIPX_BIN_DIR."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import require

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEMO = ROOT / "examples" / "maillog"
# pip's settings from the environment (PIP_CERT, PIP_INDEX_URL, ...: how this
# machine reaches the package index) reach the pip that each route runs.
PIP_ENV = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}


def cron_path() -> str:
    """The PATH that cron.d/pbsmtp-batch gives its job."""
    text = (ROOT / "cron.d" / "pbsmtp-batch").read_text()
    return re.search(r"^PATH=(.*)$", text, re.M).group(1)


def demo_run(program: Path, site, path: str) -> subprocess.CompletedProcess:
    """The README's demo dry-run, with the test's own Postfix configuration."""
    return subprocess.run([str(program), f"--logfile={DEMO}", f"--state-dir={site.state}",
                           f"--postfix-config={site.conf}", "--grace=31622400", "--dry-run"],
                          capture_output=True, text=True,
                          env={"PATH": path, "HOME": str(site.root)}, cwd=site.root)


def test_venv_under_opt_with_a_link_in_usr_local_bin(site, tmp_path):
    """Debian's own python3 (PEP 668 refuses a plain pip install there), a
    venv, and the link cron's PATH reaches."""
    require("python3", "python3")
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip"],
                      capture_output=True).returncode:
        require("python3-venv-ensurepip", "python3-venv")
    opt = tmp_path / "opt" / "pbsmtp-batch"
    bindir = tmp_path / "usr" / "local" / "bin"
    bindir.mkdir(parents=True)
    env = {"PATH": SYSTEM_PATH, "HOME": str(tmp_path), **PIP_ENV}
    subprocess.run(["/usr/bin/python3", "-m", "venv", opt], check=True, env=env)
    subprocess.run([opt / "bin" / "pip", "install", "-q", str(ROOT)], check=True, env=env,
                   cwd=tmp_path)
    (bindir / "pbsmtp-batch").symlink_to(opt / "bin" / "pbsmtp-batch")
    assert "/usr/local/bin" in cron_path().split(":")
    # The job finds the program by cron's PATH, with /usr/local/bin standing
    # in for the temporary one.
    path = cron_path().replace("/usr/local/bin", str(bindir))
    done = demo_run(Path("pbsmtp-batch"), site, path)
    assert done.returncode == 0, done.stderr
    assert "would add 192.0.2.10 " in done.stdout
    # The README's uninstall: the link and the venv.
    (bindir / "pbsmtp-batch").unlink()
    subprocess.run(["rm", "-rf", str(opt)], check=True)
    assert not any(bindir.iterdir()) and not opt.exists()


def test_pipx_with_its_own_home_and_bin_dir(site, tmp_path):
    pipx = require("pipx", "pipx")
    env = {"PATH": SYSTEM_PATH, "HOME": str(tmp_path), "PIPX_HOME": str(tmp_path / "pipx"),
           "PIPX_BIN_DIR": str(tmp_path / "bin"), **PIP_ENV}
    subprocess.run([pipx, "install", str(ROOT)], check=True, env=env, cwd=tmp_path,
                   capture_output=True)
    program = tmp_path / "bin" / "pbsmtp-batch"
    assert program.is_symlink() and os.access(program, os.X_OK)
    done = demo_run(program, site, SYSTEM_PATH)
    assert done.returncode == 0, done.stderr
    assert "would add 192.0.2.10 " in done.stdout
    listed = subprocess.run([pipx, "list", "--short"], check=True, env=env,
                            capture_output=True, text=True).stdout
    assert listed.startswith("pbsmtp-batch ")
    subprocess.run([pipx, "uninstall", "pbsmtp-batch"], check=True, env=env,
                   capture_output=True)
    assert not program.exists() and not program.is_symlink()
    assert not (tmp_path / "pipx" / "venvs" / "pbsmtp-batch").exists()


def test_plain_pip_install_is_refused_by_debians_python(tmp_path):
    """The README says why there is no 'pip install .' step on Debian."""
    marker = list(Path("/usr/lib").glob("python3.*/EXTERNALLY-MANAGED"))
    if not marker:
        pytest.skip("this python3 is not marked externally managed (PEP 668)")
    pip = require("/usr/bin/pip3", "python3-pip")            # Debian's, not a venv's
    done = subprocess.run([pip, "install", "--dry-run", "--no-deps", str(ROOT)],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": SYSTEM_PATH, "HOME": str(tmp_path)})
    assert done.returncode != 0
    assert "externally-managed-environment" in done.stdout + done.stderr
