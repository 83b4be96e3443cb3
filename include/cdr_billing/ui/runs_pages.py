"""The months tried page: every month of the billing DAG's range with what its latest run did
(billed, failed and why, running, waiting for files, queued, never run), its runs linked to
their pages in the Airflow UI, its held files, and links to its validation results and
billing file.

Run links open in the Airflow UI (not in the frame): they are marked `data-ui-href` for
pages.PAGE_SCRIPT.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from cdr_billing.config import BILLING_DAG_ID
from cdr_billing.run_attempts import airflow_run_id
from cdr_billing.ui import pages
from cdr_billing.ui.pages import e
from cdr_billing.ui.runs_queries import (
    BILLED,
    MISSING,
    QUEUED,
    RUNNING,
    WAITING,
    MonthTried,
    RunTried,
)

STYLE = """
.failed { background: var(--alarm-bg); color: var(--alarm-fg); }
.billed { background: var(--good-bg); color: var(--good-fg); }
.running, .waiting, .queued { background: var(--notice-bg); color: var(--fg); }
.missing { background: var(--plain-bg); color: var(--plain-fg); }
.why { white-space: normal; min-width: 18em; max-width: 40em; }
.run { white-space: nowrap; }
"""
STATE_WORDS = {
    "success": "succeeded",
    "failed": "failed",
    RUNNING: "running",
    WAITING: "waiting for files",
    QUEUED: "queued",
}


def run_ui_href(run_id: str, prefix: str) -> str:
    """The relative link from a Billing page to a run's page in the Airflow UI; `prefix` leads
    from the page's folder to /billing/, whose parent is the UI's root."""
    return f"{prefix}../dags/{BILLING_DAG_ID}/runs/{quote(run_id, safe='')}"


def run_link(run_id: str, prefix: str, label: str | None = None) -> str:
    """A link that opens the run's page in the Airflow UI (not in the frame)."""
    return (
        f'<a href="{e(run_ui_href(run_id, prefix))}" data-ui-href>'
        f"<code>{e(label or run_id)}</code></a>"
    )


def validation_href(billing_month: str, run_id: str | None = None, prefix: str = "") -> str:
    """The relative link to a month's validation results (gx_results): of its current batch's
    run, or of `run_id`; `prefix` leads from the linking page's folder to /billing/ (e.g.
    "../" from month/<YYYY-MM>)."""
    query = f"?run={quote(run_id, safe='')}" if run_id else ""
    return f"{prefix}month/{billing_month}/validation{query}"


def status_badge(month: MonthTried) -> str:
    return f'<span class="badge {e(month.status)}">{e(month.status_words)}</span>'


def _since(run: RunTried | None) -> str:
    return pages.timestamp(run.started_at) if run and run.started_at else "not started"


def why(month: MonthTried) -> str:
    """What the month's latest run did, in a sentence or two (escaped HTML)."""
    run = month.latest
    if month.status == MISSING:
        return '<span class="empty">No run of this month has been recorded.</span>'
    if month.status == BILLED:
        if month.current is None:
            return "Succeeded, but the month has no current batch."
        return (
            f"Batch {e(month.current.batch_id)}, loaded "
            f"{e(pages.timestamp(month.current.loaded_at))}."
        )
    if month.status == WAITING:
        return (
            f"Waiting for the providers' files since {e(_since(run))}; the run fails if they "
            f"have not arrived by {e(pages.timestamp(month.deadline))}."
        )
    if month.status in (RUNNING, QUEUED):
        text = (
            "Running"
            if month.status == RUNNING
            else "Queued (for a free run slot, or the DAG is paused)"
        )
        return (
            f"{text} since {e(_since(run))}. Files deadline {e(pages.timestamp(month.deadline))}."
        )
    assert run is not None
    task = f"Task <b>{e(run.failed_task)}</b> failed: " if run.failed_task else ""
    hint = f"<br><i>What to do:</i> {e(run.hint)}" if run.hint else ""
    older = (
        f"<br>Batch {e(month.current.batch_id)} of an earlier run stays current."
        if month.current
        else ""
    )
    return f"{task}{e(run.error or 'no error recorded')}{hint}{older}"


