"""The Billing pages' look, as pure functions: times in the billing timezone, numbers one way,
every code the pipeline can give a row said in words, the chart's text never scaled, and every
colour of the style redefined for dark mode."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cdr_billing import attribute, not_billed, rate, report, validate
from cdr_billing.ui import month_pages, pages, prepaid_pages
from cdr_billing.ui.queries import CustomerTotal

PACKAGE = Path(pages.__file__).resolve().parents[1]
ZURICH = ZoneInfo("Europe/Zurich")


def _pipeline_codes() -> set[str]:
    """Every reason code, kind and outcome a row can get: the stages' constants, and each
    literal code the source assigns to a reason_code or names in a row rule."""
    codes = set(validate.REASONS) | {code for code in attribute.HELD_REASONS if code}
    codes |= {rate.NO_TARIFF_PREFIX, rate.NO_RATE_AT_CALL_TIME}
    codes |= {kind for kind, _, _ in not_billed.KINDS}
    codes |= {code for _, _, code in not_billed.KINDS if code}
    codes |= {"read", *report.OUTCOMES}
    written = re.compile(r'(?:reason_code\s*=\s*|RowRule\(\s*|reason_code"\s*:\s*)"([A-Z_]+)"')
    for source in PACKAGE.rglob("*.py"):
        codes |= set(written.findall(source.read_text(encoding="utf-8")))
    return codes


def test_every_code_the_pipeline_can_give_a_row_has_words():
    codes = _pipeline_codes()
    assert {"PART_OF_SESSION", "NOT_ENTITLED", "COST_OUT_OF_RANGE", "not_billable"} <= codes
    labelled = set(pages.REASON_LABELS) | set(report.OUTCOME_LABELS)
    assert sorted(codes - labelled) == []
    for code in codes:
        words = pages.reason_label(code)
        assert "_" not in words and not words.isupper(), (code, words)


def test_a_code_is_shown_in_words_with_the_code_as_tooltip():
    assert pages.reason_label("NOT_ENTITLED") == "account not entitled"
    assert "failed calls" in pages.reason_label("not_billable")
    assert pages.reason("NOT_ENTITLED") == (
        '<span class="code" title="NOT_ENTITLED">account not entitled</span>'
    )
    assert pages.reason("<NEW>") == '<span class="code" title="&lt;NEW&gt;">&lt;NEW&gt;</span>'


@pytest.mark.parametrize(
    ("moment", "shown"),
    [
        (datetime(2026, 11, 2, 8, 14, 59, tzinfo=UTC), "2026-11-02 09:14 CET"),
        (datetime(2026, 7, 1, 22, 5, tzinfo=UTC), "2026-07-02 00:05 CEST"),
        (datetime(2026, 3, 29, 0, 59), "2026-03-29 01:59 CET"),  # no zone: UTC
        (datetime(2026, 3, 29, 1, 0), "2026-03-29 03:00 CEST"),
    ],
)
def test_times_are_in_the_billing_timezone_with_its_abbreviation(moment, shown):
    assert pages.timestamp(moment, ZURICH) == shown


def test_the_billing_timezone_comes_from_the_config_and_names_itself():
    from cdr_billing.ui.web import config

    zone = pages.billing_zone()
    assert zone.key == config().billing.timezone
    assert pages.timestamp(datetime(2026, 1, 5, 12, 0, 7, tzinfo=UTC), seconds=True).endswith(
        f":07 {datetime(2026, 1, 5, tzinfo=zone).tzname()}"
    )
    assert pages.zone_note(ZURICH) == "Europe/Zurich (CET/CEST)"
    assert pages.zone_note(ZoneInfo("UTC")) == "UTC (UTC)"
    assert prepaid_pages.moment(None) == ""
    assert f"Times in {zone.key} (" in pages.page("Billing", "<p>x</p>")
    assert "Times in" not in pages.message_page("Not found", "No such month.")


def test_numbers_money_and_minutes_are_written_one_way():
    assert pages.number(1234567) == "1,234,567"
    assert pages.money(Decimal("-1234567.80"), "EUR") == "-1,234,567.80 EUR"
    assert pages.minor_money(123456789, "EUR") == "1,234,567.89 EUR"
    assert pages.minor_money(1234, "JPY") == "1,234 JPY"
    assert pages.minor_money(-140, "EUR") == "-1.40 EUR"
    assert pages.minutes(90) == "1.5" and pages.minutes(3) == "0.1" and pages.minutes(9) == "0.2"
    assert pages.minutes(60_000_000) == "1,000,000.0"


def test_the_chart_is_sized_in_percent_so_its_text_keeps_its_size():
    customers = [
        CustomerTotal("C1", "EUR", Decimal("1000.00"), 100000, 1, 1),
        CustomerTotal("C2", "EUR", Decimal("250.00"), 25000, 1, 1),
        CustomerTotal("C3", "EUR", Decimal("-5.00"), -500, 1, 1),
        CustomerTotal("C4", "SEK", Decimal("9.00"), 900, 1, 1),
    ]
    chart = month_pages.cost_chart(customers, "EUR")
    assert 'width="100%"' in chart and "viewBox" not in chart  # not scaled down
    widths = dict(re.findall(r'data-customer="(\w+)" x="0" y="\d+" width="([\d.]+)%"', chart))
    assert widths == {"C1": "100.00", "C2": "25.00", "C3": "0.00"}
    assert ">1,000.00 EUR</text>" in chart and "C4" not in chart


def test_every_colour_of_the_style_is_redefined_for_dark_mode():
    style = pages.STYLE
    light = style[style.index(":root {") : style.index("@media (prefers-color-scheme: dark)")]
    dark = style[style.index("@media (prefers-color-scheme: dark)") : style.index("body {")]
    rules = style[style.index("body {") :]
    defined = set(re.findall(r"(--[\w-]+):", light))
    assert defined == set(re.findall(r"(--[\w-]+):", dark))
    assert not re.findall(r"#[0-9a-fA-F]{3,6}\b|rgb\(", rules)  # colours only as variables
    assert set(re.findall(r"var\((--[\w-]+)\)", rules)) <= defined


def test_the_month_page_shows_the_largest_and_links_the_rest():
    """A month of many customers and accounts: the chart and the non-billed tables keep the
    20 largest, and link the pages that list every one."""
    from cdr_billing.ui.queries import Batch, CurrencyTotal, MonthDetail, MonthFiles, NotBilled

    customers = [CustomerTotal(f"C{n:03}", "EUR", Decimal(n), n * 100, 1, 1) for n in range(1, 26)]
    accounts = [NotBilled(f"acct-{n}", "UNKNOWN_ACCOUNT", 100 - n) for n in range(30)]
    batch = Batch(7, "2026-08", "run", "current", datetime(2026, 9, 1, tzinfo=UTC), {"read": 1})
    everyone = CurrencyTotal("EUR", 25, 25, 25, sum(c.total_minor for c in customers))
    counts = {"unbillable": 0, "suspense": 30}
    detail = MonthDetail(  # as month_detail hands them over: the 20 largest groups, all counted
        "2026-08",
        [batch],
        batch,
        customers,
        [everyone],
        [],
        accounts[:20],
        counts,
        MonthFiles(),
        [],
    )
    page = month_pages.month_page(detail)
    bars = re.findall(r'data-customer="(C\d+)"', page)
    assert bars == [f"C{n:03}" for n in range(25, 5, -1)]  # the 20 largest, largest first
    assert "Cost per customer, EUR, the top 20 of 25" in page
    shown = re.findall(r'href="2026-08/not-billed/suspense/UNKNOWN_ACCOUNT/(acct-\d+)"', page)
    assert shown == [f"acct-{n}" for n in range(20)]
    assert '<a href="2026-08/not-billed/suspense">All 30 groups, with minutes</a>' in page
    table = re.findall(r'href="2026-08/customer/(C\d+)"', page)
    assert table == [f"C{n:03}" for n in range(25, 5, -1)]
    assert "Totals per customer, the top 20 per currency" in page
    assert "<td>Total</td><td></td><td class=num>25</td>" in page  # the footer: every customer
    assert '<a href="2026-08/lines">All 25 customers\' lines</a>' in page
