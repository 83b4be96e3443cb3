"""bill_cdr_file: one file's calls priced, attributed and summed per user (mapped, one task per
file)."""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from cdr_billing import (
    aggregate,
    attribute,
    database,
    dedupe,
    entitlements,
    lineage,
    rate,
    statements,
    storage,
    tariff,
    workdir,
)
from cdr_billing.canonical import COMPLETION_DELIVERY_FAILED
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import BilledFile, ReconciledFile, References, Run
from cdr_billing.months import BillingMonth
from cdr_billing.prepaid import calls as prepaid_calls

log = logging.getLogger(__name__)

STALE_ACCOUNT_COLUMNS = ["account_id", "customer_id", "last_login", "calls"]
# What the file's billed calls are used for here: the load's lineage, the per-user sums (their
# keys are the lineage's), the revenue share and the flag of delivery-failed calls.
BILLED_CALL_COLUMNS = [
    *lineage.ATTRIBUTED_COLUMNS,
    *(c for c in aggregate.REVENUE_SHARE_COLUMNS if c not in lineage.ATTRIBUTED_COLUMNS),
]


def bill_cdr_file(
    run: Run, file: ReconciledFile, references: References, config: PipelineConfig | None = None
) -> BilledFile:
    """Bill one file's calls: price them, set the prepaid accounts' calls aside (their balances
    are debited instead), attribute the others to the entitlement snapshot valid at each call
    (suspense set aside) and sum them per user."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    rated, counts = rate_file(run, file, engine, config)
    with_statements = bool(config.statements.customers)
    priced, prepaid, prepaid_calls = _set_prepaid_aside(run, file, rated, engine, with_statements)
    del rated
    snapshot_id = references.entitlement_snapshot
    history = entitlements.history(engine, snapshot_id)
    attributed, suspense, user_codes, history_rows = attribute.attribute_calls(
        priced,
        history,
        snapshot_id,
        BILLED_CALL_COLUMNS + (statements.CALL_DETAIL_COLUMNS if with_statements else []),
    )
    del priced  # with the rows rate_file dropped: the file's peak memory is one copy of its calls
    statement_part = (
        _statement_calls(attributed, prepaid_calls, history, snapshot_id, config)
        if with_statements
        else pd.DataFrame(columns=statements.PART_COLUMNS)
    )
    for name, frame in (
        (statements.STATEMENT_PART, statement_part),
        # the columns the load's lineage reads, not the pricing's working columns
        ("attributed", attributed[lineage.ATTRIBUTED_COLUMNS]),
        ("suspense", suspense),
        ("user_lines", aggregate.aggregate_users(attributed, user_codes)),
        ("revenue_share_sums", aggregate.revenue_share_sums(attributed)),
        ("call_totals", aggregate.call_totals(attributed)),
        ("stale_accounts", _stale_accounts(run, history, history_rows, config)),
    ):
        workdir.write_part(run, file.dir, name, frame)
    log.info(
        "%s: snapshot %d: attributed %d calls, %d in suspense, %d prepaid",
        file.name,
        snapshot_id,
        len(attributed),
        len(suspense),
        prepaid,
    )
    return BilledFile(
        sha256=file.sha256,
        delivery_failed_billed=int(
            (attributed["completion_status"] == COMPLETION_DELIVERY_FAILED).sum()
        ),
        billed=len(attributed),
        suspense=len(suspense),
        prepaid=prepaid,
        **counts._asdict(),
    )


class PostpaidCalls(NamedTuple):
    priced: pd.DataFrame  # the priced calls billed on the post-paid lines
    prepaid: int  # the calls set aside for the prepaid balances
    prepaid_priced: pd.DataFrame | None  # those calls as priced, when statements need them


def _set_prepaid_aside(
    run: Run, file: ReconciledFile, priced: pd.DataFrame, engine: Engine, keep: bool
) -> PostpaidCalls:
    """Write the active prepaid accounts' calls as the file's part "prepaid" (the ledger's call
    shape, settled by settle_prepaid) and return the others (and, if `keep`, the prepaid calls
    as priced, for their statements); every file writes the part, empty when no account is
    prepaid (then the priced calls pass through untouched)."""
    with engine.connect() as conn:
        accounts = prepaid_calls.active_accounts(conn)
    split = prepaid_calls.split_prepaid(priced, accounts)
    workdir.write_part(run, file.dir, prepaid_calls.PREPAID_PART, split.prepaid)
    kept = priced[prepaid_calls.prepaid_mask(priced, accounts)] if keep else None
    return PostpaidCalls(split.postpaid, len(split.prepaid), kept)


def _statement_calls(
    attributed: pd.DataFrame,
    prepaid_priced: pd.DataFrame,
    history: pd.DataFrame,
    snapshot_id: int,
    config: PipelineConfig,
) -> pd.DataFrame:
    """The file's calls of the customers that opt in to statements, numbers masked: post-paid
    as attributed, prepaid with their account's customer in the month's snapshot."""
    settings = config.statements
    prepaid = statements.with_account_customers(prepaid_priced, history, snapshot_id)
    return pd.concat(
        [
            statements.statement_calls(attributed, settings, prepaid=False),
            statements.statement_calls(prepaid, settings, prepaid=True),
        ],
        ignore_index=True,
    )


class RatedCounts(NamedTuple):
    price_differences: int
    unbillable: int
    not_billable: int


class RatedFile(NamedTuple):
    priced: pd.DataFrame
    counts: RatedCounts


def rate_file(run: Run, file: ReconciledFile, engine: Engine, config: PipelineConfig) -> RatedFile:
    """Price one file's calls (provider's cost or the tariff's longest prefix); write its
    unbillable calls, price differences and duplicates (in the file, then of earlier files)."""
    calls = dedupe.file_calls(
        storage.read_table(workdir.part_file(run, file.dir, "accepted")),
        storage.read_table(workdir.part_file(run, file.dir, "session_calls")),
        workdir.read_part(run, file.dir, "set_aside"),
    )
    in_file = workdir.read_part(run, file.dir, "duplicates_in_file")
    duplicates = pd.concat([in_file, calls.duplicates], ignore_index=True)
    workdir.write_part(run, file.dir, "duplicates", duplicates)
    rates = tariff.all_rates(engine)
    priced, unbillable, failed = rate.rate_calls(
        calls.rows, rates, config.billing, config.markups(), calls.is_call
    )
    del calls
    price_differences = rate.compare_with_tariff(priced, rates, config.billing)
    workdir.write_part(run, file.dir, "unbillable", unbillable)
    workdir.write_part(run, file.dir, "price_differences", price_differences)
    log.info(
        "%s: priced %d calls, %d unbillable, %d failed (not billable)",
        file.name,
        len(priced),
        len(unbillable),
        len(failed),
    )
    return RatedFile(priced, RatedCounts(len(price_differences), len(unbillable), len(failed)))


def _stale_accounts(
    run: Run, history: pd.DataFrame, history_rows: np.ndarray, config: PipelineConfig
) -> pd.DataFrame:
    """The file's billed accounts whose last login is older than the month's end less the
    entitlement source's stale_after_days."""
    month_end = BillingMonth.parse(run.billing_month).bounds(config.billing.timezone)[1]
    stale_after = pd.Timedelta(days=config.entitlement_source.stale_after_days)
    stale = attribute.stale_accounts(history, history_rows, pd.Timestamp(month_end) - stale_after)
    return pd.DataFrame(stale, columns=STALE_ACCOUNT_COLUMNS)
