"""The records the statement tasks hand on through XCom (cdr_billing.contracts' rules: plain
JSON, light imports; the DAG file imports this at parse time)."""

from __future__ import annotations

from dataclasses import dataclass

from cdr_billing.contracts import LoadedBatch


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
