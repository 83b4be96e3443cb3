"""The month report: reconciliation of every input row, and the billing lines."""

from __future__ import annotations

import re
from decimal import Decimal
from html import escape
from typing import Any

import pandas as pd

from cdr_billing.aggregate import LINE_KEYS
from cdr_billing.durations import minutes
from cdr_billing.money import from_minor_units
from cdr_billing.privacy import mask_number

# read = billed + quarantined + duplicates + not_billable + unbillable + suspense + combined
#        + prepaid
OUTCOMES = (
    "billed",
    "quarantined",
    "duplicates",
    "not_billable",
    "unbillable",
    "suspense",
    "combined",
    "prepaid",
)
# What each outcome means, in words, where people read the counts (report mail, Billing UI).
OUTCOME_LABELS = {
    "read": "read",
    "billed": "billed",
    "quarantined": "quarantined (invalid rows)",
    "duplicates": "duplicates",
    "not_billable": "not billable (failed calls)",
    "unbillable": "unbillable (no tariff price)",
    "suspense": "suspense (account unknown or not entitled)",
    "combined": "combined (parts of partial calls)",
    "prepaid": "prepaid (debited to balances)",
}
# Posting counts of the month's prepaid settlement, in the order the report lists them.
SETTLEMENT_COUNTS = ("debited", "rerated", "unchanged", "reversed", "refused", "accounts")
# An account id that may be a phone number (a PBX extension, an E.164 number): masked.
_NUMBER_LIKE = re.compile(r"\+?[0-9][0-9 \-]{5,}")


class ReconciliationError(AssertionError):
    """Rows or money do not add up; the month must not be billed as is."""


def reconcile(counts: dict[str, int]) -> None:
    """Check that every row read has exactly one outcome."""
    accounted = sum(counts[outcome] for outcome in OUTCOMES)
    if accounted != counts["read"]:
        detail = ", ".join(f"{o}={counts[o]}" for o in OUTCOMES)
        raise ReconciliationError(
            f"rows read {counts['read']} != rows accounted {accounted} ({detail})"
        )


def masked_account(account_id: str) -> str:
    """An account id as logs and mails show it: masked when it looks like a phone number."""
    text = str(account_id)
    return mask_number(text) if _NUMBER_LIKE.fullmatch(text) else text


def prepaid_settlement(postings: dict[str, int], refused: pd.DataFrame) -> dict[str, Any]:
    """The month's prepaid settlement as plain data: its posting counts and the refused calls
    (call key, account masked when number-like, reason), which were not debited."""
    return {
        "postings": {key: int(postings[key]) for key in SETTLEMENT_COUNTS},
        "refused_calls": [
            {
                "call_key": r.call_key,
                "account_id": masked_account(r.account_id),
                "reason": r.reason,
            }
            for r in refused.itertuples()
        ],
    }


def reconcile_file(stats: dict[str, int | str]) -> None:
    """Check one file: rows read = billable + quarantined + duplicate."""
    accounted = stats["billable"] + stats["quarantined"] + stats["duplicate"]
    if accounted != stats["read"]:
        raise ReconciliationError(
            f"{stats['name']}: rows read {stats['read']} "
            f"!= billable + quarantined + duplicate {accounted}"
        )


def check_totals(lines: pd.DataFrame, call_totals: pd.DataFrame) -> None:
    """Check that the lines sum to the billed calls' costs (`aggregate.call_totals`, of one
    or several files), per currency, to the cent."""
    by_lines = lines.groupby("currency")["total_minor"].sum().to_dict()
    by_calls = call_totals.groupby("currency")["total_minor"].sum().to_dict()
    if by_lines != by_calls:
        raise ReconciliationError(f"line totals {by_lines} != call totals {by_calls} (minor units)")


