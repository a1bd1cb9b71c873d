"""Publishing a plan by updating a copy of the map (postmap -i -r / -d)
gives exactly the map a complete build gives, for every map type."""

import random

import pytest

import pbsmtp_batch as pb
from conftest import NOW, require_map_type, write_main_cf

pytestmark = pytest.mark.tools


@pytest.fixture
def conf(tmp_path, postmap):
    d = tmp_path / "conf"
    d.mkdir()
    write_main_cf(d, "mynetworks = 127.0.0.1/32\n")
    (d / "master.cf").write_text("")
    return str(d)


def addresses(n, seed):
    rnd = random.Random(seed)
    return [f"198.{rnd.randint(18, 19)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
            if i % 4 else f"2001:db8::{rnd.getrandbits(16):x}:{i:x}" for i in range(n)]


@pytest.mark.parametrize("map_type, direct", [
    *((t, d) for t in ("hash", "btree", "lmdb") for d in (True, False)),
    ("cdb", False),                      # cdb has no in-place update: publish() only
])
def test_update_equals_a_complete_build(tmp_path, conf, map_type, direct):
    """direct: update_map itself; else the store's publish(), which picks
    the way."""
    require_map_type(map_type)
    grace = 1800
    old = {ip: NOW - 1000 - i % 900 for i, ip in enumerate(addresses(3000, 1))}
    dbfile = str(tmp_path / "map")
    pb.write_map(dbfile, map_type, old, conf)
    store = pb.PostfixMap(dbfile, map_type, conf)
    stored = store.read()
    assert stored == {k: str(v) for k, v in old.items()}
    logins = [pb.Login(ip, NOW - 5, None, "t") for ip in addresses(40, 2)]     # new
    logins += [pb.Login(ip, NOW - 3, None, "t") for ip in list(old)[:30]]       # refreshed
    plan = pb.merge(stored, logins, NOW, grace)
    plan.base_is_map = True
    assert plan.added and plan.refreshed and plan.expired
    if direct:
        pb.update_map(dbfile, map_type, {**plan.added, **plan.refreshed}, plan.expired, conf)
    else:
        store.publish(plan)
    assert store.read() == {k: str(v) for k, v in plan.entries.items()}
    other = str(tmp_path / "built")
    pb.write_map(other, map_type, plan.entries, conf)
    assert pb.PostfixMap(other, map_type, conf).read() == store.read()


def test_update_of_keys_already_gone_is_not_an_error(tmp_path, conf):
    dbfile = str(tmp_path / "map")
    pb.write_map(dbfile, "hash", {"192.0.2.1": NOW}, conf)
    pb.update_map(dbfile, "hash", {"192.0.2.2": NOW}, ["192.0.2.9"], conf)
    assert pb.read_map(dbfile, "hash", conf) == {"192.0.2.1": str(NOW), "192.0.2.2": str(NOW)}


def test_a_plan_not_read_from_the_map_is_built_whole(tmp_path, conf):
    """Without base_is_map the plan's entries are the whole truth."""
    dbfile = str(tmp_path / "map")
    pb.write_map(dbfile, "hash", {"192.0.2.1": NOW, "192.0.2.2": NOW}, conf)
    plan = pb.Plan(entries={"192.0.2.3": NOW}, added={"192.0.2.3": NOW})
    pb.PostfixMap(dbfile, "hash", conf).publish(plan)
    assert pb.read_map(dbfile, "hash", conf) == {"192.0.2.3": str(NOW)}


