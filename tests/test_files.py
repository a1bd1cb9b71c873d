"""The files section: one temporary-name scheme for the published files and
the staged state files, and one sweeper that removes a killed writer's
temporary files and never a live writer's."""

import os
import stat
import subprocess
import sys

import pytest

import pbsmtp_batch as pb

pytestmark = pytest.mark.unit


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def renamed(name: str, pid: int) -> str:
    """name (a temp_name of ours) as the writer pid would have named it."""
    head, _, rest = name.rpartition(f".{os.getpid()}.")
    return f"{head}.{pid}.{rest}"


def test_staged_files_are_private_and_named_for_the_sweeper(tmp_path):
    path = tmp_path / "var_log_mail.log.offset"
    tmp = pb.stage_file(str(path), "state\n")
    assert os.path.dirname(tmp) == str(tmp_path)
    m = pb._TEMP_NAME.fullmatch(os.path.basename(tmp))
    assert m and m["base"] == path.name and int(m["pid"]) == os.getpid()
    assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o600
    assert not path.exists()
    pb.commit_file(tmp, str(path))
    assert path.read_text() == "state\n" and not os.path.exists(tmp)


def test_the_sweeper_removes_only_what_killed_writers_left(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    ours = os.path.basename(pb.temp_name(str(tmp_path / "pop-before-smtp.db")))
    state = os.path.basename(pb.temp_name(str(tmp_path / "x.offset")))
    names = {
        "dead map": renamed(ours, dead),
        "dead map build": renamed(ours, dead) + ".src.db",
        "dead state": renamed(state, dead),
        "live map": renamed(ours, alive),
        "our own map": ours,
        "someone's dotfile": ".pop-before-smtp.db.swp",
        "the map": "pop-before-smtp.db",
    }
    for name in names.values():
        (tmp_path / name).write_text("")

    pb.remove_leftovers(str(tmp_path), "pop-before-smtp.db")
    left = {what for what, name in names.items() if (tmp_path / name).exists()}
    assert left == {"dead state", "live map", "our own map", "someone's dotfile", "the map"}

    pb.remove_leftovers(str(tmp_path))
    left = {what for what, name in names.items() if (tmp_path / name).exists()}
    assert left == {"live map", "our own map", "someone's dotfile", "the map"}


def test_a_published_file_keeps_its_mode_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "list"
    target.write_text("old\n")
    target.chmod(0o640)

    def build(tmp):
        with open(tmp, "x") as f:
            f.write("new\n")
    assert pb.replace_file(str(target), build) == []
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list"]
