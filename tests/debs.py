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
from typing import NamedTuple

import pytest

from conftest import unavailable

CACHE = os.environ.get("PBSMTP_DEB_CACHE", "/var/cache/pbsmtp-test")
LIST = Path(__file__).resolve().parent.parent / "ci" / "test-unpacked"
MULTIARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"


class Tree(NamedTuple):
    """Packages unpacked together under CACHE/*tree*; *marker* is a path
    below it that exists once they are."""
    packages: list[str]
    marker: str
    tree: str


# Every tree the daemon tests run programs from, by name (test_unpacked_libraries
# checks each against the running release's libraries).
TREES = {
    "cyrus": Tree(["cyrus-common", "cyrus-imapd", "cyrus-pop3d", "sasl2-bin"],
                  "usr/sbin/cyrmaster", "root"),
    "courier": Tree(["courier-base", "courier-imap", "courier-pop", "courier-authlib",
                     "courier-authdaemon", "courier-authlib-userdb"],
                    "usr/lib/courier/courier/imaplogin", "courier"),
    "solid-pop3d+popa3d": Tree(["solid-pop3d", "popa3d"], "usr/sbin/solid-pop3d", "other"),
    "tcpd": Tree(["tcpd"], "usr/sbin/tcpd", "tcpd"),
    "nginx": Tree(["nginx", "nginx-common", "libnginx-mod-mail"],
                  "usr/lib/nginx/modules/ngx_mail_module.so", "nginx"),
    "perdition": Tree(["perdition"], "usr/sbin/perdition", "perdition"),
    "imapproxy": Tree(["imapproxy"], "usr/sbin/imapproxyd", "imapproxy"),
    "sendmail": Tree(["sendmail-bin"], "usr/libexec/sendmail/sendmail", "sendmail-bin"),
    "exim": Tree(["exim4-daemon-light"], "usr/sbin/exim4", "exim4-daemon-light"),
}


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


def tree(name):
    """The root of TREES[*name*], unpacked."""
    return unpacked(*TREES[name])


def runnable(name, library_path=None):
    """tree(*name*), whose program (the tree's marker) finds every library
    it needs (with LD_LIBRARY_PATH *library_path*, if given); otherwise the
    test is unavailable."""
    root = tree(name)
    binary = TREES[name].marker
    env = None if library_path is None else dict(os.environ, LD_LIBRARY_PATH=library_path(root))
    r = subprocess.run(["ldd", os.path.join(root, binary)], capture_output=True, text=True,
                       env=env)
    missing = [line.split()[0] for line in r.stdout.splitlines() if "not found" in line]
    if r.returncode != 0 or missing:
        unavailable(f"{os.path.basename(binary)} cannot run, missing libraries: "
                    f"{missing or r.stderr}")
    return root


def unpacked_file(package, relpath):
    """One file of one unpacked package."""
    return os.path.join(unpacked([package], relpath, package), relpath)


def library_path(root, *extra):
    """LD_LIBRARY_PATH for binaries unpacked under root: the libraries that
    came in the same packages (the system's are installed by ci/test)."""
    return ":".join(os.path.join(root, d) for d in (
        f"usr/lib/{MULTIARCH}", f"lib/{MULTIARCH}", *extra))
