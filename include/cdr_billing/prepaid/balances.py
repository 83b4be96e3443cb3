"""The balance ledger: append-only entries whose sum is an account's balance.

Every posting names an idempotency key, unique in `balance_entry`: posting the same key again
(a retried task, an overlapping run) changes nothing and returns the entry already there. The
balance is cached on `prepaid_account` in the same transaction as the entries, and writers on
an account hold its row lock (`lock_accounts`) from reading the balance to the commit, so two
runs debiting one account take turns.

Rated calls are debited set-based (`debit_calls`, `settle_calls`): the run's calls go into a
temporary table (COPY on PostgreSQL), their accounts are locked, and a few INSERT ... SELECT and
UPDATE statements against `call_debit` (each call's current debit) post what changed, so a
run of 20,000 calls costs a handful of statements, not 20,000 round trips. A call's entries
carry keys `debit:{call_key}:{revision}` and `reversal:{call_key}:{revision}`: whatever is
retried or re-run, a call is debited once per revision, and a re-rating reverses the old debit
before it posts the new one (never an edit).

A call reversed by `settle_calls` (it vanished from its period: now unbillable, a duplicate,
or another account's post-paid call) keeps its `call_debit` row with cost_minor 0, the
reversal as its entry and the reversed debit's revision: "settled at 0". If it comes back, it is
debited again as revision + 1, with nothing to reverse first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from cdr_billing import database
from cdr_billing.schema import balance_entry, prepaid_account

KINDS = ("debit", "reversal", "topup", "credit", "refund", "adjustment")
PIPELINE = "pipeline"  # created_by of what the DAGs post


class LedgerError(ValueError):
    """A posting the ledger refuses (unknown account, another currency, unknown kind)."""


@dataclass(frozen=True)
class Posted:
    """An entry and the balance after it; `new` is False when the key was posted before."""

    entry_id: int
    balance_minor: int
    new: bool


def lock_accounts(conn: Connection, account_ids: Iterable[str]) -> dict[str, dict]:
    """Lock the accounts' rows until the transaction ends, in one order (no deadlock between
    runs locking overlapping sets); return each account's row by id."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    rows = conn.execute(
        select(prepaid_account)
        .where(prepaid_account.c.account_id.in_(ids))
        .order_by(prepaid_account.c.account_id)
        .with_for_update()
    ).mappings()
    return {row["account_id"]: dict(row) for row in rows}


def post(
    conn: Connection,
    account: dict,
    kind: str,
    amount_minor: int,
    idempotency_key: str,
    created_by: str = PIPELINE,
    **details: object,
) -> Posted:
    """Append one entry to a locked account (`account`: its row from lock_accounts, updated
    here) unless its key was posted before; `details`: the entry's other columns."""
    if kind not in KINDS:
        raise LedgerError(f"unknown entry kind {kind!r}")
    before = conn.execute(
        select(balance_entry.c.entry_id).where(balance_entry.c.idempotency_key == idempotency_key)
    ).scalar()
    if before is not None:
        return Posted(before, account["balance_minor"], new=False)
    now = datetime.now(UTC)
    entry_id = conn.execute(
        insert(balance_entry)
        .values(
            account_id=account["account_id"],
            kind=kind,
            amount_minor=int(amount_minor),
            currency=account["currency"],
            idempotency_key=idempotency_key,
            created_by=created_by,
            created_at=now,
            **details,
        )
        .returning(balance_entry.c.entry_id)
    ).scalar_one()
    account["balance_minor"] += int(amount_minor)
    account["last_entry_id"] = entry_id
    conn.execute(
        update(prepaid_account)
        .where(prepaid_account.c.account_id == account["account_id"])
        .values(balance_minor=account["balance_minor"], last_entry_id=entry_id, updated_at=now)
    )
    return Posted(entry_id, account["balance_minor"], new=True)


def ledger_balance(conn: Connection, account_id: str) -> int:
    """The account's balance from its entries (the cache must equal it)."""
    return int(
        conn.execute(
            select(func.coalesce(func.sum(balance_entry.c.amount_minor), 0)).where(
                balance_entry.c.account_id == account_id
            )
        ).scalar_one()
    )


# ---------------------------------------------------------------------------------------------
# Rated calls, set-based

