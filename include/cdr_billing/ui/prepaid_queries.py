"""What the Prepaid pages show: accounts with their balance, line state, last debit and top-up,
top-ups in flight, the latest run's exposure; an account's settings history, ledger, lock
history, top-up requests and switch deliveries; the switch outbox's undelivered events.

Read-only but for record_manual_entry (the account page's form). Every query is bounded (a
page of accounts, a page of entries, the newest N rows) and walks an existing index: the
account key, balance_entry_of_account, lock_event_of_account, topup_request_of_account,
switch_outbox_pending, prepaid_exposure's key. Two have no index to walk: an account's settings
history and the outbox's undelivered rows (small tables, scanned). Money stays in integer minor
units here; the pages format it in the account's currency.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, text
from sqlalchemy.engine import Connection, Engine

from cdr_billing.prepaid.accounts import Recorded, record_manual
from cdr_billing.schema import (
    balance_entry,
    lock_event,
    prepaid_account,
    prepaid_account_change,
    prepaid_exposure,
    switch_outbox,
    topup_request,
)

ACCOUNTS_PER_PAGE = 100
ENTRIES_PER_PAGE = 50
HISTORY_ROWS = 50  # settings changes, lock events, deliveries shown on an account's page
TOPUP_ROWS = 20
OUTBOX_ROWS = 200
ABOVE_LIMIT_ROWS = 20  # the accounts above the exposure limit listed per currency
# A declined top-up stays on the accounts list this long (the hold-off is usually shorter).
RECENT_DECLINE = timedelta(days=1)
IN_FLIGHT = ("pending", "unknown")
LOCK_STATES = ("locked", "unlocked")

# The latest exposure run without scanning the table: walk its key's distinct run ids (one index
# probe each) and take the run computed last. Its cost grows with the number of runs, not rows.
# (The key's order in the time lookup keeps PostgreSQL on the index: with a bare LIMIT 1 it
# expects a run's 50,000 rows early in a sequential scan.)
LATEST_EXPOSURE_RUN = text(
    """
    WITH RECURSIVE runs(run_id) AS (
        SELECT min(run_id) FROM prepaid_exposure
        UNION ALL
        SELECT (SELECT min(e.run_id) FROM prepaid_exposure e WHERE e.run_id > runs.run_id)
        FROM runs WHERE runs.run_id IS NOT NULL
    )
    SELECT run_id,
           (SELECT e.computed_at FROM prepaid_exposure e WHERE e.run_id = runs.run_id
            ORDER BY e.run_id, e.account_id LIMIT 1) AS computed_at
    FROM runs WHERE run_id IS NOT NULL
    ORDER BY computed_at DESC, run_id DESC
    LIMIT 1
    """
)


@dataclass(frozen=True)
class EntryBrief:
    """A ledger entry as the accounts list shows it: when and how much."""

    entry_id: int
    kind: str
    amount_minor: int
    created_at: datetime


@dataclass(frozen=True)
class LockState:
    """An account's line: locked or not, and since which event (None: never locked)."""

    locked: bool
    since: datetime | None
    reason: str | None


@dataclass(frozen=True)
class TopupBrief:
    """A top-up request in flight or declined recently."""

    request_id: int
    status: str
    amount_minor: int
    currency: str
    requested_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True)
class AccountExposureRow:
    """An account's money at risk in the latest exposure run."""

    bound_minor: int
    undebited_minor: int
    above_limit: bool

    @property
    def at_risk_minor(self) -> int:
        return self.bound_minor + self.undebited_minor


@dataclass(frozen=True)
class AccountSummary:
    """One row of the accounts list."""

    account_id: str
    currency: str
    active: bool
    balance_minor: int
    updated_at: datetime
    state: LockState
    last_debit: EntryBrief | None
    last_topup: EntryBrief | None
    topups: list[TopupBrief]
    exposure: AccountExposureRow | None


