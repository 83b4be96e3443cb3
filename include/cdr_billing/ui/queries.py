"""What the Billing page shows: months, batches, totals and non-billed calls from the billing
database, and the files a run's report points at (only when they lie under the work root).

Money is summed as integer minor units and turned into exact Decimals here. Non-billed calls
are shown by number range (unbillable) or account id (suspense), never by phone number.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cdr_billing import ledger
from cdr_billing.config import PipelineConfig
from cdr_billing.money import from_minor_units
from cdr_billing.report import OUTCOME_LABELS, OUTCOMES, ReconciliationError, reconcile
from cdr_billing.schema import CURRENT, billing_batch, billing_line, not_billed_group, statement

# The non-billed calls the month page groups: by number range (unbillable), by account (suspense)
NOT_BILLED_KINDS = ("unbillable", "suspense")
# The month page shows the largest customers of each currency and the largest non-billed groups
# (the Lines and groups pages list every one, paged), so that it stays one quick page at any size.
MONTH_PAGE_TOP = 20


@dataclass(frozen=True)
class Batch:
    """One run's load of a month, with its row counts."""

    batch_id: int
    billing_month: str
    run_id: str
    status: str
    loaded_at: datetime
    counts: dict[str, int]

    @property
    def balanced(self) -> bool:
        """Whether every row read has exactly one outcome (an outcome a batch of an older
        release did not record, such as prepaid, counts 0)."""
        if "read" not in self.counts:
            return False
        try:
            reconcile({"read": self.count("read"), **dict(self.outcomes())})
        except ReconciliationError:
            return False
        return True

    def count(self, name: str) -> int:
        """One row count (0 when the batch did not record it)."""
        return int(self.counts.get(name, 0))

    def outcomes(self) -> list[tuple[str, int]]:
        """The count of each outcome of the rows read, in the reconciliation's order."""
        return [(name, self.count(name)) for name in OUTCOMES]

    def labelled_outcomes(self) -> list[tuple[str, int]]:
        """outcomes() with each outcome said in words (e.g. "prepaid (debited to balances)")."""
        return [(OUTCOME_LABELS[name], count) for name, count in self.outcomes()]


@dataclass(frozen=True)
class MonthSummary:
    """A month in the list: its newest batch, its current batch and the current lines' totals."""

    billing_month: str
    newest: Batch
    current: Batch | None
    batch_count: int
    line_count: int
    totals: dict[str, Decimal]  # per currency


@dataclass(frozen=True)
class CustomerTotal:
    """A customer's lines of the batch in one currency, summed over its sequence numbers."""

    customer_id: str
    currency: str
    total: Decimal
    total_minor: int
    lines: int
    calls: int


@dataclass(frozen=True)
class NotBilled:
    """Non-billed calls of one number range (unbillable) or account (suspense) and reason."""

    key: str
    reason_code: str
    calls: int


class CurrencyTotal(NamedTuple):
    """A batch's lines in one currency: how many customers, lines and calls, and their total."""

    currency: str
    customers: int
    lines: int
    calls: int
    total_minor: int

    @property
    def total(self) -> Decimal:
        return from_minor_units(self.total_minor, self.currency)


@dataclass(frozen=True)
class MonthFiles:
    """The current batch's report files; None when missing or outside the work root."""

    data_docs: Path | None = None
    billing_csv: Path | None = None
    billing_xlsx: Path | None = None


@dataclass(frozen=True)
class MonthDetail:
    """Everything the month page shows."""

    billing_month: str
    batches: list[Batch]  # newest first
    current: Batch | None
    customers: list[CustomerTotal]  # the MONTH_PAGE_TOP largest of each currency
    currency_totals: list[CurrencyTotal]  # all customers
    unbillable: list[NotBilled]  # the MONTH_PAGE_TOP largest groups
    suspense: list[NotBilled]
    group_counts: dict[str, int]  # all groups, per kind
    files: MonthFiles
    # delivered again with other content, not billed until released
    held_files: list[dict[str, str]]
    statement_count: int = 0  # the current batch's statements (customers who opted in)


def _batches(engine: Engine, *conditions) -> list[Batch]:
    query = select(billing_batch).where(*conditions).order_by(billing_batch.c.batch_id.desc())
    with engine.connect() as conn:
        return [
            Batch(
                row.batch_id,
                row.billing_month,
                row.run_id,
                row.status,
                row.loaded_at,
                json.loads(row.counts),
            )
            for row in conn.execute(query)
        ]


