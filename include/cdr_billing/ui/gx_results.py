"""A run's Great Expectations results as a Billing page: per CDR file, each expectation, whether
it held, the observed value, how many values (and what share) it refused and a few of them.

Rendered here from the result JSON the validate task keeps per file
(files/<sha>/gx_results/<file>.json in the run's work directory), not GX's Data Docs site:
that site loads its scripts from public CDNs (blank offline) and opens its links as popups,
which the UI's sandboxed frame blocks. Values that may be phone numbers are masked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdr_billing.privacy import mask_number, mask_phone_numbers
from cdr_billing.run_attempts import airflow_run_id
from cdr_billing.ui import pages, runs_pages
from cdr_billing.ui.pages import e

# Where the validate task keeps a file's result JSON, under the run's work directory.
RESULTS_GLOB = "files/*/gx_results/*.json"
PHONE_COLUMNS = frozenset({"destination_party", "originating_party"})
MAX_EXAMPLES = 5
MAX_VALUE = 40  # characters of a value shown
MAX_RESULT_BYTES = 20_000_000  # a result JSON larger than this is not read
HIDDEN_ARGUMENTS = frozenset({"batch_id", "column"})
STYLE = """
.gx td { white-space: normal; vertical-align: top; } .gx td.examples { max-width: 28em; }
.gx code { font-size: 12px; word-break: break-all; }
"""


@dataclass(frozen=True)
class ExpectationResult:
    """One expectation of a file's suite and what it found."""

    name: str  # in words, e.g. "column values to match regex"
    column: str
    arguments: str  # the other arguments, e.g. "regex=^\\+?[0-9]{4,17}$"
    success: bool
    observed: str
    unexpected_count: int | None
    unexpected_percent: float | None
    examples: tuple[str, ...]
    error: str


@dataclass(frozen=True)
class FileResults:
    """One CDR file's validation."""

    file_name: str
    success: bool
    expectations: list[ExpectationResult]

    @property
    def met(self) -> int:
        return sum(result.success for result in self.expectations)


def _shown(value: object, column: str = "") -> str:
    """A value as the page may show it: phone numbers masked, at most MAX_VALUE characters."""
    text = "null" if value is None else str(value)
    text = mask_number(text) if column in PHONE_COLUMNS else mask_phone_numbers(text)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _observed(result: dict[str, Any], column: str) -> str:
    if "observed_value" in result:
        value = result["observed_value"]
        if isinstance(value, list):
            return ", ".join(_shown(v, column) for v in value[:10]) + (
                ", …" if len(value) > 10 else ""
            )
        return _shown(value, column)
    if "element_count" in result:
        return f"{pages.number(int(result['element_count']))} values"
    return ""


def expectation_result(raw: dict[str, Any]) -> ExpectationResult:
    """One entry of a result JSON's `results`."""
    config = raw.get("expectation_config") or {}
    kwargs = config.get("kwargs") or {}
    column = str(kwargs.get("column") or "")
    result = raw.get("result") or {}
    name = str(config.get("type") or "unknown").removeprefix("expect_").replace("_", " ")
    arguments = "; ".join(
        f"{key}={_shown(value)}" for key, value in kwargs.items() if key not in HIDDEN_ARGUMENTS
    )
    count = result.get("unexpected_count")
    percent = result.get("unexpected_percent")
    error = raw.get("exception_info") or {}
    return ExpectationResult(
        name=name,
        column=column,
        arguments=arguments,
        success=bool(raw.get("success")),
        observed=_observed(result, column),
        unexpected_count=None if count is None else int(count),
        unexpected_percent=None if percent is None else float(percent),
        examples=tuple(
            _shown(v, column) for v in (result.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]
        ),
        error=_shown(error.get("exception_message") or "") if error.get("raised_exception") else "",
    )


def file_results(path: Path) -> FileResults | None:
    """A file's results from its result JSON; None when it is not one (unreadable, too large)."""
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("results"), list):
        return None
    asset = ((raw.get("meta") or {}).get("active_batch_definition") or {}).get("data_asset_name")
    return FileResults(
        file_name=str(asset or path.stem),
        success=bool(raw.get("success")),
        expectations=[expectation_result(r) for r in raw["results"] if isinstance(r, dict)],
    )


def run_results(work_dir: Path, root: Path) -> list[FileResults]:
    """Every file's results in a run's (local) work directory, by file name; only files that
    lie under `root` (the work root; symbolic links followed)."""
    root = root.resolve()
    paths = (path.resolve() for path in sorted(work_dir.glob(RESULTS_GLOB)))
    found = (file_results(path) for path in paths if path.is_relative_to(root) and path.is_file())
    return sorted((f for f in found if f is not None), key=lambda f: f.file_name)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}%"


def _file_section(results: FileResults) -> str:
    verdict = (
        '<span class="ok">&#10003; passed</span>'
        if results.success
        else '<span class="bad">&#10007; failed</span>'
    )
    rows = [
        [
            e(r.name) + (f"<br><code>{e(r.arguments)}</code>" if r.arguments else ""),
            e(r.column),
            '<span class="ok">&#10003; met</span>'
            if r.success
            else '<span class="bad">&#10007; not met</span>',
            e(r.observed) + (f'<br><span class="bad">{e(r.error)}</span>' if r.error else ""),
            "" if r.unexpected_count is None else e(pages.number(r.unexpected_count)),
            e(_percent(r.unexpected_percent)),
            ", ".join(f"<code>{e(v)}</code>" for v in r.examples),
        ]
        for r in results.expectations
    ]
    listed = pages.table(
        ["Expectation", "Column", "Result", "Observed", "Unexpected", "Share", "Examples"],
        rows,
        numeric={4, 5},
    )
    return (
        f'<section class="gx"><h2>{e(results.file_name)} {verdict}</h2>'
        f"<p class=meta>{e(results.met)} of {e(len(results.expectations))} expectations met."
        f'</p><div class="scroll">{listed}</div></section>'
    )


def results_page(billing_month: str, run_id: str, files: list[FileResults], back: str) -> str:
    """The validation results of one run of a month; `back`: the link to the month's page."""
    head = (
        pages.nav("../../", "")
        + f'<p><a href="{e(back)}">&larr; Billing month {e(billing_month)}</a></p>'
        f"<h1>Validation results {e(billing_month)}</h1>"
        f"<p class=meta>Great Expectations' checks of each CDR file's accepted rows, run "
        f"{runs_pages.run_link(airflow_run_id(run_id), '../../')}. Phone numbers are masked.</p>"
    )
    body = "".join(_file_section(f) for f in files) or (
        '<p class="empty">This run left no validation results (it stopped before validating, '
        "or its work directory is not on this machine).</p>"
    )
    return pages.page(f"Validation {billing_month}", head + body, style=STYLE)
