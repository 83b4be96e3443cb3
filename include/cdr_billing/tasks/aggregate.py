"""aggregate_lines: the files' per-user sums into the month's billing lines, proven."""

from __future__ import annotations

import dataclasses
import logging

from cdr_billing import aggregate, attribute, report, workdir
from cdr_billing.contracts import BilledFile, DedupedMonth, MonthLines, References, RowCounts
from cdr_billing.tasks.bill import STALE_ACCOUNT_COLUMNS

log = logging.getLogger(__name__)


def aggregate_lines(
    deduped: DedupedMonth, billed: list[BilledFile], references: References
) -> MonthLines:
    """Sum the files' user lines per user, then into billing lines; prove that the lines add up
    to the billed calls and that every row read has one outcome."""
    run, dirs = deduped.run, [f.dir for f in deduped.files]
    stale = attribute.merge_stale_accounts(workdir.read_parts(run, dirs, "stale_accounts"))
    workdir.write(run, "stale_accounts", stale[STALE_ACCOUNT_COLUMNS])
    counts = RowCounts(
        read=deduped.read,
        quarantined=deduped.quarantined,
        duplicates=deduped.duplicates,
        combined=deduped.combined,
        **{key: sum(getattr(b, key) for b in billed) for key in _BILLED_COUNTS},
    )
    user_lines = aggregate.merge_user_lines(workdir.read_parts(run, dirs, "user_lines"))
    lines = aggregate.aggregate_lines(user_lines)
    call_totals = workdir.read_parts(run, dirs, "call_totals")
    report.check_totals(lines, call_totals)
    report.reconcile(dataclasses.asdict(counts))
    shares = aggregate.revenue_share(workdir.read_parts(run, dirs, "revenue_share_sums"))
    workdir.write(run, "user_lines", user_lines)
    workdir.write(run, "lines", lines)
    workdir.write(run, "revenue_share", shares)
    log.info(
        "%d billing lines from %d user lines; revenue share of %d providers; %d stale accounts",
        len(lines),
        len(user_lines),
        shares["service_provider"].nunique(),
        len(stale),
    )
    return MonthLines(
        month=deduped,
        references=references,
        counts=counts,
        delivery_failed_billed=sum(b.delivery_failed_billed for b in billed),
        price_differences=sum(b.price_differences for b in billed),
        credits=tuple(report.credits(call_totals)),
    )


# summed over the files
_BILLED_COUNTS = ("billed", "suspense", "unbillable", "not_billable", "prepaid")
