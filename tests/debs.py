"""Debian packages that the tests run without installing them.

Courier, Cyrus, Perdition, imapproxy, nginx's mail module, popa3d,
solid-pop3d, tcpd, sendmail and Exim conflict with Postfix or Dovecot as
packages, or would start daemons of their own. Their .debs are fetched with
``apt-get download`` into CACHE, unpacked there with ``dpkg -x``, and run from
there. Every package unpacked here must be listed in ci/test-unpacked: the
test command installs the libraries they depend on, by the names the running
Debian release gives them, so the unpacked binaries find them.
"""

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

CACHE = os.environ.get("PBSMTP_DEB_CACHE", "/var/cache/pbsmtp-test")
LIST = Path(__file__).resolve().parent.parent / "ci" / "test-unpacked"
MULTIARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"


def unavailable(message):
    """A skip outside CI; with CI=true, a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def listed():
    return {line.split("#")[0].strip() for line in LIST.read_text().splitlines()} - {""}


def unpacked(packages, marker, tree):
    """CACHE/*tree* with *packages* unpacked in it; *marker* is a path below
    it that exists once they are. Downloads only when it is missing."""
    unlisted = sorted(set(packages) - listed())
    if unlisted:
        pytest.fail(f"{', '.join(unlisted)} not in ci/test-unpacked: the test command would "
                    f"not install the libraries they need")
    root = os.path.join(CACHE, tree)
    if os.path.exists(os.path.join(root, marker)):
        return root
    debs = os.path.join(CACHE, "debs")
    os.makedirs(debs, mode=0o755, exist_ok=True)
    os.chmod(CACHE, 0o755)                 # apt-get download may run as _apt
    r = subprocess.run(["apt-get", "download", *packages], cwd=debs,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        unavailable(f"apt-get download {' '.join(packages)} failed: {r.stderr.strip()[-300:]}")
    for name in sorted(os.listdir(debs)):
        if name.endswith(".deb") and name.split("_")[0] in packages:
            subprocess.run(["dpkg", "-x", os.path.join(debs, name), root], check=True)
    if not os.path.exists(os.path.join(root, marker)):
        unavailable(f"{marker} not found after unpacking {' '.join(packages)}")
    return root


def unpacked_file(package, relpath):
    """One file of one unpacked package."""
    return os.path.join(unpacked([package], relpath, package), relpath)


def library_path(root, *extra):
    """LD_LIBRARY_PATH for binaries unpacked under root: the libraries that
    came in the same packages (the system's are installed by ci/test)."""
    return ":".join(os.path.join(root, d) for d in (
        f"usr/lib/{MULTIARCH}", f"lib/{MULTIARCH}", *extra))
