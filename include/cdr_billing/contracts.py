"""The typed records the pipeline's tasks hand on to each other through XCom.

Each task takes the records of the tasks before it and returns one of its own; a task reads
its data from the run's work directory, so a record carries names, paths and counts, never
rows. Records travel as plain JSON (`to_xcom`) and are rebuilt on the other side
(`from_xcom`), which fails at once, naming the field, when one is missing or unknown: a
changed contract breaks the next task, not a KeyError three tasks later. Plain JSON also keeps
Airflow's deserialisation allow-list out of the deployment. Light imports only: the DAG file
imports this at parse time.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from cdr_billing.acquire import FetchedFile

R = TypeVar("R")


@dataclass(frozen=True)
class Run:
    """What every task knows about the billing run."""

    billing_month: str  # YYYY-MM
    run_id: str  # Airflow's run id, with the clear number when the run was cleared
    work_dir: str  # local path or object-storage URL of the run's files
    work_connection: str | None = None  # the object-storage connection of work_dir, if any
    refresh_entitlements: bool = False
    release_held_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileCounts:
    """What the fetch did with the files the servers listed."""

    downloaded: int
    reused: int  # archived copies of files billed before
    held: int  # delivered again with other content: not billed until released
    duplicate_content: int
    ignored: int  # not the month's, or not a CDR, tariff or snapshot file
    not_yet_stable: int  # still growing: left for a later run


@dataclass(frozen=True)
class FetchedMonth:
    """The month's usable files, local, recorded in the ledger."""

    run: Run
    files: tuple[FetchedFile, ...]
    server: str  # the SFTP connection that delivered them
    failovers: tuple[dict[str, str], ...]  # the servers that failed first: server, error
    file_counts: FileCounts

    def of_role(self, role: str) -> list[FetchedFile]:
        """The files of one role: cdr, tariff or entitlements."""
        return [f for f in self.files if f.role == role]


@dataclass(frozen=True)
class References:
    """The month's tariff version and pinned entitlement snapshot."""

    tariff_version: int
    entitlement_snapshot: int


@dataclass(frozen=True)
class ValidatedFile:
    """One CDR file, read and checked; its rows are in `dir`."""

    name: str
    source: str
    sha256: str
    dir: str  # the file's folder in the work directory
    data_docs: str  # its Great Expectations data docs
    read: int
    quarantined: int
    duplicates_in_file: int


@dataclass(frozen=True)
class ReconciledFile(ValidatedFile):
    """A validated file after the month's duplicates: its rows add up (read = billable +
    quarantined + duplicate)."""

    billable: int
    duplicate: int  # in the file, or of an earlier file


@dataclass(frozen=True)
class DedupedMonth:
    """The month's files in delivery order, without duplicates; partial calls combined."""

    run: Run
    files: tuple[ReconciledFile, ...]
    data_docs: str  # the index of every file's data docs
    read: int
    quarantined: int
    duplicates: int
    combined: int  # parts of partial calls merged into their session's first part


@dataclass(frozen=True)
class BilledFile:
    """One file's calls priced, attributed and summed per user."""

    sha256: str
    delivery_failed_billed: int
    billed: int
    suspense: int
    price_differences: int
    unbillable: int
    not_billable: int
    prepaid: int = 0  # calls of prepaid accounts: debited to their balances, not billed here


@dataclass(frozen=True)
class RowCounts:
    """Every row read, by outcome: report.reconcile proves they add up."""

    read: int
    quarantined: int
    duplicates: int
    combined: int
    billed: int
    suspense: int
    unbillable: int
    not_billable: int
    prepaid: int = 0


@dataclass(frozen=True)
class MonthLines:
    """The month's billing lines, written to the work directory, proven against the calls."""

    month: DedupedMonth
    references: References
    counts: RowCounts
    delivery_failed_billed: int
    price_differences: int
    credits: tuple[dict[str, Any], ...] = ()  # per currency: the calls with a negative cost

    @property
    def run(self) -> Run:
        return self.month.run


