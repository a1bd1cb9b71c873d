"""Rotation settings beyond logrotate's defaults, with the real logrotate:
compresscmd/compressext (zstd, lz4, bzip2, xz), olddir, dateformat,
dateyesterday, extension. Each scenario checks, through ``Lab``, that every
login is in the map and that each run read exactly the lines written since
the run before (the grace window re-read after a rotation that was not
recognised reads more), and that no run warns.

Rotated files that cannot be read (no decompressor, corrupt content) are
warnings that name the file and the reason; the log itself is still read.
"""

import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import require
from rotation import held

pytestmark = pytest.mark.tools


def rotate(lab, directives):
    """Rotate lab.log once, forced, with these logrotate directives."""
    conf = lab.root / "logrotate.conf"
    conf.write_text(f"{lab.log} {{\n    rotate 10\n    missingok\n    create\n"
                    f"    {directives}\n}}\n")
    if "%s" in directives:
        # Names with %s have a resolution of one second: wait for a name not
        # taken yet (logrotate's clock is the kernel's coarse one: a margin).
        while any(str(int(time.time() - 0.05)) in p.name
                  for d in (lab.root, lab.root / "old") if d.exists() for p in d.iterdir()):
            time.sleep(0.05)
    done = subprocess.run([require("logrotate", "logrotate"), "-f", "-s", str(lab.lrstate),
                           str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def quiet_run(lab, *extra):
    """A run that reads exactly the new lines and warns of nothing."""
    result = lab.run(*extra)
    assert "warning" not in (result.stderr or ""), result.stderr
    return result


def tool(name, package=None):
    return require(name, package or name)


# Each setting: its logrotate directives, the pbsmtp-batch options it needs,
# the programs it needs (name, Debian package), and a name it makes.
SETTINGS = {
    "zstd": ("compress\n    compresscmd {zstd}\n    uncompresscmd {unzstd}\n"
             "    compressoptions -q\n    compressext .zst",
             (), [("zstd", "zstd")], r"mail\.log\.1\.zst"),
    "zstd-delaycompress": ("compress\n    delaycompress\n    compresscmd {zstd}\n"
                           "    uncompresscmd {unzstd}\n    compressoptions -q\n"
                           "    compressext .zst",
                           (), [("zstd", "zstd")], r"mail\.log\.2\.zst"),
    "lz4": ("compress\n    compresscmd {lz4}\n    uncompresscmd {lz4}\n"
            "    compressoptions -q\n    compressext .lz4",
            (), [("lz4", "lz4")], r"mail\.log\.1\.lz4"),
    "bzip2": ("compress\n    compresscmd {bzip2}\n    uncompresscmd {bunzip2}\n"
              "    compressext .bz2",
              (), [("bzip2", "bzip2")], r"mail\.log\.1\.bz2"),
    "xz": ("compress\n    compresscmd {xz}\n    uncompresscmd {unxz}\n    compressext .xz",
           (), [("xz", "xz-utils")], r"mail\.log\.1\.xz"),
    "compress.Z": ("compress\n    compresscmd {compress}\n    uncompresscmd {uncompress}\n"
                   "    compressext .Z",
                   (), [("compress", "ncompress"), ("gzip", "gzip")], r"mail\.log\.1\.Z"),
    "olddir": ("olddir old\n    createolddir 0750",
               ("--rotated-dir=old",), [], r"old/mail\.log\.1"),
    "olddir-absolute-compress": ("olddir {root}/old\n    createolddir 0750\n    compress\n"
                                 "    delaycompress",
                                 ("--rotated-dir={root}/old",), [], r"old/mail\.log\.2\.gz"),
    "dateformat-underscore": ("dateext\n    dateformat _%Y%m%d_%s",
                              (), [], r"mail\.log_\d{8}_\d{10}"),
    "dateformat-dots-zstd": ("dateext\n    dateformat .%Y.%m.%d.%s\n    compress\n"
                             "    compresscmd {zstd}\n    uncompresscmd {unzstd}\n"
                             "    compressoptions -q\n    compressext .zst",
                             (), [("zstd", "zstd")], r"mail\.log\.\d{4}\.\d\d\.\d\d\.\d{10}\.zst"),
    "extension": ("extension .log", (), [], r"mail\.1\.log"),
    "extension-compress": ("extension .log\n    compress\n    delaycompress",
                           (), [], r"mail\.2\.log\.gz"),
    "extension-dateext": ("extension .log\n    dateext\n    dateformat -%Y%m%d-%s",
                          (), [], r"mail-\d{8}-\d{10}\.log"),
}


def settings(lab, name):
    directives, options, tools, made = SETTINGS[name]
    paths = {n: tool(n, p) for n, p in tools}
    for n in tools:
        # The matching decompressor logrotate is told of (uncompresscmd).
        for un in {"zstd": ["unzstd"], "bzip2": ["bunzip2"], "xz": ["unxz"],
                   "compress": ["uncompress"]}.get(n[0], []):
            paths[un] = tool(un, n[1])
    fill = dict(paths, root=lab.root)
    return directives.format(**fill), [o.format(**fill) for o in options], made


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_login_survives_rotation_with_setting(lab, name):
    directives, options, made = settings(lab, name)
    # Late lines reach the renamed file unless it is compressed (and
    # unlinked) at once.
    late = "compress" not in directives or "delaycompress" in directives
    lab.logins(2)
    quiet_run(lab, *options)

    # Lines before the rotation, after it, and late ones to the renamed file.
    lab.logins(2)
    daemon = held(lab) if late else None
    rotate(lab, directives)
    lab.logins(2)
    if daemon:
        lab.logins(1, to=daemon)
    quiet_run(lab, *options)
    if daemon:
        lab.logins(1, to=daemon)
        daemon.close()
    lab.logins(1)
    quiet_run(lab, *options)

    # Two and three rotations between runs.
    for rotations in (2, 3):
        for _ in range(rotations):
            lab.logins(1)
            rotate(lab, directives)
        lab.logins(1)
        quiet_run(lab, *options)
    names = [str(p.relative_to(lab.root)) for p in lab.root.rglob("*")]
    assert any(re.fullmatch(made, n) for n in names), names
    quiet_run(lab, *options)                           # nothing new: nothing read
    assert len(lab.expected) == (16 if late else 14)


@pytest.mark.parametrize("directives, made", [
    ("dateext\n    dateformat _%Y%m%d", r"mail\.log_\d{8}"),
    ("dateext\n    dateyesterday\n    dateformat _%Y%m%d", r"mail\.log_\d{8}"),
    ("dateext\n    dateformat .%Y-%m-%d\n    compress\n    delaycompress",
     r"mail\.log\.\d{4}-\d\d-\d\d"),
])
def test_dateformat_by_day(lab, directives, made):
    """A date without %s allows one rotation a day, so one here."""
    lab.logins(2)
    quiet_run(lab)
    lab.logins(2)
    daemon = held(lab)
    rotate(lab, directives)
    assert any(re.fullmatch(made, p.name) for p in lab.root.iterdir())
    lab.logins(1)
    lab.logins(1, to=daemon)
    quiet_run(lab)
    lab.logins(1, to=daemon)
    daemon.close()
    lab.logins(1)
    quiet_run(lab)
    assert len(lab.expected) == 8


def test_missing_decompressor_is_a_warning_naming_the_file_and_package(lab, monkeypatch,
                                                                       tmp_path_factory):
    """A rotated .zst without zstd installed: the run says which file and
    which Debian package, and still reads the log."""
    directives, _, _ = settings(lab, "zstd")
    lab.logins(1)
    lab.run()
    lab.logins(1)
    rotate(lab, directives)
    lab.pending = 0
    lost = dict(lab.expected)
    lab.expected = {ip: t for ip, t in lab.expected.items()}
    bare = tmp_path_factory.mktemp("bin")
    for name in ("postmap", "postconf", "postalias"):
        if found := shutil.which(name, path=os.environ["PATH"] + ":/usr/sbin"):
            (bare / name).symlink_to(found)
    monkeypatch.setenv("PATH", str(bare))
    new = lab.logins(1)
    result = lab.invoke()
    assert result.exit_code == 0, result.output
    zst = lab.root / "mail.log.1.zst"
    assert (f"skipped rotated log {zst}: cannot be decompressed: zstd is not installed "
            f"(Debian package zstd)") in result.stderr
    # The login in the unreadable file is not in the map; the new one is.
    entries = lab.entries()
    assert new[0] in entries and len(entries) == len(lost)


def test_corrupt_zstd_file_is_a_warning_naming_it_and_why(lab):
    tool("zstd")
    lab.logins(1)
    lab.run()
    os.rename(lab.log, lab.root / "mail.log.1")
    lab.log.write_text("")
    (lab.root / "mail.log.1.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"not zstd at all")
    lab.logins(1)
    result = lab.invoke()
    assert result.exit_code == 0, result.output
    assert re.search(r"skipped rotated log \S+mail\.log\.1\.zst: cannot be decompressed "
                     r"\(zstd: .+\)", result.stderr), result.stderr
    lab.check()


def test_rotated_dir_from_the_environment(lab, monkeypatch):
    """PBSMTP_ROTATED_DIR, as cron's environment or a unit's would set it."""
    monkeypatch.setenv("PBSMTP_ROTATED_DIR", str(lab.root / "old"))
    lab.logins(1)
    quiet_run(lab)
    lab.logins(2)
    rotate(lab, "olddir old\n    createolddir 0750\n    compress")
    assert (lab.root / "old" / "mail.log.1.gz").exists()
    lab.logins(1)
    quiet_run(lab)
    assert len(lab.expected) == 4
