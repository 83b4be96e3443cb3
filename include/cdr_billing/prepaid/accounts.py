"""Prepaid accounts: which CDR users are prepaid, in which currency, and their levels. They live
in the billing database, managed by this command (and the UI), never in code; every change is
audited in `prepaid_account_change` (who, when, the settings after it) in its transaction.

    python -m cdr_billing.prepaid.accounts add ACCOUNT --currency EUR --low-balance 5.00 \\
        --topup 20.00 --lock-level 0.00 --unlock-level 2.00 [--payment-method REF] \\
        [--max-concurrent-calls 1] --operator NAME
    python -m cdr_billing.prepaid.accounts set ACCOUNT [any of add's options] \\
        [--no-payment-method] [--active yes|no] --operator NAME
    python -m cdr_billing.prepaid.accounts deactivate ACCOUNT --operator NAME
    python -m cdr_billing.prepaid.accounts list [--active-only]
    python -m cdr_billing.prepaid.accounts show ACCOUNT
    python -m cdr_billing.prepaid.accounts credit ACCOUNT AMOUNT --kind topup|credit|refund|\\
        adjustment --reason TEXT --operator NAME [--key KEY]
    python -m cdr_billing.prepaid.accounts ledger ACCOUNT [--last N]

Each takes --conn (an Airflow connection id, default the pipeline config's) or --url.
Amounts are decimal text in the account's currency ("5.00" EUR is 500 cents): no more
decimals than the currency has, no exponent, no thousands separator. The levels may be
negative (an overdraft the account may run to); the top-up amount may not. A balance below
low-balance requests a top-up; at or below lock-level the line is locked; above unlock-level
it is unlocked again.

A manual entry (`credit`): topup, credit and refund add money (amount > 0); an adjustment
corrects either way (not 0), e.g. paying a closed account's balance out. Its key (`--key`,
default a fresh UUID) makes a retried command post once: the same key again changes nothing,
and is refused if it was used for another account, kind or amount.
Bad input exits 2 with one line naming the field and the reason.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import NoReturn

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from cdr_billing import database, migrations
from cdr_billing.money import MAX_SUM_MINOR, MoneyError, from_minor_units, minor_digits
from cdr_billing.prepaid.balances import LedgerError, Posted, ledger_balance, lock_accounts, post
from cdr_billing.prepaid.locks import LockChange, apply_lock_rules
from cdr_billing.schema import balance_entry, prepaid_account, prepaid_account_change

MANUAL_KINDS = ("topup", "credit", "refund", "adjustment")
MAX_CONCURRENT_CALLS = 10_000
MAX_TEXT = 128  # account ids, operator names, payment method references
MAX_KEY = 200  # an operator's idempotency key, stored as "manual:{key}" (250 at most)
# decimal text: optional minus, digits, optional point and digits; nothing else
AMOUNT_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class AccountError(ValueError):
    """A setting or an operator's action refused, naming the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class AccountSettings:
    """What an operator sets on a prepaid account (amounts in minor units)."""

    currency: str
    low_balance_minor: int
    topup_minor: int
    lock_level_minor: int
    unlock_level_minor: int
    payment_method_ref: str | None = None
    max_concurrent_calls: int = 1
    active: bool = True

    def checked(self) -> AccountSettings:
        """These settings, normalised, or AccountError for the first one refused."""
        currency = _checked_currency(self.currency)
        payment = self.payment_method_ref
        if payment is not None:
            payment = _checked_text("payment_method_ref", payment)
        for name in ("low_balance_minor", "topup_minor", "lock_level_minor", "unlock_level_minor"):
            _checked_amount(name, getattr(self, name))
        if self.topup_minor <= 0:
            raise AccountError("topup_minor", "must be more than 0")
        if self.unlock_level_minor < self.lock_level_minor:
            raise AccountError("unlock_level_minor", "must be at least the lock level")
        if self.low_balance_minor < self.lock_level_minor:
            raise AccountError("low_balance_minor", "must be at least the lock level")
        calls = self.max_concurrent_calls
        if isinstance(calls, bool) or not isinstance(calls, int):
            raise AccountError("max_concurrent_calls", "must be a whole number")
        if not 1 <= calls <= MAX_CONCURRENT_CALLS:
            raise AccountError("max_concurrent_calls", f"must be 1 to {MAX_CONCURRENT_CALLS}")
        if not isinstance(self.active, bool):
            raise AccountError("active", "must be true or false")
        return replace(self, currency=currency, payment_method_ref=payment)

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