def build_report(
    billing_month: str,
    batch: dict[str, Any],
    counts: dict[str, int],
    lines: pd.DataFrame,
    exceptions: pd.DataFrame,
) -> dict[str, Any]:
    """Return the month report as plain data (money as decimal strings)."""
    return {
        "billing_month": billing_month,
        "batch": batch,
        "counts": counts,
        "lines": [
            {
                "customer_id": row.customer_id,
                "sequence_number": row.sequence_number,
                "currency": row.currency,
                "total": str(from_minor_units(row.total_minor, row.currency)),
                "call_count": int(row.call_count),
                "billed_seconds": int(row.billed_seconds),
            }
            for row in lines.itertuples()
        ],
        "exceptions": (
            exceptions.groupby(["kind", "reason_code"])
            .size()
            .rename("rows")
            .reset_index()
            .to_dict("records")
            if len(exceptions)
            else []
        ),
    }


def diff_lines(previous: pd.DataFrame, current: pd.DataFrame) -> list[dict[str, Any]]:
    """Lines whose total differs from the superseded batch (new and dropped lines included)."""
    both = previous.merge(current, on=LINE_KEYS, how="outer", suffixes=("_before", "_after"))
    before, after = (
        both["total_minor_before"].fillna(0).astype("int64"),
        both["total_minor_after"].fillna(0).astype("int64"),
    )
    changed = both[
        (before != after) | both["total_minor_before"].isna() | both["total_minor_after"].isna()
    ]
    return [
        {
            "customer_id": row.customer_id,
            "sequence_number": row.sequence_number,
            "currency": row.currency,
            "before": str(from_minor_units(before[i], row.currency))
            if pd.notna(row.total_minor_before)
            else "",
            "after": str(from_minor_units(after[i], row.currency))
            if pd.notna(row.total_minor_after)
            else "",
            "change": str(from_minor_units(after[i] - before[i], row.currency)),
        }
        for i, row in changed.sort_values(LINE_KEYS).iterrows()
    ]


def customer_totals(lines: pd.DataFrame) -> list[dict[str, Any]]:
    """Totals per customer and currency, all sequence numbers together."""
    totals = (
        lines.groupby(["customer_id", "currency"], sort=True)[["total_minor", "call_count"]]
        .sum()
        .reset_index()
    )
    return [
        {
            "customer_id": r.customer_id,
            "currency": r.currency,
            "total": str(from_minor_units(int(r.total_minor), r.currency)),
            "call_count": int(r.call_count),
        }
        for r in totals.itertuples()
    ]


def revenue_share_report(shares: pd.DataFrame) -> list[dict[str, Any]]:
    """The revenue share rows with money as decimal strings."""
    return [
        {
            "service_provider": r.service_provider,
            "currency": r.currency,
            "share_percent": str(Decimal(int(r.share_basis_points)) / 100),
            "calls": int(r.call_count),
            "billed": str(from_minor_units(int(r.billed_minor), r.currency)),
            "share": str(from_minor_units(int(r.share_minor), r.currency)),
        }
        for r in shares.itertuples()
    ]


def unbillable_ranges(unbillable: pd.DataFrame) -> list[dict[str, Any]]:
    """Unbillable calls per number range and reason: calls and minutes, most calls first."""
    if unbillable.empty:
        return []
    grouped = unbillable.groupby(["number_range", "reason_code"]).agg(
        calls=("transaction_id", "size"), seconds=("duration_seconds", "sum")
    )
    ranges = grouped.reset_index().sort_values(["calls", "number_range"], ascending=[False, True])
    return [
        {
            "number_range": r.number_range,
            "reason_code": r.reason_code,
            "calls": int(r.calls),
            "minutes": float(minutes(r.seconds)),
        }
        for r in ranges.itertuples()
    ]


def credits(call_totals: pd.DataFrame) -> list[dict[str, Any]]:
    """Per currency, the billed calls with a negative cost (credits) and their sum."""
    summed = (
        call_totals.groupby("currency", sort=True)[["credit_calls", "credit_minor"]]
        .sum()
        .reset_index()
    )
    return [
        {
            "currency": r.currency,
            "calls": int(r.credit_calls),
            "total": str(from_minor_units(int(r.credit_minor), r.currency)),
        }
        for r in summed[summed["credit_calls"] > 0].itertuples()
    ]


