"""load_billing: the month's new current batch in the billing database, in one transaction."""

from __future__ import annotations

import dataclasses
import logging

from cdr_billing import database, lineage, load, not_billed, workdir
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import LoadedBatch, MonthLines

log = logging.getLogger(__name__)


def load_billing(lines: MonthLines, config: PipelineConfig | None = None) -> LoadedBatch:
    """Load the lines, the billed calls and the rows not billed as the month's new current
    batch; a retry of a load that committed returns the batch it loaded."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    run, files = lines.run, lines.month.files
    batch = load.Batch(
        lines=workdir.read(run, "lines"),
        user_lines=workdir.read(run, "user_lines"),
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
