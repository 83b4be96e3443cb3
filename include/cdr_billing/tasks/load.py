"""load_billing: the month's new current batch in the billing database, in one transaction."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy.engine import Engine

from cdr_billing import database, lineage, load, not_billed, statements, workdir
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import LoadedBatch, MonthLines
from cdr_billing.months import BillingMonth

log = logging.getLogger(__name__)


def load_billing(lines: MonthLines, config: PipelineConfig | None = None) -> LoadedBatch:
    """Load the lines, the billed calls and the rows not billed as the month's new current
    batch; a retry of a load that committed returns the batch it loaded."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    run, files = lines.run, lines.month.files
    user_lines = workdir.read(run, "user_lines")
    batch = load.Batch(
        lines=workdir.read(run, "lines"),
        user_lines=user_lines,
        revenue_share=workdir.read(run, "revenue_share"),
        billed_calls=(
            lineage.billed_calls(
                workdir.read_part(run, f.dir, "attributed"),
                workdir.read_part(run, f.dir, "combined"),
            )
            for f in files
        ),
        exceptions=not_billed.rows_not_billed(
            lambda name: workdir.read_parts(run, [f.dir for f in files], name),
            skip_kinds=("quarantined",),  # those are in quarantined_row already
        ),
        statements=month_statements(engine, lines, user_lines, config),
    )
    counts = dataclasses.asdict(lines.counts)
    result = load.load_month(engine, run.billing_month, run.run_id, batch, counts)
    log.info(
        "batch %s is current for %s (superseded %s, already loaded: %s)",
        result.batch_id,
        run.billing_month,
        result.superseded_batch_id,
        result.already_loaded,
    )
    return LoadedBatch(lines, result.batch_id, result.superseded_batch_id)


def month_statements(
    engine: Engine, lines: MonthLines, user_lines: pd.DataFrame, config: PipelineConfig
) -> statements.StatementFrames | None:
    """The statements of the customers that opt in, from the files' statement_calls parts,
    proved against the user lines (StatementMismatch: nothing is loaded); None when no customer
    opts in."""
    settings = config.statements
    if not settings.customers:
        return None
    run = lines.run
    calls = workdir.read_parts(run, [f.dir for f in lines.month.files], statements.STATEMENT_PART)
    start, end = BillingMonth.parse(run.billing_month).bounds(config.billing.timezone)
    with engine.connect() as conn:
        inputs = statements.StatementInputs(
            run_id=run.run_id,
            calls=calls,
            user_lines=user_lines,
            destinations=statements.tariff_destinations(conn, calls),
            addresses=statements.month_addresses(conn, run.billing_month),
            prepaid=statements.prepaid_periods(conn, sorted(set(calls["user_id"])), start, end),
            timezone=config.billing.timezone,
            now=datetime.now(UTC),
        )
    frames = statements.build_statements(inputs, settings)
    log.info(
        "%d statements of %d calls for %s (%d mails to send)",
        len(frames.statements),
        len(frames.calls),
        run.billing_month,
        len(frames.deliveries),
    )
    return frames
