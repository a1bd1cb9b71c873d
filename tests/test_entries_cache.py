"""The time-ordered entries cache and merge_update: an update that touches
only the entries that change must give exactly the map a whole merge gives,
run after run, and keep every key of the map on a line of the cache."""

import random

import pytest

import pbsmtp_batch as pb
from conftest import NOW

pytestmark = pytest.mark.unit

GRACE = 1800


def body_of(entries: dict[str, int]) -> str:
    return "".join(f"{when} {ip}\n" for ip, when in sorted(entries.items(), key=lambda e: e[1]))


def newest(body: str) -> dict[str, int]:
    seen = {}
    for row in body.splitlines():
        when, ip = row.split(" ")
        seen[ip] = max(int(when), seen.get(ip, 0))
    return seen


@pytest.mark.parametrize("seed", range(30))
def test_update_equals_a_whole_merge_run_after_run(seed):
    rng = random.Random(seed)
    pool = [f"192.0.2.{i}" for i in range(1, 60)] + [f"2001:db8::{i:x}" for i in range(1, 40)]
    now = NOW
    stored = {ip: now - rng.randint(0, GRACE - 1) for ip in rng.sample(pool, 40)}
    body = body_of(stored)
    updates = 0
    for _ in range(25):
        now += rng.choice([0, 1, 30, 200, 900])
        logins = [pb.Login(rng.choice(pool), now - rng.randint(-5, GRACE + 100), None, "t")
                  for _ in range(rng.randint(0, 8))]
        whole = pb.merge({k: str(v) for k, v in stored.items()}, logins, now, GRACE)
        cache = pb.EntriesCache("unused", len(stored), body)
        asked = []

        def lookup(keys):
            asked.extend(keys)
            return {k: str(stored[k]) for k in keys if k in stored}

        done = pb.merge_update(cache, logins, now, GRACE, lookup)
        if done is None:                     # too much changes: rebuilt whole
            stored, body = dict(whole.entries), body_of(whole.entries)
            continue
        updates += 1
        plan, body = done
        assert (plan.added, plan.refreshed, plan.expired) == (
            whole.added, whole.refreshed, whole.expired)
        stored = {k: v for k, v in stored.items() if k not in plan.expired}
        stored.update(plan.entries)
        assert stored == whole.entries
        assert plan.active == len(stored)
        # Only the logins' addresses and the due lines were looked up.
        assert len(asked) <= len(logins) + len(cache.body.splitlines())
        times = [int(row.split(" ")[0]) for row in body.splitlines()]
        assert times == sorted(times)
        # Every key has its own time on a line (older lines may remain).
        assert newest(body) == stored
        assert all(f"{v} {k}" in body.splitlines() for k, v in stored.items())
    assert updates > 5


def test_a_line_of_the_cache_the_map_contradicts_is_refused():
    body = f"{NOW - 5000} 192.0.2.1\n{NOW - 10} 192.0.2.2\n"
    cache = pb.EntriesCache("unused", 2, body)
    stored = {"192.0.2.1": NOW - 100, "192.0.2.2": NOW - 10}
    with pytest.raises(ValueError):
        pb.merge_update(cache, [], NOW, GRACE,
                        lambda keys: {k: str(stored[k]) for k in keys if k in stored})
    with pytest.raises(ValueError):
        pb.merge_update(cache, [], NOW, GRACE, lambda keys: {})
    with pytest.raises(ValueError):
        pb.merge_update(pb.EntriesCache("unused", 1, "garbage\n"), [], NOW, GRACE,
                        lambda keys: {})


def test_insert_lines_keeps_time_order():
    body = body_of({f"192.0.2.{i}": NOW - 100 + i for i in range(50)})
    new = {"198.51.100.1": NOW - 200, "198.51.100.2": NOW - 75, "198.51.100.3": NOW,
           "198.51.100.4": NOW - 75}
    out = pb.insert_lines(body, new)
    times = [int(row.split(" ")[0]) for row in out.splitlines()]
    assert times == sorted(times)
    assert sorted(out.splitlines()) == sorted(body.splitlines() + [f"{w} {k}" for k, w in new.items()])
    assert pb.insert_lines("", new).count("\n") == 4
