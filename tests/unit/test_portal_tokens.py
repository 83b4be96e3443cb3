"""The portal's pure rules: tokens stored hashed, links' and sessions' lifetimes, addresses,
account references, the month's start and the top-up amounts."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from cdr_billing.portal import auth
from cdr_billing.portal.app import month_start, topup_choices
from cdr_billing.portal.queries import account_ref

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


def test_a_new_secret_is_random_and_only_its_sha256_is_kept():
    first, second = auth.new_secret(), auth.new_secret()
    assert first.value != second.value and len(first.value) == 43
    assert first.digest == hashlib.sha256(first.value.encode()).hexdigest()
    assert first.value not in first.digest and auth.well_formed(first.value)


@pytest.mark.parametrize("value", ["", None, "a" * 65, "abc/def", "abc def", "é" * 10, "a.b"])
def test_values_we_never_make_are_not_well_formed(value):
    assert not auth.well_formed(value)


def test_a_link_lives_fifteen_minutes():
    assert auth.link_expiry(NOW) - NOW == timedelta(minutes=15)


@pytest.mark.parametrize(
    ("created", "seen", "revoked", "live"),
    [
        (NOW - timedelta(hours=1), NOW - timedelta(minutes=29), None, True),
        (NOW - timedelta(hours=1), NOW - timedelta(minutes=30), None, False),  # idle
        (NOW - timedelta(hours=12), NOW - timedelta(minutes=1), None, False),  # too old
        (NOW - timedelta(hours=11, minutes=59), NOW, None, True),
        (NOW - timedelta(minutes=5), NOW, NOW - timedelta(minutes=1), False),  # signed out
    ],
)
def test_a_session_ends_when_idle_too_old_or_revoked(created, seen, revoked, live):
    assert auth.session_is_live(created, seen, revoked, NOW) is live


@pytest.mark.parametrize(
    ("typed", "address"),
    [
        (" Alice@Example.ORG ", "alice@example.org"),
        ("alice", None),
        ("a@b@example.org", None),
        ("a b@example.org", None),
        ("alice@localhost", None),
        ("<x>@example.org", None),
        ("a" * 250 + "@example.org", None),
    ],
)
def test_addresses_are_normalised_or_refused(typed, address):
    assert auth.normal_address(typed) == address


def test_hashes_of_addresses_and_clients_hide_them():
    assert auth.address_hash("a@example.org") != auth.address_hash("b@example.org")
    assert "127.0.0.1" not in auth.client_hash("s" * 32, "127.0.0.1")
    assert auth.client_hash("s" * 32, "127.0.0.1") != auth.client_hash("t" * 32, "127.0.0.1")


def test_account_references_are_keyed_and_show_no_number():
    ref = account_ref("s" * 32, "46701110001")
    assert ref == account_ref("s" * 32, "46701110001") != account_ref("t" * 32, "46701110001")
    assert "4670" not in ref and len(ref) == 32


def test_the_month_starts_at_local_midnight():
    # 2026-05-01 00:00 in Stockholm (CEST, +2) is 2026-04-30 22:00 UTC
    assert month_start(NOW, "Europe/Stockholm") == datetime(2026, 4, 30, 22, 0, tzinfo=UTC)
    assert month_start(datetime(2026, 4, 30, 23, tzinfo=UTC), "Europe/Stockholm") == datetime(
        2026, 4, 30, 22, 0, tzinfo=UTC
    )


def test_top_up_amounts_are_whole_units_of_the_currency():
    assert topup_choices("EUR") == (1000, 2000, 5000)
    assert topup_choices("JPY") == (10, 20, 50)