SETTINGS_FIELDS = tuple(f.name for f in fields(AccountSettings))


@dataclass(frozen=True)
class AccountDetails:
    """An account's row and its settings' history, oldest first."""

    account: dict
    changes: list[dict]


def parse_amount(text: str, currency: str, field: str, negative: bool = True) -> int:
    """Decimal text in a currency -> integer minor units ("5.00" EUR -> 500); refuse more
    decimals than the currency has, an exponent or separator, and a minus unless `negative`."""
    digits = minor_digits(_checked_currency(currency))
    written = str(text).strip()
    if not AMOUNT_TEXT.fullmatch(written):
        raise AccountError(field, f"{text!r} is not a decimal amount like 12.50")
    if written.startswith("-") and not negative:
        raise AccountError(field, f"{text!r} is negative")
    decimals = len(written.partition(".")[2])
    if decimals > digits:
        raise AccountError(field, f"{text!r} has more decimals than {currency}'s {digits}")
    minor = int(Decimal(written).scaleb(digits))
    return _checked_amount(field, minor)


def format_amount(minor: int, currency: str) -> str:
    return f"{from_minor_units(minor, currency)} {currency}"


def add(
    conn: Connection, account_id: str, settings: AccountSettings, changed_by: str
) -> AccountSettings:
    """Make a CDR user a prepaid account (balance 0, line unlocked); audited."""
    account_id = _checked_text("account_id", account_id)
    changed_by = _checked_text("operator", changed_by)
    settings = settings.checked()
    if _row(conn, account_id) is not None:
        raise AccountError("account_id", f"{account_id!r} is already a prepaid account")
    conn.execute(
        insert(prepaid_account).values(
            account_id=account_id,
            **asdict(settings),
            balance_minor=0,
            last_entry_id=None,
            locked=False,
            updated_at=datetime.now(UTC),
        )
    )
    _audit(conn, account_id, settings, changed_by)
    return settings


def update(
    conn: Connection, account_id: str, changes: Mapping[str, object], changed_by: str
) -> AccountSettings:
    """Change some of an account's settings (under its row lock); audited. The currency
    cannot change once the account has ledger entries (they are in the old one)."""
    changed_by = _checked_text("operator", changed_by)
    unknown = sorted(set(changes) - set(SETTINGS_FIELDS))
    if unknown:
        raise AccountError(unknown[0], "is not an account setting")
    row = _locked_row(conn, account_id)
    before = _settings_of(row)
    after = replace(before, **changes).checked()
    if after.currency != before.currency and _has_entries(conn, account_id):
        raise AccountError("currency", "cannot change once the account has ledger entries")
    conn.execute(
        prepaid_account.update()
        .where(prepaid_account.c.account_id == account_id)
        .values(**asdict(after))
    )
    _audit(conn, account_id, after, changed_by)
    return after


def deactivate(conn: Connection, account_id: str, changed_by: str) -> AccountSettings:
    """Stop debiting an account's calls (they are post-paid again); audited."""
    return update(conn, account_id, {"active": False}, changed_by)


def list_accounts(conn: Connection, active_only: bool = False) -> list[dict]:
    """Every prepaid account's row, by id."""
    query = select(prepaid_account).order_by(prepaid_account.c.account_id)
    if active_only:
        query = query.where(prepaid_account.c.active)
    return [dict(row) for row in conn.execute(query).mappings()]


def show(conn: Connection, account_id: str) -> AccountDetails:
    """An account's row and the history of its settings."""
    row = _row(conn, account_id)
    if row is None:
        raise AccountError("account_id", f"no prepaid account {account_id!r}")
    changes = conn.execute(
        select(prepaid_account_change)
        .where(prepaid_account_change.c.account_id == account_id)
        .order_by(prepaid_account_change.c.change_id)
    ).mappings()
    return AccountDetails(row, [dict(change) for change in changes])