@dataclass(frozen=True)
class LoadedBatch:
    """The month's new current batch in the billing database."""

    lines: MonthLines
    batch_id: int
    superseded_batch_id: int | None

    @property
    def run(self) -> Run:
        return self.lines.run


@dataclass(frozen=True)
class MonthReport:
    """The month report, written to the work directory and mailed."""

    batch: LoadedBatch
    report: str  # report.json's path


@dataclass(frozen=True)
class LedgerPostings:
    """What a run posted to the prepaid balances (prepaid.balances.DebitSummary's counts)."""

    debited: int  # calls debited for the first time
    rerated: int  # reversed and debited again at another cost
    unchanged: int
    redelivered: int  # a prepaid run's calls debited before from another file: first one kept
    reversed: int  # debits of calls no longer billed in the settled period
    refused: int  # prepaid calls not debited (another currency, a negative cost): listed
    accounts: int  # accounts whose balance the run moved


@dataclass(frozen=True)
class PrepaidSettlement:
    """The monthly run's prepaid calls settled against their debits: the month's complete
    rating replaces what the prepaid runs debited from partial deliveries."""

    lines: MonthLines
    postings: LedgerPostings


@dataclass(frozen=True)
class RatedPrepaidFile:
    """One file of a prepaid run, priced with the monthly run's functions; its prepaid calls
    are in `dir`."""

    name: str
    source: str
    sha256: str
    dir: str
    priced: int
    prepaid: int
    unbillable: int
    not_billable: int


@dataclass(frozen=True)
class CreditControl:
    """What a prepaid run's credit control did: top-ups and lines locked and unlocked."""

    approved: int
    declined: int
    unknown: int  # sent, not answered: sent again with the same key next run
    locked: int
    unlocked: int


@dataclass(frozen=True)
class SwitchDeliveries:
    """The switch's webhooks this run: accepted, failed (retried with backoff), waiting."""

    delivered: int
    failed: int
    waiting: int


@dataclass(frozen=True)
class PrepaidExposure:
    """The money at risk between two runs, per currency (minor units), and the accounts above
    the configured limit."""

    bound_minor: dict[str, int]
    undebited_minor: dict[str, int]
    above_limit: int


@dataclass(frozen=True)
class RenderedStatements:
    """A batch's statements rendered as HTML and PDF into the archive."""

    batch: LoadedBatch
    statements: int
    folder: str  # the batch's statements folder ("" when the month has none)


@dataclass(frozen=True)
class DeliveredStatements:
    """The statement mails of a batch after the last delivery pass."""

    rendered: RenderedStatements
    sent: int
    bounced: int
    deferred: int
    unknown: int
    waiting: int  # pending or deferred: tried again at the next pass


def to_xcom(record: Any) -> Any:
    """A record (or a list of them) as the plain JSON values XCom stores."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        record = dataclasses.asdict(record)
    if isinstance(record, dict):
        return {key: to_xcom(value) for key, value in record.items()}
    if isinstance(record, list | tuple):
        return [to_xcom(item) for item in record]
    return record


def from_xcom(kind: type[R] | Any, value: Any) -> R:
    """Rebuild a value of the annotated `kind` (a record, a list or tuple of records, or a
    plain value) from its JSON; a missing or unknown field raises TypeError naming it."""
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        item = typing.get_args(kind)[0]  # list[X] or tuple[X, ...]
        return origin(from_xcom(item, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if value is None else from_xcom(options[0], value)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        hints = _field_types(kind)
        unknown = set(value) - set(hints)
        if unknown:
            raise TypeError(f"{kind.__name__}: unknown fields {sorted(unknown)}")
        return kind(**{name: from_xcom(hints[name], v) for name, v in value.items()})
    return value


@cache
def _field_types(kind: type) -> dict[str, Any]:
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)}
