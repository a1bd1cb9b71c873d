"""Every program and library that the tests unpack finds its shared libraries.

The daemon tests run Debian packages without installing them (tests/debs.py),
and ci/test installs the libraries that those packages depend on, by the names
the running release gives them (Debian 12's libldap-2.5-0 is libldap2 on 13,
libpcre3 and libvanessa-socket2 are gone). Here ``ldd`` reads every ELF file
of each unpacked tree, the way dpkg-shlibdeps read them to compute the
packages' dependencies, with the tree's own library directories on
LD_LIBRARY_PATH (as the tests run them): a library that nothing installed is
named here, file by file, instead of surfacing as a daemon that dies at
start-up in the middle of a long test.
"""

import os
import subprocess

import pytest

import debs
from conftest import require_harness

pytestmark = pytest.mark.live

# The trees the daemon tests unpack (tests/debs.py), so that the trees are shared.
TREES = debs.TREES


def elf_files(root):
    """Every regular ELF file below *root* (programs, libraries, modules)."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        found.append(path)
    return sorted(found)


def missing_libraries(root):
    """{library soname: [files below *root* that need it]} for every
    library that ldd cannot find."""
    files = elf_files(root)
    assert files, f"no ELF file below {root}"
    own = sorted({os.path.dirname(p) for p in files if ".so" in os.path.basename(p)})
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(own))
    missing = {}
    for path in files:
        r = subprocess.run(["ldd", path], capture_output=True, text=True, env=env, timeout=60)
        for line in r.stdout.splitlines():
            if "not found" in line:
                missing.setdefault(line.split()[0], []).append(os.path.relpath(path, root))
    return missing


@pytest.mark.parametrize("name", sorted(TREES))
def test_unpacked_binaries_find_their_libraries(name):
    require_harness()                   # root, apt-get and dpkg, as the daemon tests
    packages = TREES[name].packages
    root = debs.tree(name)
    missing = missing_libraries(root)
    assert missing == {}, (f"{', '.join(packages)}: libraries not installed (add the "
                           f"package to ci/test-unpacked or its library to ci/test-packages)")