@dataclass(frozen=True)
class AtRisk:
    """An account above its currency's exposure limit."""

    account_id: str
    bound_minor: int
    undebited_minor: int

    @property
    def at_risk_minor(self) -> int:
        return self.bound_minor + self.undebited_minor


@dataclass(frozen=True)
class CurrencyExposure:
    """A run's exposure in one currency: totals, the limit and the accounts above it."""

    currency: str
    accounts: int
    bound_minor: int
    undebited_minor: int
    limit_minor: int | None
    above_limit: int
    largest_above: list[AtRisk]  # the largest, at most ABOVE_LIMIT_ROWS


@dataclass(frozen=True)
class ExposureRun:
    """The latest prepaid run's exposure."""

    run_id: str
    computed_at: datetime
    currencies: list[CurrencyExposure]


@dataclass(frozen=True)
class AccountsPage:
    """A page of the accounts list, with the counts of all accounts and the latest exposure."""

    accounts: list[AccountSummary]
    start: str | None  # the first account id asked for (None: from the beginning)
    next_start: str | None  # the next page's first account id
    locked_only: bool
    total: int
    locked: int
    exposure: ExposureRun | None


@dataclass(frozen=True)
class LedgerEntry:
    """An entry of an account's ledger and the balance right after it."""

    entry_id: int
    kind: str
    amount_minor: int
    balance_after_minor: int
    call_key: str | None
    source_file: str | None
    source_row: int | None
    reason: str | None
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class LedgerPage:
    """Entries newest first, older than `before` (None: the newest)."""

    entries: list[LedgerEntry]
    before: int | None
    older_before: int | None  # `before` of the next (older) page, None at the oldest


@dataclass(frozen=True)
class AccountDetail:
    """Everything an account's page shows."""

    account: dict[str, Any]
    changes: list[dict[str, Any]]  # newest first
    ledger: LedgerPage
    lock_events: list[dict[str, Any]]  # newest first
    topups: list[dict[str, Any]]  # newest first
    deliveries: list[dict[str, Any]]  # newest first


@dataclass(frozen=True)
class OutboxPage:
    """The switch's undelivered events, oldest first per account."""

    deliveries: list[dict[str, Any]]
    after: int | None
    next_after: int | None


