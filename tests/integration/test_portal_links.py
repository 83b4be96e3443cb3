"""Sign-in links and rate limits on the real PostgreSQL: a link redeemed by many requests at
once signs in exactly one; concurrent requests of one bucket never pass its limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine

from cdr_billing.migrations import upgrade
from cdr_billing.portal import auth, limits


@pytest.fixture(scope="module")
def engine(postgres):
    engine = create_engine(postgres.url_of(postgres.create_database("portal_links")), pool_size=8)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_link_redeemed_eight_times_at_once_signs_in_once(engine):
    now = datetime.now(UTC)
    with engine.begin() as conn:
        token = auth.issue_link(conn, "alice@example.org", "client", now)

    def redeem(_: int) -> str | None:
        with engine.begin() as conn:
            return auth.redeem_link(conn, token, datetime.now(UTC))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(redeem, range(8)))
    assert results.count("alice@example.org") == 1 and results.count(None) == 7


def test_concurrent_requests_never_pass_the_limit(engine):
    limit = limits.Limit("test", 5, limits.LINKS_PER_ADDRESS.window)

    def ask(_: int) -> bool:
        with engine.begin() as conn:
            return limits.allow(conn, limit, "bucket", datetime.now(UTC))

    with ThreadPoolExecutor(8) as pool:
        allowed = list(pool.map(ask, range(20)))
    assert allowed.count(True) == 5