CALL_COLUMNS = (
    "call_key",  # unique per call: f"{source}:{transaction_id}"
    "account_id",  # the CDR's user_id
    "cost_minor",
    "currency",
    "call_start",
    "billed_seconds",
    "tariff_version",
    "source_file",
    "source_row",
)
OUTCOMES = ("debited", "rerated", "unchanged", "redelivered", "reversed", "not_prepaid", "refused")
# the reason of a reversal (balance_entry.reason)
RERATED = "re-rated"
MOVED = "moved to another account"
UNSETTLED = "not billed in the settled period"

_SCRATCH = MetaData()
_CALLS = Table(
    "tmp_debit_calls",
    _SCRATCH,
    Column("call_key", Text),
    Column("account_id", String(128)),
    Column("cost_minor", BigInteger),
    Column("currency", String(3)),
    Column("call_start", DateTime(timezone=True)),
    Column("billed_seconds", BigInteger),
    Column("tariff_version", Integer),
    Column("source_file", Text),
    Column("source_row", BigInteger),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
_LOCKS, _PLAN, _SCOPE = "tmp_debit_locks", "tmp_debit_plan", "tmp_settle_scope"
_TIMES = {name: DateTime(timezone=True) for name in ("now", "period_start", "period_end")}


@dataclass(frozen=True)
class RefusedCall:
    """A prepaid account's call that was not debited, and why (listed, never dropped)."""

    call_key: str
    account_id: str
    reason: str


@dataclass(frozen=True, eq=False)
class DebitSummary:
    """What a run did to the balances: calls per outcome, each account's balance after it
    (the accounts concerned: the calls' and those of the debits reversed), the refused calls,
    and each call's outcome (`outcomes`: call_key, account_id, outcome; a settled reversal is a
    row of its own, its account the debited one)."""

    debited: int
    rerated: int
    unchanged: int
    redelivered: int  # new_calls_only: debited before at another cost, left as it was
    reversed: int
    not_prepaid: int
    refused: int
    balances: dict[str, int]
    refused_calls: tuple[RefusedCall, ...]
    outcomes: pd.DataFrame


@dataclass(frozen=True)
class _Settlement:
    """The period whose debits absent from the calls are reversed, and its accounts (None:
    every prepaid account, active or not)."""

    start: datetime
    end: datetime
    accounts: frozenset[str] | None


def debit_calls(
    conn: Connection, calls: pd.DataFrame, run_id: str, new_calls_only: bool = False
) -> DebitSummary:
    """Debit a rating run's calls (columns CALL_COLUMNS) to their active prepaid accounts,
    each call once: a new call is debited, a call seen before with the same cost and account is
    left alone, one with another cost (re-rated) or account is reversed and debited again.
    Calls of other accounts are left untouched (not_prepaid); a call in another currency than
    its account's, or of negative cost, is refused and listed. With `new_calls_only` (the
    prepaid runs, which read each file once) a call debited before at another cost or account
    is a re-delivery: the first delivery's debit stands ("redelivered"), re-rating is the
    monthly settlement's. Runs in the caller's
    transaction, holding the accounts' row locks to its end: runs at once on shared accounts
    take turns (a call that two runs at once give to different accounts fails the later one
    on call_debit's key, before anything is committed: its retry sees the first's debit).
    Rows of accounts locked before (lock_accounts' dicts) are stale after it: lock again."""
    return _apply_calls(conn, calls, run_id, None, new_calls_only)


def settle_calls(
    conn: Connection,
    calls: pd.DataFrame,
    run_id: str,
    period_start: datetime,
    period_end: datetime,
    accounts: Iterable[str] | None = None,
) -> DebitSummary:
    """debit_calls for a period's complete rated calls (the monthly run), and then reverse each
    call debited to the period's accounts (default: every prepaid account, active or not)
    whose call_start is in [period_start, period_end) but which is not among the calls debited
    now: a re-rating made it unbillable or a duplicate, or it is no longer a prepaid call (its
    account was deactivated: the month bills it post-paid, or holds it in suspense, so its
    debit is reversed, never charged twice). Such a call is then settled at 0 (see the module's
    docstring). Refused calls keep their debit."""
    if period_end <= period_start:
        raise LedgerError(f"empty period [{period_start}, {period_end})")
    scope = None if accounts is None else frozenset(accounts)
    return _apply_calls(conn, calls, run_id, _Settlement(period_start, period_end, scope), False)


def _apply_calls(
    conn: Connection,
    calls: pd.DataFrame,
    run_id: str,
    settlement: _Settlement | None,
    new_calls_only: bool,
) -> DebitSummary:
    """Load the calls, lock their accounts, plan each call's outcome, post the plan."""
    rows = _call_rows(calls)
    _drop_scratch(conn)
    _CALLS.create(conn)
    _load_calls(conn, rows)
    if settlement is not None and settlement.accounts is not None:
        _load_scope(conn, settlement.accounts)
    _lock_and_plan(conn, settlement, new_calls_only)
    counts = _outcome_counts(conn)
    params = {"run_id": run_id, "created_by": PIPELINE, "now": datetime.now(UTC)}
    if _postgres(conn):
        _post_postgres(conn, counts, params)
    else:
        for statement in (
            _POST_REVERSALS,
            _POST_DEBITS,
            _RECORD_DEBITS,
            _SETTLE_AT_ZERO,
            _UPDATE_BALANCES,
        ):
            _execute(conn, statement, params)
    summary = _summary(conn, counts)
    _drop_scratch(conn)
    return summary


def _post_postgres(conn: Connection, counts: dict[str, int], params: dict) -> None:
    """Post the plan on PostgreSQL in as few statements as it needs: the reversals (only when
    the plan has any, before the debits so they come first in the ledger) with the cache moved
    by them, then one statement that inserts the debits and feeds their RETURNING rows to
    call_debit and to the cache (no lookup of the entries by their keys)."""
    if counts["rerated"] or counts["reversed"]:
        _execute(conn, _POST_REVERSALS, params)
        _execute(conn, _SETTLE_AT_ZERO, params)
        _execute(conn, _UPDATE_BALANCES_BY_REVERSALS, params)
    if counts["debited"] or counts["rerated"]:
        _execute(conn, _POST_AND_RECORD_DEBITS, params)


def _call_rows(calls: pd.DataFrame) -> pd.DataFrame:
    """The calls' columns, typed for the scratch table; refuse what no run should hand in."""
    missing = [name for name in CALL_COLUMNS if name not in calls.columns]
    if missing:
        raise LedgerError(f"the calls lack the columns {missing}")
    for name in ("call_key", "cost_minor", "currency", "call_start"):
        if calls[name].isna().any():
            raise LedgerError(f"{calls[name].isna().sum()} calls have no {name}")
    repeated = calls["call_key"].duplicated()
    if repeated.any():
        raise LedgerError(f"call_key {calls['call_key'][repeated].iloc[0]!r} appears twice")
    if not pd.api.types.is_integer_dtype(calls["cost_minor"].dtype):
        raise LedgerError(
            f"cost_minor must be integer minor units, not {calls['cost_minor'].dtype}"
        )
    if not isinstance(calls["call_start"].dtype, pd.DatetimeTZDtype):
        raise LedgerError("call_start must be a zoned timestamp (UTC)")
    return pd.DataFrame(
        {
            "call_key": calls["call_key"].astype(str),
            "account_id": calls["account_id"].astype(object),
            "cost_minor": calls["cost_minor"].astype("int64"),
            "currency": calls["currency"].astype(str),
            "call_start": calls["call_start"].dt.tz_convert("UTC"),
            "billed_seconds": calls["billed_seconds"].astype("Int64"),
            "tariff_version": calls["tariff_version"].astype("Int64"),
            "source_file": calls["source_file"].astype(object),
            "source_row": calls["source_row"].astype("Int64"),
        }
    ).reset_index(drop=True)


def _postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _drop_scratch(conn: Connection) -> None:
    """Drop the scratch tables (on SQLite they outlive a failed transaction on the pooled
    connection; on PostgreSQL they go at commit anyway). Qualified: never a real table."""
    schema = "pg_temp" if _postgres(conn) else "temp"
    for name in (_CALLS.name, _LOCKS, _PLAN, _SCOPE):
        conn.execute(text(f"DROP TABLE IF EXISTS {schema}.{name}"))


def _temporary(conn: Connection, name: str, body: str) -> None:
    """CREATE a scratch table dropped at commit; `body`: its columns, or AS SELECT."""
    on_commit = " ON COMMIT DROP" if _postgres(conn) else ""
    if body.lstrip().startswith("("):
        conn.execute(text(f"CREATE TEMPORARY TABLE {name} {body}{on_commit}"))
    else:
        conn.execute(text(f"CREATE TEMPORARY TABLE {name}{on_commit} {body}"))


def _load_calls(conn: Connection, rows: pd.DataFrame) -> None:
    """The calls into the scratch table: COPY on PostgreSQL (NULLs as empty unquoted CSV
    fields), the driver's executemany on SQLite."""
    if rows.empty:
        return
    if _postgres(conn):
        batches = [
            rows.iloc[start : start + database.INSERT_BATCH_ROWS]
            for start in range(0, len(rows), database.INSERT_BATCH_ROWS)
        ]
        database.copy_batches(conn, _CALLS.name, batches)
    else:
        database.insert_frame(conn, _CALLS, rows)


def _load_scope(conn: Connection, accounts: frozenset[str]) -> None:
    _temporary(conn, _SCOPE, "(account_id VARCHAR(128) PRIMARY KEY)")
    if accounts:
        conn.execute(
            text(f"INSERT INTO {_SCOPE} (account_id) VALUES (:account_id)"),
            [{"account_id": account} for account in sorted(accounts)],
        )


def _lock_and_plan(conn: Connection, settlement: _Settlement | None, new_calls_only: bool) -> None:
    """Lock the accounts the run may touch (row locks, in account order, as lock_accounts):
    the calls' accounts, those of their current debits, and for a settlement those with a
    debit in the period. Then plan under the locks; if the plan touches an account not locked
    (a debit changed since it was read), lock that too and plan again, until all are held."""
    _temporary(conn, _LOCKS, "(account_id VARCHAR(128) PRIMARY KEY)")
    conn.execute(text(_WANTED_ACCOUNTS))
    if settlement is not None:
        _execute(conn, _WANTED_UNSETTLED.format(scope=_scope(settlement)), _period(settlement))
    while True:
        for_update = " FOR UPDATE OF a" if _postgres(conn) else ""
        conn.execute(
            text(
                "SELECT a.account_id FROM prepaid_account a WHERE a.account_id IN "
                f"(SELECT account_id FROM {_LOCKS}) ORDER BY a.account_id{for_update}"
            )
        ).all()
        _plan(conn, settlement, new_calls_only)
        unlocked = conn.execute(text(_UNLOCKED_ACCOUNTS)).scalars().all()
        if not unlocked:
            return
        conn.execute(
            text(f"INSERT INTO {_LOCKS} (account_id) VALUES (:account_id)"),
            [{"account_id": account} for account in unlocked],
        )
        conn.execute(text(f"DROP TABLE {_PLAN}"))


def _scope(settlement: _Settlement) -> str:
    """The SELECT of the accounts whose period a settlement settles."""
    if settlement.accounts is None:
        return "SELECT account_id FROM prepaid_account"
    return f"SELECT account_id FROM {_SCOPE}"


def _period(settlement: _Settlement) -> dict[str, datetime]:
    return {"period_start": settlement.start, "period_end": settlement.end}


def _plan(conn: Connection, settlement: _Settlement | None, new_calls_only: bool) -> None:
    """Each call's outcome and the keys of the entries it needs, in the scratch table _PLAN."""
    redelivered = "1 = 1" if new_calls_only else "1 = 0"
    joins, kind = _CURRENT_DEBITS["postgresql" if _postgres(conn) else "sqlite"]
    _temporary(
        conn,
        _PLAN,
        _PLAN_CALLS.format(new_calls_only=redelivered, current_debits=joins, debit_kind=kind),
    )
    if settlement is not None:
        _execute(conn, _PLAN_UNSETTLED.format(scope=_scope(settlement)), _period(settlement))


def _execute(conn: Connection, sql: str, params: dict) -> None:
    """Run a statement with the parameters it names, timestamps bound as such (SQLite stores
    SQLAlchemy's text of them)."""
    named = {name: value for name, value in params.items() if f":{name}" in sql}
    statement = text(sql).bindparams(
        *(bindparam(name, type_=_TIMES[name]) for name in named if name in _TIMES)
    )
    conn.execute(statement, named)


def _outcome_counts(conn: Connection) -> dict[str, int]:
    """The plan's calls per outcome (every outcome, 0 when none)."""
    return dict.fromkeys(OUTCOMES, 0) | {
        outcome: int(count)
        for outcome, count in conn.execute(
            text(f"SELECT outcome, COUNT(*) FROM {_PLAN} GROUP BY outcome")
        ).all()
    }


def _summary(conn: Connection, counts: dict[str, int]) -> DebitSummary:
    rows = conn.execute(
        text(f"SELECT call_key, account_id, outcome, reason FROM {_PLAN} ORDER BY call_key")
    ).all()
    outcomes = pd.DataFrame(
        [row[:3] for row in rows], columns=["call_key", "account_id", "outcome"]
    )
    refused = [(row[0], row[1], row[3]) for row in rows if row[2] == "refused"]
    balances = conn.execute(
        text(
            "SELECT a.account_id, a.balance_minor FROM prepaid_account a "
            f"JOIN {_LOCKS} l ON l.account_id = a.account_id"
        )
    ).all()
    return DebitSummary(
        **{name: int(counts[name]) for name in OUTCOMES},
        balances={account: int(balance) for account, balance in balances},
        refused_calls=tuple(RefusedCall(*row) for row in refused),
        outcomes=outcomes,
    )


# The accounts to lock first: the calls' and those of the calls' current debits. Each call's
# debit is looked up by its key (a subquery per call: a join would hash the whole call_debit,
# which grows by every call of the month).
_WANTED_ACCOUNTS = f"""INSERT INTO {_LOCKS} (account_id)
SELECT account_id FROM {_CALLS.name} WHERE account_id IS NOT NULL
UNION SELECT debited.account_id FROM (
  SELECT (SELECT d.account_id FROM call_debit d WHERE d.call_key = c.call_key) AS account_id
  FROM {_CALLS.name} c
) debited
WHERE debited.account_id IS NOT NULL"""

# settle_calls: the debits of the period's accounts ({scope}: their SELECT)
_PERIOD_DEBITS = """FROM call_debit d JOIN balance_entry e ON e.entry_id = d.entry_id
WHERE e.kind = 'debit' AND e.call_start >= :period_start AND e.call_start < :period_end
  AND d.account_id IN ({scope})"""
_WANTED_UNSETTLED = f"""INSERT INTO {_LOCKS} (account_id)
SELECT DISTINCT d.account_id {_PERIOD_DEBITS}
  AND d.account_id NOT IN (SELECT account_id FROM {_LOCKS})"""

# Each call of the run: its outcome against its current debit (call_debit), then the keys of
# the entries the outcome needs. Revision r's debit is `debit:{call_key}:{r}`; re-rating
# reverses it as `reversal:{call_key}:{r}` and debits r + 1. A debit settled at 0 (its entry
# a reversal) has nothing left to reverse: the call is debited again.
_PLAN_CALLS = f"""AS
SELECT x.*,
  CASE WHEN x.outcome IN ('debited', 'rerated')
    THEN 'debit:' || x.call_key || ':' || CAST(COALESCE(x.old_revision, 0) + 1 AS TEXT)
  END AS debit_key,
  COALESCE(x.old_revision, 0) + 1 AS new_revision,
  CASE WHEN x.outcome = 'rerated'
    THEN 'reversal:' || x.call_key || ':' || CAST(x.old_revision AS TEXT)
  END AS reversal_key
FROM (
  SELECT c.call_key, c.account_id, c.cost_minor, c.currency, c.call_start, c.billed_seconds,
    c.tariff_version, c.source_file, c.source_row,
    d.account_id AS old_account_id, d.entry_id AS old_entry_id, d.revision AS old_revision,
    CASE
      WHEN a.account_id IS NULL OR NOT a.active THEN 'not_prepaid'
      WHEN c.currency <> a.currency OR c.cost_minor < 0 THEN 'refused'
      WHEN d.call_key IS NULL OR {{debit_kind}} <> 'debit' THEN 'debited'
      WHEN d.account_id = c.account_id AND d.cost_minor = c.cost_minor THEN 'unchanged'
      WHEN {{new_calls_only}} THEN 'redelivered'
      ELSE 'rerated'
    END AS outcome,
    CASE
      WHEN a.account_id IS NULL OR NOT a.active THEN NULL
      WHEN c.currency <> a.currency
        THEN 'currency ' || c.currency || ' is not the account''s ' || a.currency
      WHEN c.cost_minor < 0 THEN 'negative cost ' || CAST(c.cost_minor AS TEXT)
    END AS reason
  FROM {_CALLS.name} c
  LEFT JOIN prepaid_account a ON a.account_id = c.account_id
  {{current_debits}}
) x"""

# Each call's current debit and its entry's kind. On PostgreSQL looked up by the call's key
# (LATERAL ... LIMIT 1 keeps it a lookup: a join may hash the whole of call_debit, which grows
# by every call of the month, and does so when its statistics are stale); SQLite's joins are
# lookups anyway.
_CURRENT_DEBITS = {
    "postgresql": (
        """LEFT JOIN LATERAL (
    SELECT cd.call_key, cd.account_id, cd.entry_id, cd.revision, cd.cost_minor, ce.kind
    FROM call_debit cd JOIN balance_entry ce ON ce.entry_id = cd.entry_id
    WHERE cd.call_key = c.call_key LIMIT 1
  ) d ON 1 = 1""",
        "d.kind",
    ),
    "sqlite": (
        """LEFT JOIN call_debit d ON d.call_key = c.call_key
  LEFT JOIN balance_entry e ON e.entry_id = d.entry_id""",
        "e.kind",
    ),
}

# settle_calls: the period's debits of the accounts in scope that no call of the run keeps
_PLAN_UNSETTLED = f"""INSERT INTO {_PLAN} (call_key, account_id, cost_minor, currency,
  call_start, billed_seconds, tariff_version, source_file, source_row, old_account_id,
  old_entry_id, old_revision, outcome, reason, debit_key, new_revision, reversal_key)
SELECT d.call_key, d.account_id, 0, e.currency, e.call_start, e.billed_seconds,
  e.tariff_version, e.source_file, e.source_row, d.account_id, d.entry_id, d.revision,
  'reversed', NULL, NULL, NULL, 'reversal:' || d.call_key || ':' || CAST(d.revision AS TEXT)
{_PERIOD_DEBITS}
  AND NOT EXISTS (
    SELECT 1 FROM {_PLAN} p WHERE p.call_key = d.call_key AND p.outcome <> 'not_prepaid')"""

_UNLOCKED_ACCOUNTS = f"""SELECT account_id FROM {_PLAN} WHERE debit_key IS NOT NULL
UNION SELECT old_account_id FROM {_PLAN} WHERE reversal_key IS NOT NULL
EXCEPT SELECT account_id FROM {_LOCKS}"""

_ENTRY_COLUMNS = """account_id, kind, amount_minor, currency, idempotency_key, call_key,
  reverses_entry_id, call_start, billed_seconds, tariff_version, source_file, source_row,
  run_id, reason, created_by, created_at"""

# Reversals first (the old debit's details, opposite amount), then the debits.
_POST_REVERSALS = f"""INSERT INTO balance_entry ({_ENTRY_COLUMNS})
SELECT p.old_account_id, 'reversal', -e.amount_minor, e.currency, p.reversal_key, p.call_key,
  e.entry_id, e.call_start, e.billed_seconds, e.tariff_version, e.source_file, e.source_row,
  :run_id,
  CASE WHEN p.outcome = 'reversed' THEN '{UNSETTLED}'
    WHEN p.account_id <> p.old_account_id THEN '{MOVED}'
    ELSE '{RERATED}' END,
  :created_by, :now
FROM {_PLAN} p JOIN balance_entry e ON e.entry_id = p.old_entry_id
WHERE p.reversal_key IS NOT NULL
ORDER BY p.call_key"""

_POST_DEBITS = f"""INSERT INTO balance_entry ({_ENTRY_COLUMNS})
SELECT p.account_id, 'debit', -p.cost_minor, p.currency, p.debit_key, p.call_key, NULL,
  p.call_start, p.billed_seconds, p.tariff_version, p.source_file, p.source_row, :run_id, NULL,
  :created_by, :now
FROM {_PLAN} p
WHERE p.debit_key IS NOT NULL
ORDER BY p.call_key"""

_RECORD_DEBITS = f"""INSERT INTO call_debit (call_key, account_id, entry_id, cost_minor, revision)
SELECT p.call_key, p.account_id, e.entry_id, p.cost_minor, p.new_revision
FROM {_PLAN} p JOIN balance_entry e ON e.idempotency_key = p.debit_key
WHERE p.debit_key IS NOT NULL
ON CONFLICT (call_key) DO UPDATE SET account_id = excluded.account_id,
  entry_id = excluded.entry_id, cost_minor = excluded.cost_minor, revision = excluded.revision"""

_SETTLE_AT_ZERO = f"""UPDATE call_debit SET entry_id = e.entry_id, cost_minor = 0
FROM {_PLAN} p JOIN balance_entry e ON e.idempotency_key = p.reversal_key
WHERE p.outcome = 'reversed' AND call_debit.call_key = p.call_key"""

# The cache moves by the sum of the entries just posted (their keys are in the plan).
_UPDATE_BALANCES = f"""UPDATE prepaid_account
SET balance_minor = prepaid_account.balance_minor + posted.delta,
  last_entry_id = posted.last_entry_id, updated_at = :now
FROM (
  SELECT e.account_id AS account_id, SUM(e.amount_minor) AS delta,
    MAX(e.entry_id) AS last_entry_id
  FROM balance_entry e JOIN (
    SELECT debit_key AS posted_key FROM {_PLAN} WHERE debit_key IS NOT NULL
    UNION ALL SELECT reversal_key FROM {_PLAN} WHERE reversal_key IS NOT NULL
  ) k ON e.idempotency_key = k.posted_key
  GROUP BY e.account_id
) posted
WHERE prepaid_account.account_id = posted.account_id"""

# PostgreSQL: the cache moved by the reversals just posted (the debits move it with their own
# statement; the debits' entry ids are the higher ones, so they set last_entry_id last).
_UPDATE_BALANCES_BY_REVERSALS = f"""UPDATE prepaid_account
SET balance_minor = prepaid_account.balance_minor + posted.delta,
  last_entry_id = posted.last_entry_id, updated_at = :now
FROM (
  SELECT e.account_id AS account_id, SUM(e.amount_minor) AS delta,
    MAX(e.entry_id) AS last_entry_id
  FROM balance_entry e JOIN {_PLAN} p ON e.idempotency_key = p.reversal_key
  WHERE p.reversal_key IS NOT NULL
  GROUP BY e.account_id
) posted
WHERE prepaid_account.account_id = posted.account_id"""

# PostgreSQL: the debits, each call's current debit and the cache in one statement, fed by the
# debits' RETURNING rows. Its parts touch different rows (call_debit: the debited calls; the
# settled-at-0 ones were updated before), as a data-modifying WITH requires.
_POST_AND_RECORD_DEBITS = f"""WITH posted AS (
  {_POST_DEBITS}
  RETURNING entry_id, account_id, amount_minor, call_key
), recorded AS (
  INSERT INTO call_debit (call_key, account_id, entry_id, cost_minor, revision)
  SELECT d.call_key, d.account_id, d.entry_id, p.cost_minor, p.new_revision
  FROM posted d JOIN {_PLAN} p ON p.call_key = d.call_key AND p.debit_key IS NOT NULL
  ON CONFLICT (call_key) DO UPDATE SET account_id = excluded.account_id,
    entry_id = excluded.entry_id, cost_minor = excluded.cost_minor,
    revision = excluded.revision
)
UPDATE prepaid_account
SET balance_minor = prepaid_account.balance_minor + moved.delta,
  last_entry_id = moved.last_entry_id, updated_at = :now
FROM (
  SELECT account_id, SUM(amount_minor) AS delta, MAX(entry_id) AS last_entry_id
  FROM posted GROUP BY account_id
) moved
WHERE prepaid_account.account_id = moved.account_id"""