def _scalar_entry_id(kind: str):
    """The account's newest entry of a kind: a backward walk of balance_entry_of_account (ordered
    by its columns, so that PostgreSQL does not walk the whole ledger's key backwards instead)."""
    entry = balance_entry.c
    return (
        select(entry.entry_id)
        .where(entry.account_id == prepaid_account.c.account_id, entry.kind == kind)
        .order_by(entry.account_id.desc(), entry.entry_id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _latest_lock_event_id():
    """The account's newest lock event (a max over lock_event_of_account)."""
    return (
        select(func.max(lock_event.c.event_id))
        .where(lock_event.c.account_id == prepaid_account.c.account_id)
        .scalar_subquery()
    )


def _account_rows(conn: Connection, start: str | None, locked_only: bool) -> list[dict]:
    account = prepaid_account.c
    query = select(
        account.account_id,
        account.currency,
        account.active,
        account.balance_minor,
        account.locked,
        account.updated_at,
        _scalar_entry_id("debit").label("last_debit_id"),
        _scalar_entry_id("topup").label("last_topup_id"),
        _latest_lock_event_id().label("lock_event_id"),
    )
    if start is not None:
        query = query.where(account.account_id >= start)
    if locked_only:
        query = query.where(account.locked)
    query = query.order_by(account.account_id).limit(ACCOUNTS_PER_PAGE + 1)
    return [dict(row) for row in conn.execute(query).mappings()]


def _entries_by_id(conn: Connection, ids: Iterable[int | None]) -> dict[int, EntryBrief]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    entry = balance_entry.c
    rows = conn.execute(
        select(entry.entry_id, entry.kind, entry.amount_minor, entry.created_at).where(
            entry.entry_id.in_(wanted)
        )
    )
    return {row.entry_id: EntryBrief(*row) for row in rows}


def _lock_events_by_id(conn: Connection, ids: Iterable[int | None]) -> dict[int, dict]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    rows = conn.execute(select(lock_event).where(lock_event.c.event_id.in_(wanted))).mappings()
    return {row["event_id"]: dict(row) for row in rows}


def _recent_topups(
    conn: Connection, account_ids: list[str], now: datetime
) -> dict[str, list[TopupBrief]]:
    """Per account, its requests in flight and those declined within RECENT_DECLINE."""
    if not account_ids:
        return {}
    request = topup_request.c
    rows = conn.execute(
        select(
            request.account_id,
            request.request_id,
            request.status,
            request.amount_minor,
            request.currency,
            request.requested_at,
            request.resolved_at,
        )
        .where(
            request.account_id.in_(account_ids),
            or_(
                request.status.in_(IN_FLIGHT),
                and_(request.status == "declined", request.resolved_at >= now - RECENT_DECLINE),
            ),
        )
        .order_by(request.account_id, request.request_id.desc())
    )
    found: dict[str, list[TopupBrief]] = defaultdict(list)
    for row in rows:
        found[row.account_id].append(TopupBrief(*row[1:]))
    return found


def latest_exposure_run(conn: Connection) -> tuple[str, datetime] | None:
    """The run id and time of the latest exposure run, or None before the first."""
    row = conn.execute(LATEST_EXPOSURE_RUN).first()
    return None if row is None else (row.run_id, row.computed_at)


def _exposure_of(
    conn: Connection, run_id: str | None, account_ids: list[str], limits: Mapping[str, int]
) -> dict[str, AccountExposureRow]:
    if run_id is None or not account_ids:
        return {}
    exposure = prepaid_exposure.c
    rows = conn.execute(
        select(
            exposure.account_id, exposure.currency, exposure.bound_minor, exposure.undebited_minor
        ).where(exposure.run_id == run_id, exposure.account_id.in_(account_ids))
    )
    return {
        row.account_id: AccountExposureRow(
            row.bound_minor,
            row.undebited_minor,
            _above(row.bound_minor + row.undebited_minor, limits.get(row.currency)),
        )
        for row in rows
    }


def _above(at_risk_minor: int, limit_minor: int | None) -> bool:
    return limit_minor is not None and at_risk_minor > limit_minor


def _limit_of_currency(limits: Mapping[str, int]):
    """The row's currency's limit as SQL (NULL where none is configured)."""
    exposure = prepaid_exposure.c
    if not limits:
        return literal(None)
    return case(
        *((exposure.currency == currency, limit) for currency, limit in limits.items()),
        else_=None,
    )


def _currency_exposure(
    conn: Connection, run_id: str, limits: Mapping[str, int]
) -> list[CurrencyExposure]:
    """Totals per currency of one run and the largest accounts above each limit: two passes
    over the run's range of the key."""
    exposure = prepaid_exposure.c
    at_risk = exposure.bound_minor + exposure.undebited_minor
    over = at_risk > _limit_of_currency(limits)
    totals = conn.execute(
        select(
            exposure.currency,
            func.count(),
            func.sum(exposure.bound_minor),
            func.sum(exposure.undebited_minor),
            func.count().filter(over),
        )
        .where(exposure.run_id == run_id)
        .group_by(exposure.currency)
        .order_by(exposure.currency)
    ).all()
    largest: dict[str, list[AtRisk]] = defaultdict(list)
    if any(above for *_, above in totals):
        rank = (
            func.row_number()
            .over(partition_by=exposure.currency, order_by=(at_risk.desc(), exposure.account_id))
            .label("rank")
        )
        ranked = (
            select(
                exposure.currency,
                exposure.account_id,
                exposure.bound_minor,
                exposure.undebited_minor,
                rank,
            )
            .where(exposure.run_id == run_id, over)
            .subquery()
        )
        for row in conn.execute(
            select(ranked)
            .where(ranked.c.rank <= ABOVE_LIMIT_ROWS)
            .order_by(ranked.c.currency, ranked.c.rank)
        ):
            largest[row.currency].append(
                AtRisk(row.account_id, row.bound_minor, row.undebited_minor)
            )
    return [
        CurrencyExposure(
            currency,
            int(accounts),
            int(bound),
            int(undebited),
            limits.get(currency),
            int(above),
            largest[currency],
        )
        for currency, accounts, bound, undebited, above in totals
    ]


def _counts(conn: Connection) -> tuple[int, int]:
    account = prepaid_account.c
    total, locked = conn.execute(
        select(func.count(), func.count().filter(account.locked)).select_from(prepaid_account)
    ).one()
    return int(total), int(locked)


def accounts_page(
    engine: Engine,
    limits: Mapping[str, int],
    now: datetime,
    start: str | None = None,
    locked_only: bool = False,
) -> AccountsPage:
    """A page of accounts by id from `start`, with their latest debit, top-up, lock event,
    top-ups in flight and exposure; the counts; the latest run's exposure per currency."""
    with engine.connect() as conn:
        rows = _account_rows(conn, start, locked_only)
        page, following = rows[:ACCOUNTS_PER_PAGE], rows[ACCOUNTS_PER_PAGE:]
        ids = [row["account_id"] for row in page]
        entries = _entries_by_id(
            conn, [row["last_debit_id"] for row in page] + [row["last_topup_id"] for row in page]
        )
        events = _lock_events_by_id(conn, [row["lock_event_id"] for row in page])
        topups = _recent_topups(conn, ids, now)
        latest = latest_exposure_run(conn)
        exposures = _exposure_of(conn, latest[0] if latest else None, ids, limits)
        run = (
            ExposureRun(latest[0], latest[1], _currency_exposure(conn, latest[0], limits))
            if latest
            else None
        )
        total, locked = _counts(conn)
    accounts = [
        AccountSummary(
            account_id=row["account_id"],
            currency=row["currency"],
            active=row["active"],
            balance_minor=row["balance_minor"],
            updated_at=row["updated_at"],
            state=_state(row["locked"], events.get(row["lock_event_id"])),
            last_debit=entries.get(row["last_debit_id"]),
            last_topup=entries.get(row["last_topup_id"]),
            topups=topups.get(row["account_id"], []),
            exposure=exposures.get(row["account_id"]),
        )
        for row in page
    ]
    next_start = following[0]["account_id"] if following else None
    return AccountsPage(accounts, start, next_start, locked_only, total, locked, run)


def _state(locked: bool, event: dict | None) -> LockState:
    """The cached flag, dated by the latest event when it agrees with it."""
    if event is None or (event["state"] == "locked") != locked:
        return LockState(locked, None, None)
    return LockState(locked, event["created_at"], event["reason"])


def account_row(conn: Connection, account_id: str) -> dict[str, Any] | None:
    row = (
        conn.execute(select(prepaid_account).where(prepaid_account.c.account_id == account_id))
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def ledger_page(conn: Connection, account_id: str, before: int | None) -> LedgerPage:
    """Entries older than `before`, newest first, each with the balance after it: the cached
    balance less the entries from `before` on, read in the page's own statement (one snapshot)."""
    entry = balance_entry.c
    balance_now = (
        select(prepaid_account.c.balance_minor)
        .where(prepaid_account.c.account_id == account_id)
        .scalar_subquery()
    )
    newer = select(func.coalesce(func.sum(entry.amount_minor), 0)).where(
        entry.account_id == account_id
    )
    query = select(
        entry.entry_id,
        entry.kind,
        entry.amount_minor,
        entry.call_key,
        entry.source_file,
        entry.source_row,
        entry.reason,
        entry.created_by,
        entry.created_at,
        balance_now.label("balance_now"),
        (
            newer.where(entry.entry_id >= before).scalar_subquery()
            if before is not None
            else literal(0)
        ).label("newer"),
    ).where(entry.account_id == account_id)
    if before is not None:
        query = query.where(entry.entry_id < before)
    rows = conn.execute(query.order_by(entry.entry_id.desc()).limit(ENTRIES_PER_PAGE + 1)).all()
    page = rows[:ENTRIES_PER_PAGE]
    entries = []
    if page:
        after = int(page[0].balance_now) - int(page[0].newer)
        for row in page:
            entries.append(
                LedgerEntry(
                    row.entry_id,
                    row.kind,
                    row.amount_minor,
                    after,
                    row.call_key,
                    row.source_file,
                    row.source_row,
                    row.reason,
                    row.created_by,
                    row.created_at,
                )
            )
            after -= row.amount_minor
    older = page[-1].entry_id if len(rows) > ENTRIES_PER_PAGE else None
    return LedgerPage(entries, before, older)


def _newest(conn: Connection, table, key, account_id: str, limit: int) -> list[dict[str, Any]]:
    """An account's newest rows of a table, walking its (account_id, key) index backwards."""
    rows = conn.execute(
        select(table).where(table.c.account_id == account_id).order_by(key.desc()).limit(limit)
    ).mappings()
    return [dict(row) for row in rows]


def account_detail(engine: Engine, account_id: str, before: int | None) -> AccountDetail | None:
    """An account's page, or None when there is no such prepaid account."""
    with engine.connect() as conn:
        account = account_row(conn, account_id)
        if account is None:
            return None
        return AccountDetail(
            account=account,
            changes=_newest(
                conn,
                prepaid_account_change,
                prepaid_account_change.c.change_id,
                account_id,
                HISTORY_ROWS,
            ),
            ledger=ledger_page(conn, account_id, before),
            lock_events=_newest(conn, lock_event, lock_event.c.event_id, account_id, HISTORY_ROWS),
            topups=_newest(conn, topup_request, topup_request.c.request_id, account_id, TOPUP_ROWS),
            deliveries=_newest(
                conn, switch_outbox, switch_outbox.c.outbox_id, account_id, HISTORY_ROWS
            ),
        )


def entry_of(engine: Engine, account_id: str, entry_id: int) -> dict[str, Any] | None:
    """One of the account's entries (the one a manual posting just made)."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(balance_entry).where(
                    balance_entry.c.entry_id == entry_id, balance_entry.c.account_id == account_id
                )
            )
            .mappings()
            .first()
        )
    return None if row is None else dict(row)


def outbox_page(engine: Engine, after: int | None = None) -> OutboxPage:
    """Undelivered switch events (pending or failing), by outbox id from `after` on."""
    outbox = switch_outbox.c
    query = select(
        outbox.outbox_id,
        outbox.event_id,
        outbox.account_id,
        outbox.action,
        outbox.created_at,
        outbox.attempts,
        outbox.next_attempt_at,
        outbox.last_error,
    ).where(outbox.delivered_at.is_(None))
    if after is not None:
        query = query.where(outbox.outbox_id > after)
    with engine.connect() as conn:
        rows = [
            dict(row)
            for row in conn.execute(
                query.order_by(outbox.outbox_id).limit(OUTBOX_ROWS + 1)
            ).mappings()
        ]
    page = rows[:OUTBOX_ROWS]
    next_after = page[-1]["outbox_id"] if len(rows) > OUTBOX_ROWS else None
    return OutboxPage(page, after, next_after)


class UnknownAccount(LookupError):
    """No prepaid account has this id."""


def record_manual_entry(
    engine: Engine,
    account_id: str,
    kind: str,
    amount_text: str,
    reason: str,
    operator: str,
    key: str,
) -> Recorded:
    """The page's one write, as the command's `credit` does it (accounts.record_manual), or
    UnknownAccount (a 404, not a form error)."""
    with engine.begin() as conn:
        if account_row(conn, account_id) is None:
            raise UnknownAccount(account_id)
        return record_manual(conn, account_id, kind, amount_text, reason, operator, key)