@pytest.mark.parametrize("in_place_from", [0, 10 ** 9], ids=["lookup", "whole"])
def test_entries_cache_spares_reading_the_map_and_stays_exact(site, monkeypatch, in_place_from):
    """A run that finds logins merges into the entries the last run wrote,
    when the map is still that version; a map changed behind its back is
    read again. Either way the map is what a full read would give; so too
    whether the run reads the whole cache or looks up only the keys that
    change (postmap -q), which a big map does."""
    monkeypatch.setattr(pb, "UPDATE_IN_PLACE_MIN", in_place_from)
    from click.testing import CliRunner
    from conftest import dovecot_login

    def run(now):
        result = CliRunner().invoke(pb.cli, site.args("-v", now=now))
        assert result.exit_code == 0, result.output
        return pb.read_map(str(site.map), "hash", str(site.conf))

    site.append(dovecot_login(NOW - 100, "192.0.2.1"))
    assert run(NOW) == {"192.0.2.1": str(NOW - 100)}
    cache = next(site.state.glob("*.entries"))
    assert cache.read_text().splitlines()[1:] == [f"{NOW - 100} 192.0.2.1"]
    site.append(dovecot_login(NOW - 50, "192.0.2.2"))
    assert run(NOW) == {"192.0.2.1": str(NOW - 100), "192.0.2.2": str(NOW - 50)}
    # The cache lists the entries in time order, so that those due to
    # expire are its first lines.
    assert cache.read_text().splitlines()[1:] == [f"{NOW - 100} 192.0.2.1",
                                                  f"{NOW - 50} 192.0.2.2"]
    # The cache is trusted as far as the state directory is private: read
    # whole, a cached time that says 192.0.2.1 is long expired makes the run
    # delete it. Looked up, a due line that disagrees with the map (which
    # has a later time, and the cache no line for it) is not trusted: the
    # map is read, and nothing is lost.
    lookup = in_place_from == 0
    cache.write_text(cache.read_text().replace(f"{NOW - 100} 192.0.2.1", f"{NOW - 5000} 192.0.2.1"))
    site.append(dovecot_login(NOW - 40, "192.0.2.9"))
    assert run(NOW) == {**({"192.0.2.1": str(NOW - 100)} if lookup else {}),
                        "192.0.2.2": str(NOW - 50), "192.0.2.9": str(NOW - 40)}
    site.append(dovecot_login(NOW - 30, "192.0.2.1"))
    assert run(NOW) == {"192.0.2.1": str(NOW - 30), "192.0.2.2": str(NOW - 50),
                        "192.0.2.9": str(NOW - 40)}
    if lookup:
        # 192.0.2.1's earlier line stays until it comes due, when the map's
        # newer time keeps the address.
        assert cache.read_text().splitlines()[1:] == [
            f"{NOW - 100} 192.0.2.1", f"{NOW - 50} 192.0.2.2", f"{NOW - 40} 192.0.2.9",
            f"{NOW - 30} 192.0.2.1"]
    assert run(NOW + 1800 - 60) == {"192.0.2.1": str(NOW - 30), "192.0.2.2": str(NOW - 50),
                                    "192.0.2.9": str(NOW - 40)}
    assert cache.read_text().splitlines()[1:] == [
        f"{NOW - 50} 192.0.2.2", f"{NOW - 40} 192.0.2.9", f"{NOW - 30} 192.0.2.1"]
    assert run(NOW + 1800 - 35) == {"192.0.2.1": str(NOW - 30)}
    site.append(dovecot_login(NOW - 10, "192.0.2.9"))
    assert run(NOW) == {"192.0.2.1": str(NOW - 30), "192.0.2.9": str(NOW - 10)}
    site.append(dovecot_login(NOW - 40, "192.0.2.2"))
    assert run(NOW) == {"192.0.2.1": str(NOW - 30), "192.0.2.9": str(NOW - 10),
                        "192.0.2.2": str(NOW - 40)}
    # Someone rewrites the map: the cache no longer describes it.
    pb.write_map(str(site.map), "hash", {"192.0.2.7": NOW - 10}, str(site.conf))
    site.append(dovecot_login(NOW - 5, "192.0.2.3"))
    assert run(NOW) == {"192.0.2.7": str(NOW - 10), "192.0.2.3": str(NOW - 5)}
    # A damaged cache of the right version is not trusted either.
    text = cache.read_text().splitlines()
    cache.write_text("\n".join(text[:1] + ["not an entry"]) + "\n")
    site.append(dovecot_login(NOW - 4, "192.0.2.4"))
    assert run(NOW) == {"192.0.2.7": str(NOW - 10), "192.0.2.3": str(NOW - 5),
                        "192.0.2.4": str(NOW - 4)}
    # Expiry from the cached entries.
    assert run(NOW + 1800 - 6) == {"192.0.2.3": str(NOW - 5), "192.0.2.4": str(NOW - 4)}
