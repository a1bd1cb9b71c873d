"""The end-to-end relay check of test_e2e.py (tests/relay.py) for the other Postfix file maps
(btree and cdb): a real Dovecot login, a run, and Postfix's smtpd deciding."""

import time

import pytest

from relay import GRACE, Relay, relay_lab

pytestmark = pytest.mark.live


@pytest.mark.parametrize("map_type", ["btree", "cdb"])
def test_login_then_run_allows_relay_until_the_grace_ends(map_type):
    with relay_lab(map_type) as lab:
        relay = Relay(lab)
        relay.assert_refused("127.0.0.3")
        ok, reply, _ = relay.login("imap", "127.0.0.3")
        assert ok, reply
        relay.run()
        assert relay.lookup("127.0.0.3").isdigit()
        relay.assert_accepted("127.0.0.3")
        relay.assert_refused("127.0.0.4")
        relay.run(f"--now={int(time.time()) + GRACE + 5}")
        assert relay.lookup("127.0.0.3") is None
        relay.assert_refused("127.0.0.3")