def suspense_accounts(suspense: pd.DataFrame) -> list[dict[str, Any]]:
    """Accounts whose calls are in suspense, with the reason and the number of calls."""
    if suspense.empty:
        return []
    grouped = suspense.groupby(["user_id", "reason_code"]).size().rename("calls").reset_index()
    ordered = grouped.sort_values(["calls", "user_id"], ascending=[False, True])
    return [
        {"account_id": r.user_id, "reason_code": r.reason_code, "calls": int(r.calls)}
        for r in ordered.itertuples()
    ]


def render_text(report: dict[str, Any]) -> str:
    """Render the report as a fixed-width text table for logs and terminals."""
    out = [f"Billing month {report['billing_month']}  (batch {report['batch']['batch_id']})", ""]
    out.append(
        f"{'customer':<12}{'sequence':<10}{'cur':<5}{'total':>14}{'calls':>8}{'minutes':>10}"
    )
    for line in report["lines"]:
        out.append(
            f"{line['customer_id']:<12}{line['sequence_number']:<10}{line['currency']:<5}"
            f"{line['total']:>14}{line['call_count']:>8}{line['billed_seconds'] / 60:>10.1f}"
        )
    counts = report["counts"]
    out += ["", "Rows: " + ", ".join(_count_text(key, counts) for key in ("read", *OUTCOMES))]
    for item in report["exceptions"]:
        out.append(f"  {item['kind']:<12} {item['reason_code']:<24} {item['rows']}")
    if report.get("changes") is not None:
        out += [
            "",
            f"Changes from the superseded batch {report['batch']['superseded_batch_id']}: "
            f"{len(report['changes'])} lines",
        ]
        for item in report["changes"]:
            before_after = f"{item['before']:>12} -> {item['after']:>12} ({item['change']})"
            out.append(f"  {item['customer_id']:<12}{item['sequence_number']:<10}{before_after}")
    if report.get("revenue_share"):
        out += ["", "Revenue share per service provider:"]
        for item in report["revenue_share"]:
            out.append(
                f"  {item['service_provider']:<16}{item['currency']:<5}"
                f"{item['share_percent']:>6}% of {item['billed']:>12}"
                f" = {item['share']:>10} ({item['calls']} calls)"
            )
    if report.get("held_files"):
        out += [
            "",
            "Held files (changed content, not billed; "
            "release: python -m cdr_billing.ledger release NAME):",
        ]
        out += [
            f"  {f['source']:<14} {f['name']:<40} sha256 {f['sha256'][:12]}"
            for f in report["held_files"]
        ]
    if report.get("changed_files"):
        out += ["", "Files whose released content replaced what was billed before:"]
        out += [
            f"  {f['source']:<14} {f['name']:<40} "
            f"{f['billed_sha256'][:12]} -> {f['released_sha256'][:12]}"
            for f in report["changed_files"]
        ]
    if report.get("credits"):
        out += ["", "Credits (negative provider costs, billed as credits):"]
        out += [
            f"  {item['currency']:<5}{item['total']:>14} ({item['calls']} calls)"
            for item in report["credits"]
        ]
    if report.get("suspense_accounts"):
        out += [
            "",
            "Accounts in suspense (fix the entitlement, then re-run with refresh_entitlements):",
        ]
        for item in report["suspense_accounts"][:20]:
            out.append(
                f"  {item['account_id']:<24} {item['reason_code']:<24} {item['calls']:>6} calls"
            )
    if report.get("stale_entitlements"):
        out.append(
            "\nStale entitlements (no login for a long time, cost center may be outdated): "
            f"{len(report['stale_entitlements'])}"
        )
    out += _settlement_text(report.get("prepaid"))
    if report.get("unbillable_ranges"):
        out += ["", "Unbillable number ranges (add them to the tariff, then re-run the month):"]
        for item in report["unbillable_ranges"]:
            out.append(
                f"  {item['number_range']:<12} {item['reason_code']:<24} "
                f"{item['calls']:>6} calls {item['minutes']:>9} min"
            )
    return "\n".join(out)