class LineTotal(NamedTuple):
    """A current batch's billing lines in one currency: how many, and their total."""

    lines: int
    total_minor: int


def _current_line_totals(engine: Engine) -> dict[int, dict[str, LineTotal]]:
    """Per current batch and currency: the number of lines and their total in minor units."""
    query = (
        select(
            billing_line.c.batch_id,
            billing_line.c.currency,
            func.count(),
            func.sum(billing_line.c.total_minor),
        )
        .join(billing_batch, billing_batch.c.batch_id == billing_line.c.batch_id)
        .where(billing_batch.c.status == CURRENT)
        .group_by(billing_line.c.batch_id, billing_line.c.currency)
    )
    totals: dict[int, dict[str, LineTotal]] = defaultdict(dict)
    with engine.connect() as conn:
        for batch_id, currency, lines, total_minor in conn.execute(query):
            totals[batch_id][currency] = LineTotal(int(lines), int(total_minor))
    return totals


def _current(batches: list[Batch]) -> Batch | None:
    return next((batch for batch in batches if batch.status == CURRENT), None)


def month_summaries(engine: Engine) -> list[MonthSummary]:
    """Every billed month, newest month first."""
    by_month: dict[str, list[Batch]] = defaultdict(list)
    for batch in _batches(engine):
        by_month[batch.billing_month].append(batch)
    line_totals = _current_line_totals(engine)
    summaries = []
    for month in sorted(by_month, reverse=True):
        batches = by_month[month]
        current = _current(batches)
        totals = line_totals.get(current.batch_id, {}) if current else {}
        summaries.append(
            MonthSummary(
                billing_month=month,
                newest=batches[0],
                current=current,
                batch_count=len(batches),
                line_count=sum(total.lines for total in totals.values()),
                totals={
                    currency: from_minor_units(total.total_minor, currency)
                    for currency, total in sorted(totals.items())
                },
            )
        )
    return summaries


def customer_totals(engine: Engine, batch_id: int, top: int) -> list[CustomerTotal]:
    """The batch's `top` largest customers of each currency (their lines summed), largest first:
    ranked by the database, so a month of thousands of customers hands over a few dozen."""
    line = billing_line.c
    sums = (
        select(
            line.customer_id,
            line.currency,
            func.count().label("lines"),
            func.sum(line.total_minor).label("total"),
            func.sum(line.call_count).label("calls"),
        )
        .where(line.batch_id == batch_id)
        .group_by(line.customer_id, line.currency)
        .subquery()
    )
    rank = func.row_number().over(
        partition_by=sums.c.currency, order_by=(sums.c.total.desc(), sums.c.customer_id)
    )
    ranked = select(sums, rank.label("rank")).subquery()
    query = select(ranked).where(ranked.c.rank <= top).order_by(ranked.c.currency, ranked.c.rank)
    with engine.connect() as conn:
        return [
            CustomerTotal(
                row.customer_id,
                row.currency,
                from_minor_units(int(row.total), row.currency),
                int(row.total),
                int(row.lines),
                int(row.calls),
            )
            for row in conn.execute(query)
        ]


def currency_totals(engine: Engine, batch_id: int) -> list[CurrencyTotal]:
    """The batch's lines summed per currency: customers, lines, calls, total."""
    line = billing_line.c
    query = (
        select(
            line.currency,
            func.count(func.distinct(line.customer_id)),
            func.count(),
            func.sum(line.call_count),
            func.sum(line.total_minor),
        )
        .where(line.batch_id == batch_id)
        .group_by(line.currency)
        .order_by(line.currency)
    )
    with engine.connect() as conn:
        return [
            CurrencyTotal(row[0], *(int(value) for value in row[1:])) for row in conn.execute(query)
        ]


