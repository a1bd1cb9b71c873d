"""The Debian package: dpkg-buildpackage builds it from a copy of the tree,
and its files, lintian's verdict, its systemd units and its man page are
checked (installing it is ci/deb-smoke.sh's job, in a throw-away root)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from conftest import require

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ci"))
import gendoc  # noqa: E402
import pbsmtp_batch  # noqa: E402

pytestmark = pytest.mark.tools

# The build runs with Debian's own tools and python3, not whatever a
# developer's PATH puts first (pyenv, a venv).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_TOOLS = {"dpkg-buildpackage": "dpkg-dev", "dh": "debhelper", "dh_python3": "dh-python",
               "fakeroot": "fakeroot"}
# What a checkout may hold that is not part of the source.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build",
                                    "dist", ".pytest_cache", ".hypothesis", ".pybuild",
                                    "generated")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(the .deb, the tree it unpacks to), built from a copy of the checkout
    so that the checkout stays clean."""
    for tool, package in BUILD_TOOLS.items():
        require(tool, package)
    if subprocess.run(["/usr/bin/python3", "-c", "import click, pygtail, installer, build"],
                      capture_output=True).returncode:
        require("python3-click-pygtail-and-pybuild-plugin-pyproject",
                "python3-click python3-pygtail pybuild-plugin-pyproject")
    top = tmp_path_factory.mktemp("deb")
    src = top / "pbsmtp-batch"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE, symlinks=True)
    env = {"PATH": SYSTEM_PATH, "HOME": str(top), "LANG": "C.UTF-8"}
    done = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    debs = list(top.glob("pbsmtp-batch_*_all.deb"))
    assert len(debs) == 1, debs
    tree = top / "unpacked"
    subprocess.run(["dpkg-deb", "-x", debs[0], tree], check=True)
    return debs[0], tree