def _count_text(key: str, counts: dict[str, int]) -> str:
    """One row count of the text report; prepaid calls say where they went."""
    suffix = " (debited to balances)" if key == "prepaid" else ""
    return f"{key}={counts.get(key, 0)}{suffix}"


def _settlement_text(settlement: dict[str, Any] | None) -> list[str]:
    """The prepaid settlement's lines of the text report (none without a settlement)."""
    if not _settled_anything(settlement):
        return []
    postings = settlement["postings"]
    out = [
        "",
        "Prepaid balances settled: " + ", ".join(f"{k}={postings[k]}" for k in SETTLEMENT_COUNTS),
    ]
    if settlement["refused_calls"]:
        out.append("Prepaid calls refused (not debited; fix the account or the call):")
        out += [
            f"  {c['call_key']:<32} {c['account_id']:<20} {c['reason']}"
            for c in settlement["refused_calls"][:50]
        ]
    return out


def _settled_anything(settlement: dict[str, Any] | None) -> bool:
    """Whether the month had prepaid calls or debits to settle (else the report omits it)."""
    return bool(settlement) and any(settlement["postings"].values())


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; every cell escaped, numbers right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in rows)
    return (
        "<table border=1 cellpadding=4 style='border-collapse:collapse'>"
        f"<tr>{head}</tr>{body}</table>"
    )


def _html_cell(cell: Any) -> str:
    """One escaped cell, right-aligned when it holds a number or an amount."""
    align = " align=right" if isinstance(cell, int | float) or _is_amount(cell) else ""
    return f"<td{align}>{escape(str(cell))}</td>"


def _is_amount(cell: Any) -> bool:
    return isinstance(cell, str) and cell.lstrip("-").replace(".", "", 1).isdigit()


def _section(title: str, intro: str, headers: list[str], rows: list[list[Any]]) -> str:
    return (
        f"<h3>{escape(title)}</h3><p>{escape(intro)}</p>" + _html_table(headers, rows)
        if rows
        else ""
    )