def not_billed(engine: Engine, batch_id: int, top: int | None = None) -> dict[str, list[NotBilled]]:
    """The batch's unbillable calls per number range and its suspense calls per account (the
    `top` largest of each, or all), most calls first, from the sums the load stores
    (not_billed_group: one row per group, not per call)."""
    group = not_billed_group.c
    rank = func.row_number().over(
        partition_by=group.kind, order_by=(group.calls.desc(), group.group_key, group.reason_code)
    )
    ranked = (
        select(group.kind, group.group_key, group.reason_code, group.calls, rank.label("rank"))
        .where(group.batch_id == batch_id, group.kind.in_(NOT_BILLED_KINDS))
        .subquery()
    )
    query = select(ranked).where(ranked.c.rank <= top) if top is not None else select(ranked)
    found: dict[str, list[NotBilled]] = {kind: [] for kind in NOT_BILLED_KINDS}
    with engine.connect() as conn:
        for row in conn.execute(query):
            found[row.kind].append(NotBilled(row.group_key, row.reason_code, int(row.calls)))
    # ordered here: the database's collation may order keys otherwise
    return {
        kind: sorted(items, key=lambda item: (-item.calls, item.key, item.reason_code))
        for kind, items in found.items()
    }


def not_billed_counts(engine: Engine, batch_id: int) -> dict[str, int]:
    """How many number ranges (unbillable) and accounts (suspense) the batch has calls of."""
    group = not_billed_group.c
    query = (
        select(group.kind, func.count())
        .where(group.batch_id == batch_id, group.kind.in_(NOT_BILLED_KINDS))
        .group_by(group.kind)
    )
    with engine.connect() as conn:
        counted = {kind: int(count) for kind, count in conn.execute(query)}
    return {kind: counted.get(kind, 0) for kind in NOT_BILLED_KINDS}


def inside(root: Path, path: str | Path | None) -> Path | None:
    """The file at path, resolved, if it exists and lies under root (symbolic links followed);
    else None."""
    if not path:
        return None
    resolved = Path(path).resolve()
    return resolved if resolved.is_relative_to(root.resolve()) and resolved.is_file() else None


def local_work_root(config: PipelineConfig) -> Path | None:
    """The work root when it is a local folder; None for object storage (its files are not
    served)."""
    return None if "://" in config.work_root else Path(config.work_root)


def _report(config: PipelineConfig, root: Path, batch: Batch) -> dict:
    """The month report the batch's run wrote, or {} when there is none."""
    from cdr_billing.workdir import run_work_dir

    path = inside(root, run_work_dir(config, batch.billing_month, batch.run_id) / "report.json")
    if path is None:
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def month_files(config: PipelineConfig, batch: Batch) -> MonthFiles:
    """The Data Docs and billing file of the batch's report, if they lie under a local work root."""
    root = local_work_root(config)
    if root is None:
        return MonthFiles()
    report = _report(config, root, batch)
    billing_file = report.get("billing_file") or {}
    return MonthFiles(
        data_docs=inside(root, report.get("data_docs")),
        billing_csv=inside(root, billing_file.get("csv")),
        billing_xlsx=inside(root, billing_file.get("xlsx")),
    )


def current_files(engine: Engine, config: PipelineConfig, billing_month: str) -> MonthFiles | None:
    """The report files of the month's current batch, or None when the month has none."""
    current = _batches(
        engine, billing_batch.c.billing_month == billing_month, billing_batch.c.status == CURRENT
    )
    return month_files(config, current[0]) if current else None


def statement_count(engine: Engine, batch_id: int) -> int:
    """How many statements a batch holds, for the month page's link to them."""
    query = select(func.count()).select_from(statement).where(statement.c.batch_id == batch_id)
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def month_detail(engine: Engine, config: PipelineConfig, billing_month: str) -> MonthDetail | None:
    """The month page's data, or None when the month has no batch."""
    batches = _batches(engine, billing_batch.c.billing_month == billing_month)
    if not batches:
        return None
    current = _current(batches)
    batch_id = current.batch_id if current else None
    no_groups = {kind: [] for kind in NOT_BILLED_KINDS}
    grouped = not_billed(engine, batch_id, MONTH_PAGE_TOP) if current else no_groups
    return MonthDetail(
        billing_month=billing_month,
        batches=batches,
        current=current,
        customers=customer_totals(engine, batch_id, MONTH_PAGE_TOP) if current else [],
        currency_totals=currency_totals(engine, batch_id) if current else [],
        unbillable=grouped["unbillable"],
        suspense=grouped["suspense"],
        group_counts=not_billed_counts(engine, batch_id)
        if current
        else dict.fromkeys(no_groups, 0),
        files=month_files(config, current) if current else MonthFiles(),
        held_files=ledger.held_files(engine, billing_month),
        statement_count=statement_count(engine, batch_id) if current else 0,
    )
