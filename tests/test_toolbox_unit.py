"""The support desk's pure parts: the address an admin names, grants and
revocations applied to a plan, Postfix's restriction lists, mode bits."""

import os

import pytest

import pbsmtp_batch as pb

pytestmark = pytest.mark.unit

NOW = 1795563000
GRACE = 1800


###############################################################################
# One address, nothing else ###################################################
###############################################################################

@pytest.mark.parametrize("text, ip", [
    ("192.0.2.10", "192.0.2.10"),
    (" 192.0.2.10 ", "192.0.2.10"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
])
def test_an_address_is_taken_as_postfix_looks_it_up(text, ip):
    assert pb.address_argument(text) == ip


@pytest.mark.parametrize("text, why", [
    ("192.0.2.0/24", "is a network, not one address"),
    ("2001:db8::/64", "is a network, not one address"),
    ("mail.example.com", "is a host name, not an address"),
    ("localhost", "is a host name, not an address"),
    ("192.0.2", "is not a full IPv4 address"),
    ("192.0.2.010", "is not a full IPv4 address"),
    ("fe80::1%eth0", "carries a zone id"),
    ("junk!", "is not an IP address"),
    ("", "is not an IP address"),
    ("192.0.2.10 192.0.2.11", "is not an IP address"),
])
def test_anything_but_one_address_is_refused_saying_what_it_is(text, why):
    with pytest.raises(ValueError, match=why):
        pb.address_argument(text)


###############################################################################
# Grants and revocations on a plan ############################################
###############################################################################

def login(ip, when):
    return pb.Login(ip, when, "alice", "dovecot")


def test_a_grant_is_written_to_expire_when_it_ends_and_a_login_never_shortens_it():
    manual = pb.Manual(grants={"192.0.2.10": pb.ByHand(NOW, NOW + 7200, "bob")})
    plan = pb.apply_manual(pb.merge({}, [login("192.0.2.10", NOW - 10)], NOW, GRACE),
                           manual, NOW, GRACE)
    assert plan.entries == {"192.0.2.10": NOW + 7200 - GRACE}
    assert plan.added == {"192.0.2.10": NOW + 7200 - GRACE}
    # The next run: the entry is kept as it is, and refreshed by nothing older.
    plan = pb.apply_manual(pb.merge({"192.0.2.10": str(NOW + 7200 - GRACE)}, [], NOW + 100,
                                    GRACE), manual, NOW + 100, GRACE)
    assert plan.entries == {"192.0.2.10": NOW + 5400} and not plan.changed
    # A map that lost it gets it back.
    plan = pb.apply_manual(pb.merge({}, [], NOW + 100, GRACE), manual, NOW + 100, GRACE)
    assert plan.added == {"192.0.2.10": NOW + 5400}
    # Ended: the grant does nothing, the entry expires like a login.
    plan = pb.merge({"192.0.2.10": str(NOW + 5400)}, [], NOW + 7201, GRACE)
    plan = pb.apply_manual(plan, manual, NOW + 7201, GRACE)
    assert plan.expired == {"192.0.2.10": NOW + 5400} and plan.entries == {}
    assert pb.live_manual(manual, NOW + 7200, GRACE) == pb.Manual()


def test_a_revocation_keeps_older_logins_out_and_lets_the_next_login_in():
    revoke = pb.ByHand(NOW, None, "bob")
    manual = pb.Manual(revokes={"192.0.2.10": revoke})
    assert pb.revoked_login(login("192.0.2.10", NOW - 60), manual, NOW + 10, GRACE) == revoke
    assert pb.revoked_login(login("192.0.2.10", NOW + 5), manual, NOW + 10, GRACE) is None
    assert pb.revoked_login(login("192.0.2.11", NOW - 60), manual, NOW + 10, GRACE) is None
    # An entry from before it goes; one from a later login stays.
    plan = pb.apply_manual(pb.merge({"192.0.2.10": str(NOW - 60)}, [], NOW + 10, GRACE),
                           manual, NOW + 10, GRACE)
    assert plan.entries == {} and plan.expired == {"192.0.2.10": NOW - 60}
    plan = pb.apply_manual(pb.merge({"192.0.2.10": str(NOW + 5)}, [], NOW + 10, GRACE),
                           manual, NOW + 10, GRACE)
    assert plan.entries == {"192.0.2.10": NOW + 5} and not plan.changed
    # Kept while a login from before it can be inside the window, no longer.
    assert pb.live_manual(manual, NOW + GRACE - 1, GRACE) == manual
    assert pb.live_manual(manual, NOW + GRACE, GRACE) == pb.Manual()


def test_a_revocation_for_a_time_keeps_every_login_out_until_it_ends():
    manual = pb.Manual(revokes={"192.0.2.10": pb.ByHand(NOW, NOW + 600, "bob")})
    assert pb.revoked_login(login("192.0.2.10", NOW + 300), manual, NOW + 400, GRACE)
    plan = pb.apply_manual(pb.merge({"192.0.2.10": str(NOW + 300)}, [], NOW + 400, GRACE),
                           manual, NOW + 400, GRACE)
    assert plan.entries == {}
    assert pb.revoked_login(login("192.0.2.10", NOW + 300), manual, NOW + 600, GRACE) is None
    assert pb.live_manual(manual, NOW + 600, GRACE) == pb.Manual()


###############################################################################
# Restriction lists ###########################################################
###############################################################################

MAP = "/etc/postfix/pop-before-smtp"
GOOD = f"permit_mynetworks, permit_sasl_authenticated, check_client_access hash:{MAP}, " \
       f"reject_unauth_destination"
DEFAULT_RELAY = "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"


def verdicts(findings):
    return [(f.ok, f.text) for f in findings]


def test_the_map_before_reject_unauth_destination_is_right():
    found = pb.wiring_findings((3, 7), GOOD, "", "hash", MAP)
    assert verdicts(found) == [(True, f"check_client_access hash:{MAP} is in "
                                      f"smtpd_relay_restrictions, before "
                                      f"reject_unauth_destination")]
    assert verdicts(pb.wiring_findings((3, 7), GOOD.replace("hash:", "proxy:hash:"), "",
                                       "hash", MAP))[0][0] is True


def test_the_map_after_reject_unauth_destination_is_wrong():
    relay = f"permit_mynetworks, reject_unauth_destination, check_client_access hash:{MAP}"
    (finding,) = pb.wiring_findings((3, 7), relay, "", "hash", MAP)
    assert finding.ok is False and "comes after reject_unauth_destination" in finding.text


def test_the_map_only_in_recipient_restrictions_is_the_454_trap():
    (finding,) = pb.wiring_findings((3, 7), DEFAULT_RELAY, GOOD, "hash", MAP)
    assert finding.ok is False
    assert "454 4.7.1 Relay access denied" in finding.text
    assert "smtpd_recipient_restrictions" in finding.text
    (finding,) = pb.wiring_findings((3, 7), "permit_mynetworks, reject_unauth_destination",
                                    GOOD, "hash", MAP)
    assert "554 5.7.1 Relay access denied" in finding.text
    # An empty smtpd_relay_restrictions leaves relay to the recipient list,
    # which is all there is before Postfix 2.10.
    assert pb.wiring_findings((3, 7), "", GOOD, "hash", MAP)[0].ok is True
    assert pb.wiring_findings((2, 9), DEFAULT_RELAY, GOOD, "hash", MAP)[0].ok is True


def test_another_type_or_no_map_at_all_is_wrong():
    found = pb.wiring_findings((3, 7), GOOD.replace("hash:", "lmdb:"), "", "hash", MAP)
    assert [f.ok for f in found] == [False, False]
    assert f"has check_client_access lmdb:{MAP}, but pbsmtp-batch writes hash:{MAP}" \
        in found[0].text
    (finding,) = pb.wiring_findings((3, 7), DEFAULT_RELAY, "", "hash", MAP)
    assert finding.ok is False and "is not in smtpd_relay_restrictions" in finding.text


def test_permit_before_the_map_is_an_open_relay():
    relay = f"permit, check_client_access hash:{MAP}, reject_unauth_destination"
    (finding,) = pb.wiring_findings((3, 7), relay, "", "hash", MAP)
    assert finding.ok is False and "open relay" in finding.text


def test_sql_maps_are_found_by_type():
    relay = ("permit_mynetworks, check_client_access pgsql:/etc/postfix/pbs.pgsql.cf, "
             "reject_unauth_destination")
    assert pb.wiring_findings((3, 7), relay, "", "pgsql", None)[0].ok is True
    assert pb.wiring_findings((3, 7), relay, "", "mysql", None)[0].ok is False


def stat_of(mode, uid, gid):
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_mode_bits_say_who_can_read():
    d = ("/srv", stat_of(0o40755, 0, 0))
    private = ("/srv/db", stat_of(0o40700, 0, 0))
    f = ("/srv/db/map.db", stat_of(0o100640, 0, 120))
    assert pb.unreadable_reason([d, ("/srv/map.db", stat_of(0o100644, 0, 0))], 110, [110],
                                "postfix") is None
    assert "cannot enter directory /srv/db" in pb.unreadable_reason([d, private, f], 110, [120],
                                                                    "postfix")
    g = ("/srv/map.db", stat_of(0o100640, 0, 120))
    assert pb.unreadable_reason([d, g], 110, [110, 120], "postfix") is None
    assert "cannot read /srv/map.db (mode 0640" in pb.unreadable_reason([d, g], 110, [110],
                                                                        "postfix")