def render_html(report: dict[str, Any]) -> str:
    """The month report as an HTML mail for finance: totals, reconciliation, changes and what
    needs attention."""
    lines = [
        [x["customer_id"], x["sequence_number"], x["currency"], x["total"], x["call_count"]]
        for x in report["lines"]
    ]
    customers = [
        [x["customer_id"], x["currency"], x["total"], x["call_count"]]
        for x in report.get("customer_totals", [])
    ]
    counts = [[OUTCOME_LABELS[key], report["counts"].get(key, 0)] for key in ("read", *OUTCOMES)]
    settlement = report.get("prepaid")
    if not _settled_anything(settlement):
        settlement = {"postings": {}, "refused_calls": []}
    changes = report.get("changes")
    shares = report.get("revenue_share", [])
    return "".join(
        [
            f"<h2>Billing month {escape(report['billing_month'])} "
            f"(batch {report['batch']['batch_id']})</h2>",
            _section(
                "Totals per customer",
                "All sequence numbers together.",
                ["Customer", "Currency", "Total", "Calls"],
                customers,
            ),
            _section(
                "Billing lines",
                "What the billing system charges.",
                ["Customer", "Sequence", "Currency", "Total", "Calls"],
                lines,
            ),
            _section(
                "Reconciliation",
                "Every row read has exactly one outcome.",
                ["Rows", "Count"],
                counts,
            ),
            _section(
                "Prepaid balances",
                "The month's prepaid calls settled against their debits (each call once; "
                "a re-rated call: a reversal and a new debit).",
                ["Postings", "Count"],
                [[key, count] for key, count in settlement["postings"].items()],
            ),
            _section(
                "Refused prepaid calls",
                "Not debited: another currency than the account's, or a negative cost.",
                ["Call", "Account", "Reason"],
                [
                    [c["call_key"], c["account_id"], c["reason"]]
                    for c in settlement["refused_calls"][:50]
                ],
            ),
            "<p>First batch of the month.</p>"
            if changes is None
            else _section(
                "Changes from the superseded batch",
                f"{len(changes)} lines changed.",
                ["Customer", "Sequence", "Currency", "Before", "After", "Change"],
                [
                    [
                        c["customer_id"],
                        c["sequence_number"],
                        c["currency"],
                        c["before"],
                        c["after"],
                        c["change"],
                    ]
                    for c in changes
                ],
            )
            or "<p>No line changed from the superseded batch.</p>",
            _section(
                "Revenue share per service provider",
                "Of the billed calls that carry a revenue share percentage.",
                ["Provider", "Currency", "Share %", "Calls", "Billed", "Share"],
                [
                    [
                        r["service_provider"],
                        r["currency"],
                        r["share_percent"],
                        r["calls"],
                        r["billed"],
                        r["share"],
                    ]
                    for r in shares
                ],
            ),
            _section(
                "Held files",
                "Delivered again with other content: not billed until released "
                "(python -m cdr_billing.ledger release NAME, or the run's release_held_files).",
                ["Source", "File", "Content (sha256)", "First seen"],
                [
                    [f["source"], f["name"], f["sha256"][:12], f["first_seen"]]
                    for f in report.get("held_files", [])
                ],
            ),
            _section(
                "Changed files",
                "Released content that replaced what the month billed before.",
                ["Source", "File", "Billed before", "Billed now"],
                [
                    [f["source"], f["name"], f["billed_sha256"][:12], f["released_sha256"][:12]]
                    for f in report.get("changed_files", [])
                ],
            ),
            _section(
                "Credits",
                "Billed calls with a negative provider cost (the source's profile allows credits).",
                ["Currency", "Calls", "Total"],
                [[r["currency"], r["calls"], r["total"]] for r in report.get("credits", [])],
            ),
            _section(
                "Unbillable number ranges",
                "Add them to the tariff, then re-run the month.",
                ["Range", "Reason", "Calls", "Minutes"],
                [
                    [r["number_range"], r["reason_code"], r["calls"], r["minutes"]]
                    for r in report.get("unbillable_ranges", [])
                ],
            ),
            _section(
                "Accounts in suspense",
                "Fix the entitlement, then re-run with refresh_entitlements.",
                ["Account", "Reason", "Calls"],
                [
                    [r["account_id"], r["reason_code"], r["calls"]]
                    for r in report.get("suspense_accounts", [])[:50]
                ],
            ),
            _section(
                "Stale entitlements",
                "No login for a long time: the cost center may be outdated.",
                ["Account", "Customer", "Last login", "Calls"],
                [
                    [r["account_id"], r["customer_id"], r["last_login"], r["calls"]]
                    for r in report.get("stale_entitlements", [])[:50]
                ],
            ),
        ]
    )


def month_report(
    billing_month: str,
    batch: dict[str, Any],
    counts: dict[str, int],
    loaded: pd.DataFrame,
    run_facts: dict[str, Any],
    frames: dict[str, pd.DataFrame],
    previous_lines: pd.DataFrame | None,
) -> dict[str, Any]:
    """The month report as plain data, in the order it reads: the batch's lines and totals,
    the run's files and facts (`run_facts`: files, data_docs, delivery_failed_billed, credits,
    held_files, changed_files, price_differences, stale_entitlements, entitlement_snapshot) and
    its rows (`frames`: exceptions, revenue_share, unbillable, suspense)."""
    month = build_report(billing_month, batch, counts, loaded, frames["exceptions"])
    month["customer_totals"] = customer_totals(loaded)
    month["revenue_share"] = revenue_share_report(frames["revenue_share"])
    month["files"] = run_facts["files"]
    month["data_docs"] = run_facts["data_docs"]
    month["unbillable_ranges"] = unbillable_ranges(frames["unbillable"])
    for fact in ("delivery_failed_billed", "credits", "held_files", "changed_files"):
        month[fact] = run_facts[fact]
    month["price_differences"] = run_facts["price_differences"]
    month["suspense_accounts"] = suspense_accounts(frames["suspense"])
    month["stale_entitlements"] = run_facts["stale_entitlements"]
    month["entitlement_snapshot"] = run_facts["entitlement_snapshot"]
    month["changes"] = None if previous_lines is None else diff_lines(previous_lines, loaded)
    return month
