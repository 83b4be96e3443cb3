from datetime import UTC, datetime

import pytest

from cdr_billing.months import BillingMonth, resolve_billing_month


def test_parse_and_format_round_trip():
    assert str(BillingMonth.parse("2026-03")) == "2026-03"


@pytest.mark.parametrize("text", ["2026-13", "2026-1", "26-01", "2026-00", "", "2026-01-01"])
def test_parse_rejects_malformed_months(text):
    with pytest.raises(ValueError, match="YYYY-MM"):
        BillingMonth.parse(text)


def test_next_wraps_the_year():
    assert BillingMonth(2026, 12).next() == BillingMonth(2027, 1)


def test_bounds_are_local_midnights():
    start, end = BillingMonth(2026, 10).bounds("Europe/Stockholm")
    assert start.isoformat() == "2026-10-01T00:00:00+02:00"
    assert end.isoformat() == "2026-11-01T00:00:00+01:00"


def test_param_overrides_the_data_interval():
    interval_start = datetime(2026, 9, 1, tzinfo=UTC)
    assert resolve_billing_month("2026-02", interval_start, "UTC") == BillingMonth(2026, 2)


def test_data_interval_start_is_read_in_the_billing_timezone():
    # October 1st 00:00 in Stockholm is still September 30th in UTC.
    interval_start = datetime(2026, 9, 30, 22, 0, tzinfo=UTC)
    assert resolve_billing_month(None, interval_start, "Europe/Stockholm") == BillingMonth(2026, 10)


def test_a_run_without_interval_or_param_is_refused():
    with pytest.raises(ValueError, match="billing_month"):
        resolve_billing_month(None, None, "UTC")