def post_manual(
    conn: Connection,
    account_id: str,
    kind: str,
    amount_minor: int,
    reason: str,
    operator: str,
    key: str | None = None,
) -> Posted:
    """An operator's top-up, credit, refund or adjustment, posted once per key (a retried
    command posts nothing more); created_by is the operator, the reason is stored."""
    if kind not in MANUAL_KINDS:
        raise AccountError("kind", f"must be one of {', '.join(MANUAL_KINDS)}")
    reason = _checked_reason(reason)
    operator = _checked_text("operator", operator)
    key = _checked_key(str(uuid.uuid4()) if key is None else key)
    _checked_amount("amount", amount_minor)
    if kind == "adjustment" and amount_minor == 0:
        raise AccountError("amount", "an adjustment must not be 0")
    if kind != "adjustment" and amount_minor <= 0:
        raise AccountError("amount", f"a {kind} must be more than 0")
    account = _locked_row(conn, account_id)
    idempotency_key = f"manual:{key}"
    before = (
        conn.execute(
            select(balance_entry).where(balance_entry.c.idempotency_key == idempotency_key)
        )
        .mappings()
        .first()
    )
    if before is not None and (
        before["account_id"],
        before["kind"],
        before["amount_minor"],
    ) != (account_id, kind, amount_minor):
        raise AccountError("key", f"{key!r} was used for another entry ({before['entry_id']})")
    return post(conn, account, kind, amount_minor, idempotency_key, operator, reason=reason)


@dataclass(frozen=True)
class Recorded:
    """An operator's entry (or the one its key posted before) and the lock changes it made."""

    posted: Posted
    amount_minor: int
    currency: str
    lock_changes: list[LockChange]


def record_manual(
    conn: Connection,
    account_id: str,
    kind: str,
    amount_text: str,
    reason: str,
    operator: str,
    key: str | None = None,
) -> Recorded:
    """What an operator records at the desk (the `credit` command, the Prepaid page's form): the
    amount read in the account's currency, the entry posted once per key and the lock rules
    applied in the same transaction, so a top-up at the desk unlocks the line at once (the
    switch hears it with the next prepaid run)."""
    currency = show(conn, account_id).account["currency"]
    amount = parse_amount(amount_text, currency, "amount")
    posted = post_manual(conn, account_id, kind, amount, reason, operator, key)
    changes = apply_lock_rules(conn, [account_id], f"{kind} by {operator}", created_by=operator)
    return Recorded(posted, amount, currency, changes)


def ledger(conn: Connection, account_id: str, last: int | None = None) -> list[dict]:
    """An account's entries, oldest first (the `last` ones only, if given)."""
    show(conn, account_id)
    query = (
        select(balance_entry)
        .where(balance_entry.c.account_id == account_id)
        .order_by(balance_entry.c.entry_id.desc())
    )
    if last is not None:
        query = query.limit(last)
    return [dict(row) for row in conn.execute(query).mappings()][::-1]


def _settings_of(row: Mapping) -> AccountSettings:
    return AccountSettings(**{name: row[name] for name in SETTINGS_FIELDS})