def _runs_cell(month: MonthTried, prefix: str) -> str:
    """The month's latest runs; for a month loaded before runs were recorded, the run of its
    current batch."""
    if not month.runs and month.current:
        run_id = airflow_run_id(month.current.run_id)
        return f'<div class="run">{run_link(run_id, prefix)} loaded the batch</div>'
    return "".join(
        f'<div class="run">{run_link(run.run_id, prefix)} '
        f"{e(STATE_WORDS.get(run.state, run.state))}</div>"
        for run in month.runs[:5]
    ) + (f"<div>… {len(month.runs) - 5} earlier</div>" if len(month.runs) > 5 else "")


def _links_cell(month: MonthTried, prefix: str) -> str:
    links = []
    if month.current:
        links += [
            f'<a href="{prefix}month/{e(month.billing_month)}">Month page</a>',
            f'<a href="{prefix}month/{e(month.billing_month)}/files/billing-csv" download>CSV</a>',
            f'<a href="{prefix}month/{e(month.billing_month)}/files/billing-xlsx" download>'
            "Excel</a>",
        ]
    validated = month.current is not None or any(r.work_dir for r in month.runs)
    if validated:
        run_id = None if month.current and month.status == BILLED else _latest_with_dir(month)
        href = validation_href(month.billing_month, run_id, prefix)
        links.append(f'<a href="{e(href)}">Validation</a>')
    return " · ".join(links)


def _latest_with_dir(month: MonthTried) -> str | None:
    return next((run.run_id for run in month.runs if run.work_dir), None)


def _held_cell(month: MonthTried) -> str:
    return "<br>".join(e(f"{held['source']}/{held['name']}") for held in month.held_files)


def months_tried_table(months: list[MonthTried], prefix: str = "") -> str:
    """The months tried as a table (escaped HTML), for this page or the months list; `prefix`
    leads from the embedding page's folder to /billing/. The page needs script_tag(prefix) for
    its run links to open in the UI."""
    rows = [
        [
            e(month.billing_month),
            status_badge(month),
            f'<div class="why">{why(month)}</div>',
            _runs_cell(month, prefix),
            _held_cell(month),
            _links_cell(month, prefix),
        ]
        for month in months
    ]
    return pages.table(["Month", "Status", "What happened", "Runs", "Held files", ""], rows, set())


def months_tried_page(months: list[MonthTried], now: datetime) -> str:
    """Every month the DAG has tried, newest first."""
    failed = sum(month.status == "failed" for month in months)
    missing = sum(month.status == MISSING for month in months)
    intro = (
        pages.nav("", "Months tried")
        + "<h1>Months tried</h1><p class=meta>Every month of the billing DAG, from its first to "
        "the last complete one: what its latest run did, its runs (they open in the Airflow "
        f"UI) and its held files. {e(failed)} failed, {e(missing)} never run; as of "
        f"{e(pages.timestamp(now))}.</p>"
    )
    return pages.page(
        "Months tried",
        intro + f'<section class="runs">{months_tried_table(months)}</section>',
        style=STYLE,
    )


def attention(months: list[MonthTried], prefix: str = "") -> str:
    """A notice for the months list when a month is not billed (failed, waiting, running,
    queued, never run), each named, with a link to the months tried; "" when all are billed."""
    open_months = [month for month in months if month.status != BILLED]
    if not open_months:
        return ""
    named = ", ".join(f"{month.billing_month} {month.status_words}" for month in open_months[:6])
    more = f" and {len(open_months) - 6} more" if len(open_months) > 6 else ""
    return (
        f'<p class="notice">Not billed: {e(named)}{e(more)}. '
        f'<a href="{e(prefix)}runs">Months tried</a> says why and links their runs.</p>'
    )