def dpkg_deb(*args) -> str:
    return subprocess.run(["dpkg-deb", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


def unit_dir(tree: Path) -> Path:
    """debhelper puts units in /lib/systemd/system (Debian 12) or /usr/lib/... (13)."""
    found = [d for d in (tree / "lib/systemd/system", tree / "usr/lib/systemd/system")
             if d.is_dir()]
    assert len(found) == 1, found
    return found[0]


def test_the_package_holds_what_an_admin_needs(built):
    deb, tree = built
    names = {line.split()[-1].lstrip(".") for line in dpkg_deb("-c", deb).splitlines()}
    units = unit_dir(tree).relative_to(tree)
    wanted = {"/usr/bin/pbsmtp-batch", "/usr/lib/python3/dist-packages/pbsmtp_batch.py",
              "/usr/lib/python3/dist-packages/pbsmtp_stores.py",
              "/usr/share/man/man8/pbsmtp-batch.8.gz", "/etc/pbsmtp-batch.conf",
              "/etc/cron.d/pbsmtp-batch", "/etc/default/pbsmtp-batch",
              "/usr/share/doc/pbsmtp-batch/examples/maillog",
              "/usr/share/doc/pbsmtp-batch/copyright",
              *(f"/{units}/pbsmtp-batch.{u}" for u in ("service", "path", "timer")),
              *(f"/usr/share/pbsmtp-batch/patterns/{p.name}"
                for p in (ROOT / "patterns").glob("*.toml"))}
    assert wanted <= names, sorted(wanted - names)
    shipped = {n for n in names if n.startswith("/usr/share/pbsmtp-batch/patterns/")
               and not n.endswith("/")}
    assert len(shipped) == len(list((ROOT / "patterns").glob("*.toml")))
    assert os.access(tree / "usr/bin/pbsmtp-batch", os.X_OK)
    # Nothing of the checkout's tests or tools leaks into the system.
    assert not [n for n in names if "/tests/" in n or n.endswith("/patterns/")
                and "dist-packages" in n]
    conffiles = set(dpkg_deb("-I", deb, "conffiles").split())
    assert conffiles == {"/etc/pbsmtp-batch.conf", "/etc/cron.d/pbsmtp-batch",
                         "/etc/default/pbsmtp-batch"}
    fields = {f: dpkg_deb("-f", deb, f).strip() for f in ("Depends", "Recommends", "Suggests")}
    depends = re.split(r",\s*", fields["Depends"])
    assert {"python3-click", "python3-pygtail", "adduser"} <= {d.split()[0] for d in depends}
    assert fields["Recommends"] == "postfix"
    assert set(re.split(r",\s*", fields["Suggests"])) == {
        "python3-psycopg", "python3-pymysql", "python3-systemd"}


def test_the_packaged_program_runs_on_debians_python(built, site):
    """The packaged module, run by /usr/bin/python3 with Debian's click and
    pygtail, finds the packaged patterns and reads the demo log."""
    _, tree = built
    tmp_path = site.root
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(tree / "usr/lib/python3/dist-packages"),
           "LANG": "C.UTF-8"}
    code = ("import pbsmtp_batch as p, sys; print(p.__file__); "
            "print(p.shipped_patterns_dir())")
    where = subprocess.run(["/usr/bin/python3", "-c", code], env=env, check=True, cwd=tmp_path,
                           capture_output=True, text=True).stdout.split()
    assert where[0] == str(tree / "usr/lib/python3/dist-packages/pbsmtp_batch.py")
    # Installed, the module sits in /usr/lib/python3/dist-packages: its
    # patterns are /usr/share's (here, under the unpacked tree).
    assert where[1] == str(tree / "usr/share/pbsmtp-batch/patterns")
    demo = subprocess.run(["/usr/bin/python3", tree / "usr/bin/pbsmtp-batch",
                           f"--logfile={tree / 'usr/share/doc/pbsmtp-batch/examples/maillog'}",
                           f"--state-dir={site.state}", f"--postfix-config={site.conf}",
                           "--grace=31622400", "--dry-run"],
                          env=env, cwd=tmp_path, capture_output=True, text=True)
    assert demo.returncode == 0, demo.stderr
    assert "would add 192.0.2.10 " in demo.stdout


def test_lintian_finds_no_errors(built):
    deb, _ = built
    require("lintian", "lintian")
    done = subprocess.run(["lintian", "--no-tag-display-limit", deb], capture_output=True,
                          text=True, env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"})
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert not errors, done.stdout
    assert done.returncode == 0, done.stdout + done.stderr


def test_systemd_analyze_verifies_the_installed_units(built, tmp_path):
    """The units as the package installs them, in a root that also holds the
    system's own units (the targets they hang off) and the packaged program."""
    _, tree = built
    analyze = require("systemd-analyze", "systemd")
    root = tmp_path / "root"
    shutil.copytree(tree, root, symlinks=True)
    units = root / unit_dir(tree).relative_to(tree)
    for system in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if system.is_dir():
            shutil.copytree(system, units, symlinks=True, dirs_exist_ok=True,
                            ignore=lambda d, names: [n for n in names
                                                     if n.startswith("pbsmtp-batch.")])
            break
    inside = "/" + str(unit_dir(tree).relative_to(tree))
    # Documentation=man:pbsmtp-batch(8) is checked with man(1), which looks
    # in the root's man pages only through MANPATH.
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "MANPATH": str(root / "usr/share/man")}
    done = subprocess.run([analyze, "verify", f"--root={root}",
                           *(f"{inside}/pbsmtp-batch.{u}" for u in ("service", "path", "timer"))],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr          # not even a warning
    service = (units / "pbsmtp-batch.service").read_text()
    assert "ExecStart=/usr/bin/pbsmtp-batch\n" in service
    # Error and warning lines arrive at err and warning (the <3>/<4> prefixes),
    # other output at notice: all within LogLevelMax.
    assert "LogLevelMax=notice\n" in service and "SyslogLevel=notice\n" in service


def test_cron_job_ships_off_and_guarded(built):
    _, tree = built
    assert "CRON_ENABLED=no\n" in (tree / "etc/default/pbsmtp-batch").read_text()
    jobs = [line for line in (tree / "etc/cron.d/pbsmtp-batch").read_text().splitlines()
            if line[:1] not in ("", "#") and "=" not in line.split()[0]]
    assert len(jobs) == 1
    fields = jobs[0].split(None, 6)
    assert fields[:6] == ["*", "*", "*", "*", "*", "root"]
    command = fields[6]
    assert command.startswith("[ -x /usr/bin/pbsmtp-batch ] && ")
    assert '[ "$CRON_ENABLED" = yes ] && exec /usr/bin/pbsmtp-batch' in command
    subprocess.run(["sh", "-n", "-c", command], check=True)


def help_options(text: str) -> set[str]:
    """Option names in --help's Options: section."""
    names = set()
    for line in text.split("Options:", 1)[1].splitlines():
        m = re.match(r"  (-\S.*?)(?:  |$)", line)
        if m:
            names.update(re.findall(r"(?<![\w-])-{1,2}[a-z][\w-]*", m.group(1)))
    return names


def man_options(rendered: str) -> dict[str, str]:
    """Option names in the rendered man page's OPTIONS section, each with the
    text of its entry."""
    section = rendered.split("\nOPTIONS\n", 1)[1].split("\nCONFIGURATION\n", 1)[0]
    entries, current = {}, None
    for line in section.splitlines():
        m = re.match(r" {7}(-\S.*)$", line)
        if m:
            head = re.split(r" {2,}", m.group(1))[0]
            current = re.findall(r"(?<![\w-])-{1,2}[a-z][\w-]*", head)
            for name in current:
                entries[name] = ""
            rest = m.group(1)[len(head):]
            line = rest
        for name in current or ():
            entries[name] += line + "\n"
    return entries


def render(page: Path) -> str:
    require("man", "man-db")
    return subprocess.run(["man", "-P", "cat", "-l", str(page)], check=True,
                          capture_output=True, text=True,
                          env={"PATH": SYSTEM_PATH, "LANG": "C", "MANWIDTH": "200"}).stdout


def test_man_page_lists_every_option_of_help(built, tmp_path):
    """The packaged man page against the packaged program's --help (Debian's
    click) and against the checkout's (the venv's click)."""
    _, tree = built
    page = man_options(render(tree / "usr/share/man/man8/pbsmtp-batch.8.gz"))
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(tree / "usr/lib/python3/dist-packages")}
    packaged = subprocess.run(["/usr/bin/python3", str(tree / "usr/bin/pbsmtp-batch"), "--help"],
                              env=env, cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout
    ours = subprocess.run([sys.executable, str(ROOT / "pbsmtp_batch.py"), "--help"], check=True,
                          capture_output=True, text=True).stdout
    assert set(page) == help_options(packaged) == help_options(ours)
    assert len(page) > 20
    # Every setting names its variable; an action (--list, --dry-run...) has
    # none, so that cron's environment cannot change what a run does.
    params = {opt: param for param in pbsmtp_batch.cli.params
              for opt in (*param.opts, *param.secondary_opts)}
    for name, text in page.items():
        param = params.get(name)
        if param is not None and pbsmtp_batch.option_envvars(param):
            assert "Environment: PBSMTP_" in text, (name, text)
        else:
            assert "Environment:" not in text, (name, text)
    for section in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "FILES", "EXIT STATUS", "EXAMPLES",
                    "SEE ALSO"):
        assert f"\n{section}\n" in render(tree / "usr/share/man/man8/pbsmtp-batch.8.gz")
    see_also = render(tree / "usr/share/man/man8/pbsmtp-batch.8.gz").split("\nSEE ALSO\n")[1]
    for ref in ("postmap(1)", "access(5)", "logrotate(8)"):
        assert ref in see_also


def test_documented_variables_and_keys_are_the_ones_the_program_reads(monkeypatch, site):
    """Each option's variable, as the man page names it, is what click reads;
    each config key works; the example config, all uncommented, is accepted."""
    ctx = gendoc.context()
    for param in gendoc.options(ctx):
        for variable in gendoc.envvars(ctx, param):
            monkeypatch.setenv(variable, "1")
            assert param.resolve_envvar_value(ctx) == "1", (param.name, variable)
            monkeypatch.delenv(variable)
    # The documented (singular) name first; the plural that click derived
    # from the parameter's name before stays readable for old set-ups.
    assert gendoc.envvars(ctx, next(p for p in gendoc.options(ctx)
                                    if p.name == "ignore_nets"))[0] == "PBSMTP_IGNORE_NET"
    tmp_path = site.root
    conf = tmp_path / "all.conf"
    # Uncommented, these examples would choose another source or write
    # outside the test's directory.
    elsewhere = ("journal-directory", "journal-match", "logto", "metrics-file")
    settings = [s for s in re.findall(r"^#([a-z][a-z0-9-]* = .*)$", gendoc.config_file(), re.M)
                if s.split(" = ")[0] not in elsewhere]
    conf.write_text("\n".join(settings) + "\n")
    keys = {s.split(" = ")[0] for s in settings}
    assert {"logfile", "dbfile", "grace", "state-dir", "ignore-net", "backend"} <= keys
    assert not keys & {"dry-run", "list", "json", "check-patterns", "reprocess", "config"}
    done = subprocess.run([sys.executable, str(ROOT / "pbsmtp_batch.py"), f"--config={conf}",
                           f"--logfile={ROOT / 'examples' / 'maillog'}",
                           f"--state-dir={site.state}", f"--patterns-dir={ROOT / 'patterns'}",
                           f"--postfix-config={site.conf}", "--grace=31622400", "--dry-run"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "would add 192.0.2.10 " in done.stdout


def test_generated_man_page_has_no_roff_warnings(tmp_path):
    page = tmp_path / "pbsmtp-batch.8"
    page.write_text(gendoc.man_page())
    require("man", "man-db")
    done = subprocess.run(["man", "--warnings", "-P", "cat", "-l", str(page)],
                          capture_output=True, text=True,
                          env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "MANWIDTH": "80"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert click.unstyle(done.stdout).startswith("PBSMTP-BATCH(8)")