def _row(conn: Connection, account_id: str) -> dict | None:
    row = (
        conn.execute(select(prepaid_account).where(prepaid_account.c.account_id == account_id))
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def _locked_row(conn: Connection, account_id: str) -> dict:
    """The account's row, locked to the end of the transaction (as the ledger's writers do)."""
    row = lock_accounts(conn, [account_id]).get(account_id)
    if row is None:
        raise AccountError("account_id", f"no prepaid account {account_id!r}")
    return row


def _has_entries(conn: Connection, account_id: str) -> bool:
    return bool(
        conn.execute(
            select(func.count())
            .select_from(balance_entry)
            .where(balance_entry.c.account_id == account_id)
        ).scalar_one()
    )


def _audit(conn: Connection, account_id: str, settings: AccountSettings, changed_by: str) -> None:
    conn.execute(
        insert(prepaid_account_change).values(
            account_id=account_id,
            changed_by=changed_by,
            changed_at=datetime.now(UTC),
            settings=settings.as_json(),
        )
    )


def _checked_currency(currency: object) -> str:
    code = str(currency).strip().upper()
    try:
        minor_digits(code)
    except MoneyError:
        raise AccountError(
            "currency", f"{currency!r} is not an ISO 4217 currency code with minor units"
        ) from None
    return code


def _checked_amount(field: str, minor: object) -> int:
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise AccountError(field, "must be whole minor units")
    if abs(minor) >= MAX_SUM_MINOR:
        raise AccountError(field, "is too large")
    return minor


def _checked_text(field: str, value: object) -> str:
    """A name or reference: not empty, no surrounding blanks nor control characters."""
    if not isinstance(value, str) or not value.strip():
        raise AccountError(field, "must not be empty")
    if value != value.strip():
        raise AccountError(field, "must not start or end with blanks")
    if len(value) > MAX_TEXT:
        raise AccountError(field, f"is longer than {MAX_TEXT} characters")
    if not value.isprintable():
        raise AccountError(field, "must not contain control characters")
    return value


def _checked_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise AccountError("reason", "must not be empty")
    return reason.strip()


def _checked_key(key: str) -> str:
    if not key or len(key) > MAX_KEY or not key.isprintable() or key != key.strip():
        raise AccountError("key", f"must be 1 to {MAX_KEY} printable characters")
    return key


# ---------------------------------------------------------------------------------------------
# The command


class _Parser(argparse.ArgumentParser):
    """argparse, its errors on one line (exit 2), as the command's other refusals."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m cdr_billing.prepaid.accounts",
        description="Prepaid accounts: their settings, manual entries and ledger.",
    )
    database.add_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    add_command = commands.add_parser("add", help="make a CDR user a prepaid account")
    _settings_options(add_command, required=True)
    set_command = commands.add_parser("set", help="change some of an account's settings")
    _settings_options(set_command, required=False)
    set_command.add_argument(
        "--no-payment-method", action="store_true", help="no automatic top-up any more"
    )
    set_command.add_argument("--active", choices=["yes", "no"])
    off = commands.add_parser("deactivate", help="stop debiting an account's calls")
    off.add_argument("account")
    off.add_argument("--operator", required=True, help="who makes the change (audited)")
    listing = commands.add_parser("list", help="the prepaid accounts")
    listing.add_argument("--active-only", action="store_true")
    commands.add_parser("show", help="an account's settings and history").add_argument("account")
    credit = commands.add_parser("credit", help="post a manual top-up, credit, refund, adjustment")
    credit.add_argument("account")
    credit.add_argument("amount", help="decimal text in the account's currency, e.g. 10.00")
    credit.add_argument("--kind", choices=MANUAL_KINDS, default="credit")
    credit.add_argument("--reason", required=True)
    credit.add_argument("--operator", required=True, help="who posts it (audited)")
    credit.add_argument("--key", help="idempotency key: a retry with it posts once (default: new)")
    entries = commands.add_parser("ledger", help="an account's entries and balance")
    entries.add_argument("account")
    entries.add_argument("--last", type=int, help="only the last N entries")
    return parser


def _settings_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("account")
    parser.add_argument("--currency", required=required, help="ISO 4217 code, e.g. EUR")
    parser.add_argument("--low-balance", required=required, help="below it: request a top-up")
    parser.add_argument("--topup", required=required, help="the amount a top-up charges")
    parser.add_argument("--lock-level", required=required, help="at or below it: lock the line")
    parser.add_argument("--unlock-level", required=required, help="above it: unlock the line")
    parser.add_argument("--payment-method", help="the payment gateway's reference")
    parser.add_argument("--max-concurrent-calls", type=int, default=1 if required else None)
    parser.add_argument("--operator", required=True, help="who makes the change (audited)")


AMOUNT_OPTIONS = {  # option -> setting
    "low_balance": "low_balance_minor",
    "topup": "topup_minor",
    "lock_level": "lock_level_minor",
    "unlock_level": "unlock_level_minor",
}


def _amounts(args: argparse.Namespace, currency: str) -> dict[str, int]:
    """The amount options given, in minor units of `currency`."""
    return {
        setting: parse_amount(getattr(args, option), currency, setting)
        for option, setting in AMOUNT_OPTIONS.items()
        if getattr(args, option) is not None
    }


def _changes(conn: Connection, args: argparse.Namespace) -> dict[str, object]:
    """`set`'s options as setting changes; amounts in the currency after the change."""
    current = show(conn, args.account).account["currency"]
    changes: dict[str, object] = {}
    if args.currency is not None:
        changes["currency"] = _checked_currency(args.currency)
    changes |= _amounts(args, str(changes.get("currency", current)))
    if args.payment_method is not None and args.no_payment_method:
        raise AccountError("payment_method_ref", "give --payment-method or --no-payment-method")
    if args.payment_method is not None or args.no_payment_method:
        changes["payment_method_ref"] = args.payment_method
    if args.max_concurrent_calls is not None:
        changes["max_concurrent_calls"] = args.max_concurrent_calls
    if args.active is not None:
        changes["active"] = args.active == "yes"
    if not changes:
        raise AccountError("set", "no setting given")
    return changes


def _describe(account_id: str, settings: AccountSettings) -> str:
    currency = settings.currency
    return (
        f"{account_id}: {currency}"
        f", low balance {format_amount(settings.low_balance_minor, currency)}"
        f", top-up {format_amount(settings.topup_minor, currency)}"
        f", lock at {format_amount(settings.lock_level_minor, currency)}"
        f", unlock above {format_amount(settings.unlock_level_minor, currency)}"
        f", payment method {settings.payment_method_ref or 'none'}"
        f", max {settings.max_concurrent_calls} concurrent calls"
        f", {'active' if settings.active else 'inactive'}"
    )


def _account_line(row: Mapping) -> str:
    state = "line locked" if row["locked"] else "line unlocked"
    return (
        f"{_describe(row['account_id'], _settings_of(row))}; balance "
        f"{format_amount(row['balance_minor'], row['currency'])} ({state})"
    )


def _entry_line(entry: Mapping) -> str:
    details = [entry["call_key"], entry["reason"]]
    return (
        f"{entry['entry_id']:>8}  {entry['created_at']:%Y-%m-%d %H:%M:%S}  {entry['kind']:<10} "
        f"{format_amount(entry['amount_minor'], entry['currency']):>16}  "
        f"{entry['idempotency_key']}  by {entry['created_by']}"
        + "".join(f"  {detail}" for detail in details if detail)
    )


def _run(conn: Connection, args: argparse.Namespace) -> None:
    """Carry out one command in the caller's transaction; print what it did."""
    if args.command == "add":
        settings = AccountSettings(
            currency=_checked_currency(args.currency),
            payment_method_ref=args.payment_method,
            max_concurrent_calls=args.max_concurrent_calls,
            **_amounts(args, _checked_currency(args.currency)),
        )
        print("added " + _describe(args.account, add(conn, args.account, settings, args.operator)))
    elif args.command == "set":
        after = update(conn, args.account, _changes(conn, args), args.operator)
        print("changed " + _describe(args.account, after))
    elif args.command == "deactivate":
        print(
            "deactivated " + _describe(args.account, deactivate(conn, args.account, args.operator))
        )
    elif args.command == "list":
        for row in list_accounts(conn, args.active_only):
            print(_account_line(row))
    elif args.command == "show":
        details = show(conn, args.account)
        print(_account_line(details.account))
        for change in details.changes:
            print(
                f"  {change['changed_at']:%Y-%m-%d %H:%M:%S} by {change['changed_by']}: "
                f"{change['settings']}"
            )
    elif args.command == "credit":
        recorded = record_manual(
            conn, args.account, args.kind, args.amount, args.reason, args.operator, args.key
        )
        posted, currency = recorded.posted, recorded.currency
        print(
            f"{args.kind} {format_amount(recorded.amount_minor, currency)} "
            f"{'posted as entry' if posted.new else 'already posted: entry'} {posted.entry_id}; "
            f"balance {format_amount(posted.balance_minor, currency)}"
        )
        for change in recorded.lock_changes:
            print(f"line {change.action}: {change.reason}")
    else:
        details = show(conn, args.account)
        for entry in ledger(conn, args.account, args.last):
            print(_entry_line(entry))
        account = details.account
        summed = ledger_balance(conn, args.account)
        print(
            f"balance {format_amount(account['balance_minor'], account['currency'])}"
            + (
                ""
                if summed == account["balance_minor"]
                else f" (cached; its entries sum to {format_amount(summed, account['currency'])})"
            )
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "last", None) is not None and args.last < 1:
        print("error: last: must be at least 1", file=sys.stderr)
        return 2
    engine = database.engine_from_arguments(args)
    if not migrations.at_head(engine):
        print(
            "error: the billing database is not at this release's schema: run "
            "python -m cdr_billing.migrations upgrade (with the same --conn or --url) first",
            file=sys.stderr,
        )
        return 2
    try:
        with engine.begin() as conn:
            _run(conn, args)
    except (AccountError, LedgerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
