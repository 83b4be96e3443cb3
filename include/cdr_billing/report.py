"""The month report: reconciliation of every input row, and the billing lines."""

from __future__ import annotations

from html import escape
from typing import Any

import pandas as pd

from cdr_billing.money import from_minor_units

# read = billed + quarantined + duplicates + not_billable + unbillable + suspense + combined
OUTCOMES = ("billed", "quarantined", "duplicates", "not_billable", "unbillable", "suspense", "combined")


class ReconciliationError(AssertionError):
    """Rows or money do not add up; the month must not be billed as is."""


def reconcile(counts: dict[str, int]) -> None:
    """Check that every row read has exactly one outcome."""
    accounted = sum(counts[outcome] for outcome in OUTCOMES)
    if accounted != counts["read"]:
        detail = ", ".join(f"{o}={counts[o]}" for o in OUTCOMES)
        raise ReconciliationError(f"rows read {counts['read']} != rows accounted {accounted} ({detail})")


def reconcile_file(stats: dict[str, int | str]) -> None:
    """Check one file: rows read = billable + quarantined + duplicate."""
    accounted = stats["billable"] + stats["quarantined"] + stats["duplicate"]
    if accounted != stats["read"]:
        raise ReconciliationError(f"{stats['name']}: rows read {stats['read']} != billable + quarantined + duplicate {accounted}")


def check_totals(lines: pd.DataFrame, billed_calls: pd.DataFrame) -> None:
    """Check that the lines sum to the billed calls' costs, per currency, to the cent."""
    by_lines = lines.groupby("currency")["total_minor"].sum().to_dict()
    by_calls = billed_calls.groupby("currency")["cost_minor"].sum().to_dict()
    if by_lines != by_calls:
        raise ReconciliationError(f"line totals {by_lines} != call totals {by_calls} (minor units)")


def build_report(
    billing_month: str, batch: dict[str, Any], counts: dict[str, int], lines: pd.DataFrame, exceptions: pd.DataFrame
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
            exceptions.groupby(["kind", "reason_code"]).size().rename("rows").reset_index().to_dict("records")
            if len(exceptions)
            else []
        ),
    }


LINE_KEY = ["customer_id", "sequence_number", "currency"]


def diff_lines(previous: pd.DataFrame, current: pd.DataFrame) -> list[dict[str, Any]]:
    """Lines whose total differs from the superseded batch (new and dropped lines included)."""
    both = previous.merge(current, on=LINE_KEY, how="outer", suffixes=("_before", "_after"))
    before, after = both["total_minor_before"].fillna(0).astype("int64"), both["total_minor_after"].fillna(0).astype("int64")
    changed = both[(before != after) | both["total_minor_before"].isna() | both["total_minor_after"].isna()]
    return [
        {
            "customer_id": row.customer_id,
            "sequence_number": row.sequence_number,
            "currency": row.currency,
            "before": str(from_minor_units(before[i], row.currency)) if pd.notna(row.total_minor_before) else "",
            "after": str(from_minor_units(after[i], row.currency)) if pd.notna(row.total_minor_after) else "",
            "change": str(from_minor_units(after[i] - before[i], row.currency)),
        }
        for i, row in changed.sort_values(LINE_KEY).iterrows()
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
        {"number_range": r.number_range, "reason_code": r.reason_code, "calls": int(r.calls), "minutes": round(r.seconds / 60, 1)}
        for r in ranges.itertuples()
    ]


def suspense_accounts(suspense: pd.DataFrame) -> list[dict[str, Any]]:
    """Accounts whose calls are in suspense, with the reason and the number of calls."""
    if suspense.empty:
        return []
    grouped = suspense.groupby(["user_id", "reason_code"]).size().rename("calls").reset_index()
    ordered = grouped.sort_values(["calls", "user_id"], ascending=[False, True])
    return [{"account_id": r.user_id, "reason_code": r.reason_code, "calls": int(r.calls)} for r in ordered.itertuples()]


def render_text(report: dict[str, Any]) -> str:
    """Render the report as a fixed-width text table for logs and terminals."""
    out = [f"Billing month {report['billing_month']}  (batch {report['batch']['batch_id']})", ""]
    out.append(f"{'customer':<12}{'sequence':<10}{'cur':<5}{'total':>14}{'calls':>8}{'minutes':>10}")
    for line in report["lines"]:
        out.append(
            f"{line['customer_id']:<12}{line['sequence_number']:<10}{line['currency']:<5}"
            f"{line['total']:>14}{line['call_count']:>8}{line['billed_seconds'] / 60:>10.1f}"
        )
    counts = report["counts"]
    out += ["", "Rows: " + ", ".join(f"{key}={counts[key]}" for key in ("read", *OUTCOMES))]
    for item in report["exceptions"]:
        out.append(f"  {item['kind']:<12} {item['reason_code']:<24} {item['rows']}")
    if report.get("changes") is not None:
        out += ["", f"Changes from the superseded batch {report['batch']['superseded_batch_id']}: {len(report['changes'])} lines"]
        for item in report["changes"]:
            before_after = f"{item['before']:>12} -> {item['after']:>12} ({item['change']})"
            out.append(f"  {item['customer_id']:<12}{item['sequence_number']:<10}{before_after}")
    if report.get("suspense_accounts"):
        out += ["", "Accounts in suspense (fix the entitlement, then re-run with refresh_entitlements):"]
        for item in report["suspense_accounts"][:20]:
            out.append(f"  {item['account_id']:<24} {item['reason_code']:<24} {item['calls']:>6} calls")
    if report.get("stale_entitlements"):
        out.append(
            f"\nStale entitlements (no login for a long time, cost center may be outdated): {len(report['stale_entitlements'])}"
        )
    if report.get("unbillable_ranges"):
        out += ["", "Unbillable number ranges (add them to the tariff, then re-run the month):"]
        for item in report["unbillable_ranges"]:
            out.append(
                f"  {item['number_range']:<12} {item['reason_code']:<24} {item['calls']:>6} calls {item['minutes']:>9} min"
            )
    return "\n".join(out)


def render_html(report: dict[str, Any]) -> str:
    """The month report as an HTML mail for finance: lines, counts and what needs attention."""
    rows = "".join(
        f"<tr><td>{escape(line['customer_id'])}</td><td>{escape(line['sequence_number'])}</td><td>{line['currency']}</td>"
        f"<td align=right>{line['total']}</td><td align=right>{line['call_count']}</td></tr>"
        for line in report["lines"]
    )
    counts = ", ".join(f"{key} {report['counts'][key]}" for key in ("read", *OUTCOMES))
    changes = report.get("changes")
    if changes is None:
        change_text = "<p>First batch of the month.</p>"
    else:
        change_text = f"<p>{len(changes)} lines changed from the superseded batch.</p>"
    return (
        f"<h2>Billing month {report['billing_month']} (batch {report['batch']['batch_id']})</h2>"
        f"<table border=1 cellpadding=4><tr><th>Customer</th><th>Sequence</th><th>Currency</th><th>Total</th><th>Calls</th></tr>"
        f"{rows}</table><p>Rows: {counts}.</p>{change_text}"
        f"<p>Unbillable number ranges: {len(report.get('unbillable_ranges', []))}; accounts in suspense: "
        f"{len(report.get('suspense_accounts', []))}; stale entitlements: {len(report.get('stale_entitlements', []))}.</p>"
    )
