"""settle_prepaid: the month's prepaid calls settled against their balances' debits.

The prepaid runs (every few minutes) debit calls from the files as they arrive, rated with the
tariff of the moment. The monthly run rates the month's complete delivery, duplicates dropped
and partial calls combined, so its prepaid calls are the month's truth: settling them debits
what the prepaid runs missed (late files, newly billable number ranges), posts a reversal and a
new debit for each call whose cost changed (a tariff fix), and reverses the debits of calls no
longer prepaid calls of the month (now a duplicate, unbillable, or another account's). Every
entry carries a per-call, per-revision key, so a retry or a re-run with nothing changed posts
nothing (prepaid.balances.settle_calls).
"""

from __future__ import annotations

import dataclasses
import logging

import pandas as pd

from cdr_billing import database, report, workdir
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import LedgerPostings, MonthLines, PrepaidSettlement
from cdr_billing.months import BillingMonth
from cdr_billing.prepaid import balances
from cdr_billing.prepaid.calls import PREPAID_PART

log = logging.getLogger(__name__)

REFUSED_FILE = "prepaid_refused"  # the run's refused prepaid calls, which the report lists
REFUSED_COLUMNS = ["call_key", "account_id", "reason"]
LOGGED_REFUSALS = 20


def settle_prepaid(lines: MonthLines, config: PipelineConfig | None = None) -> PrepaidSettlement:
    """Settle every file's prepaid calls (part "prepaid") against the balances in one
    transaction, for the billing month's [start, end) in the billing timezone and every active
    prepaid account; write the refused calls for the report and log them (accounts masked)."""
    config = config or load_config()
    engine = database.billing_engine(config.billing.connection)
    run = lines.run
    calls = workdir.read_parts(run, [f.dir for f in lines.month.files], PREPAID_PART)
    start, end = BillingMonth.parse(run.billing_month).bounds(config.billing.timezone)
    with engine.begin() as conn:
        summary = balances.settle_calls(conn, calls, run.run_id, start, end, accounts=None)
    refused = pd.DataFrame(
        [dataclasses.astuple(call) for call in summary.refused_calls], columns=REFUSED_COLUMNS
    )
    workdir.write(run, REFUSED_FILE, refused)
    postings = postings_of(summary)
    _log_settlement(run.billing_month, len(calls), postings, refused)
    if summary.not_prepaid:
        log.warning(
            "%d calls were set aside as prepaid but their accounts are no longer active prepaid "
            "accounts (deactivated during the run): neither billed nor debited; re-run the month",
            summary.not_prepaid,
        )
    return PrepaidSettlement(lines, postings)


def postings_of(summary: balances.DebitSummary) -> LedgerPostings:
    """What a run posted (a prepaid run's or the month's settlement), as the contracts carry it."""
    return LedgerPostings(
        debited=summary.debited,
        rerated=summary.rerated,
        unchanged=summary.unchanged,
        redelivered=summary.redelivered,
        reversed=summary.reversed,
        refused=summary.refused,
        accounts=len(summary.balances),
    )


def _log_settlement(
    month: str, calls: int, postings: LedgerPostings, refused: pd.DataFrame
) -> None:
    log.info(
        "prepaid settlement of %s: %d prepaid calls; %d debited, %d re-rated (reversal and new "
        "debit), %d unchanged, %d debits reversed, %d refused; %d accounts",
        month,
        calls,
        postings.debited,
        postings.rerated,
        postings.unchanged,
        postings.reversed,
        postings.refused,
        postings.accounts,
    )
    for call in refused.head(LOGGED_REFUSALS).itertuples():
        log.warning(
            "prepaid call %s of account %s not debited: %s",
            call.call_key,
            report.masked_account(call.account_id),
            call.reason,
        )
    if len(refused) > LOGGED_REFUSALS:
        log.warning(
            "... and %d more refused calls (see the month report)", len(refused) - LOGGED_REFUSALS
        )
