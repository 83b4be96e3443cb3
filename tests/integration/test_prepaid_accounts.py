"""Prepaid accounts on a real PostgreSQL (and the command on SQLite, the demo's database): the
documented command end to end, its refusals naming the field, every change audited, and an
operator's manual entries posted once per key."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid import accounts
from cdr_billing.prepaid.accounts import AccountError, AccountSettings, parse_amount
from cdr_billing.schema import balance_entry, prepaid_account, prepaid_account_change

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SETTINGS = AccountSettings(
    currency="EUR",
    low_balance_minor=500,
    topup_minor=2000,
    lock_level_minor=0,
    unlock_level_minor=100,
)
ADD_OPTIONS = [
    "--currency",
    "EUR",
    "--low-balance",
    "5.00",
    "--topup",
    "20.00",
    "--lock-level",
    "0",
    "--unlock-level",
    "1.00",
    "--operator",
    "alice",
]


@pytest.fixture(scope="module")
def url(postgres) -> str:
    database_url = postgres.url_of(postgres.create_database("prepaid_accounts"))
    upgrade(create_engine(database_url))
    return database_url


@pytest.fixture(scope="module")
def pg(url) -> Engine:
    return create_engine(url)


def fresh_id() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def command(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdr_billing.prepaid.accounts", "--url", url, *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
    )


def run_main(argv: list[str]) -> int:
    """The command in this process (argparse's own refusals exit)."""
    try:
        return accounts.main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def changes(engine: Engine, account: str) -> list[tuple[str, dict]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(prepaid_account_change.c.changed_by, prepaid_account_change.c.settings)
            .where(prepaid_account_change.c.account_id == account)
            .order_by(prepaid_account_change.c.change_id)
        ).all()
    return [(by, json.loads(settings)) for by, settings in rows]


def test_the_command_adds_sets_credits_once_and_prints_the_ledger(url, pg):
    account = fresh_id()
    added = command(url, "add", account, *ADD_OPTIONS, "--payment-method", "pm_visa_1")
    assert added.returncode == 0, added.stderr
    assert "low balance 5.00 EUR, top-up 20.00 EUR" in added.stdout
    changed = command(url, "set", account, "--low-balance", "7.50", "--operator", "bob")
    assert changed.returncode == 0 and "low balance 7.50 EUR" in changed.stdout
    topup = ["--kind", "topup", "--reason", "cash at the desk", "--operator", "carol"]
    credited = [command(url, "credit", account, "12.34", *topup, "--key", "desk-1") for _ in "12"]
    assert [c.returncode for c in credited] == [0, 0]
    assert "posted as entry" in credited[0].stdout and "balance 12.34 EUR" in credited[0].stdout
    assert "already posted" in credited[1].stdout
    ledger = command(url, "ledger", account)
    assert ledger.returncode == 0
    lines = ledger.stdout.splitlines()
    assert len(lines) == 2 and "topup" in lines[0] and "12.34 EUR" in lines[0]
    assert "by carol" in lines[0] and "cash at the desk" in lines[0]
    assert lines[1] == "balance 12.34 EUR"
    shown = command(url, "show", account)
    assert shown.returncode == 0 and "balance 12.34 EUR" in shown.stdout
    assert "by alice" in shown.stdout and "by bob" in shown.stdout
    listed = command(url, "list")
    assert account in listed.stdout
    with pg.connect() as conn:
        entry = conn.execute(
            select(balance_entry).where(balance_entry.c.account_id == account)
        ).one()
    assert (entry.kind, entry.amount_minor, entry.created_by) == ("topup", 1234, "carol")
    assert (entry.reason, entry.idempotency_key) == ("cash at the desk", "manual:desk-1")
    assert [by for by, _ in changes(pg, account)] == ["alice", "bob"]
    assert changes(pg, account)[-1][1] == {
        "currency": "EUR",
        "low_balance_minor": 750,
        "topup_minor": 2000,
        "lock_level_minor": 0,
        "unlock_level_minor": 100,
        "payment_method_ref": "pm_visa_1",
        "max_concurrent_calls": 1,
        "active": True,
    }


def test_a_refusal_exits_2_with_one_line_naming_the_field(url):
    account = fresh_id()
    bad = command(url, "add", account, *ADD_OPTIONS[:3], "5.001", *ADD_OPTIONS[4:])
    assert bad.returncode == 2
    assert bad.stderr == "error: low_balance_minor: '5.001' has more decimals than EUR's 2\n"
    missing = command(url, "credit", account, "1.00", "--operator", "carol")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "--reason" in missing.stderr


@pytest.mark.parametrize(
    ("args", "field", "reason"),
    [
        (["--low-balance", "1e3"], "low_balance_minor", "is not a decimal amount"),
        (["--topup", "-20.00"], "topup_minor", "must be more than 0"),
        (["--topup", "0"], "topup_minor", "must be more than 0"),
        (["--currency", "XAU"], "currency", "not an ISO 4217 currency code"),
        (
            ["--currency", "JPY", "--low-balance", "5", "--topup", "20.00", "--unlock-level", "1"],
            "topup_minor",
            "more decimals than JPY's 0",
        ),
        (["--unlock-level", "-0.01"], "unlock_level_minor", "at least the lock level"),
        (["--low-balance", "-1.00"], "low_balance_minor", "at least the lock level"),
        (["--max-concurrent-calls", "0"], "max_concurrent_calls", "must be 1 to"),
        (["--payment-method", " pm"], "payment_method_ref", "blanks"),
        (["--operator", ""], "operator", "must not be empty"),
    ],
)
def test_add_refuses_bad_settings_naming_the_field(url, pg, capsys, args, field, reason):
    account = fresh_id()
    options = dict(zip(ADD_OPTIONS[::2], ADD_OPTIONS[1::2], strict=True)) | dict(
        zip(args[::2], args[1::2], strict=True)
    )
    argv = ["--url", url, "add", account, *(x for pair in options.items() for x in pair)]
    assert run_main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {field}: ") and reason in error and error.count("\n") == 1
    with pg.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).where(prepaid_account.c.account_id == account)
            ).scalar_one()
            == 0
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["credit", "{a}", "1.00", "--reason", " ", "--operator", "c"], "reason: must not be"),
        (["credit", "{a}", "0.00", "--reason", "r", "--operator", "c"], "amount: a credit must be"),
        (["credit", "{a}", "-1", "--kind", "refund", "--reason", "r", "--operator", "c"], "refund"),
        (["credit", "{a}", "1,000.00", "--reason", "r", "--operator", "c"], "amount: '1,000.00'"),
        (
            ["credit", "nobody", "1.00", "--reason", "r", "--operator", "c"],
            "account_id: no prepaid",
        ),
        (["set", "{a}", "--operator", "c"], "set: no setting given"),
        (["set", "{a}", "--active", "maybe", "--operator", "c"], "invalid choice: 'maybe'"),
        (["ledger", "{a}", "--last", "0"], "last: must be at least 1"),
    ],
)
def test_operator_commands_refuse_bad_input(url, pg, capsys, args, message):
    account = fresh_id()
    with pg.begin() as conn:
        accounts.add(conn, account, SETTINGS, "test")
    assert run_main(["--url", url, *(a.format(a=account) for a in args)]) == 2
    assert message in capsys.readouterr().err
    with pg.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).where(balance_entry.c.account_id == account)
            ).scalar_one()
            == 0
        )


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [("5.00", "EUR", 500), ("5", "EUR", 500), ("-0.5", "EUR", -50), ("500", "JPY", 500)]
    + [("1.234", "KWD", 1234), (" 0.01 ", "EUR", 1), ("0", "SEK", 0)],
)
def test_amounts_are_decimal_text_in_the_currency(text, currency, minor):
    assert parse_amount(text, currency, "amount") == minor


@pytest.mark.parametrize(
    "text", ["5.001", "1e3", "+5", ".5", "5.", "NaN", "Infinity", "1 000", "5,00", "", "0x10"]
)
def test_amounts_refuse_what_is_not_plain_decimal_text(text):
    with pytest.raises(AccountError) as refused:
        parse_amount(text, "EUR", "amount")
    assert refused.value.field == "amount"


def test_a_negative_amount_is_refused_where_not_allowed():
    with pytest.raises(AccountError, match="amount: '-1.00' is negative"):
        parse_amount("-1.00", "EUR", "amount", negative=False)


def test_every_change_is_audited_with_the_settings_after_it(pg):
    account = fresh_id()
    with pg.begin() as conn:
        accounts.add(conn, account, SETTINGS, "alice")
        accounts.update(conn, account, {"max_concurrent_calls": 3}, "bob")
        accounts.deactivate(conn, account, "carol")
    history = changes(pg, account)
    assert [by for by, _ in history] == ["alice", "bob", "carol"]
    assert [(s["max_concurrent_calls"], s["active"]) for _, s in history] == [
        (1, True),
        (3, True),
        (3, False),
    ]
    with pg.connect() as conn:
        details = accounts.show(conn, account)
        listed = [a["account_id"] for a in accounts.list_accounts(conn, active_only=True)]
    assert details.account["active"] is False and len(details.changes) == 3
    assert account not in listed


def test_a_refused_change_leaves_no_trace(pg):
    account = fresh_id()
    with pg.begin() as conn:
        accounts.add(conn, account, SETTINGS, "alice")
    with pytest.raises(AccountError, match="lock_level_minor"), pg.begin() as conn:
        accounts.update(conn, account, {"lock_level_minor": 600}, "bob")
    with pytest.raises(AccountError, match="already a prepaid account"), pg.begin() as conn:
        accounts.add(conn, account, SETTINGS, "bob")
    with pytest.raises(AccountError, match="no_such: is not an account setting"):
        with pg.begin() as conn:
            accounts.update(conn, account, {"no_such": 1}, "bob")
    assert [by for by, _ in changes(pg, account)] == ["alice"]


def test_the_currency_changes_only_while_the_ledger_is_empty(pg):
    account = fresh_id()
    with pg.begin() as conn:
        accounts.add(conn, account, SETTINGS, "alice")
        assert accounts.update(conn, account, {"currency": "sek"}, "bob").currency == "SEK"
        accounts.post_manual(conn, account, "credit", 100, "welcome", "bob")
    with pytest.raises(AccountError, match="currency: cannot change"), pg.begin() as conn:
        accounts.update(conn, account, {"currency": "EUR"}, "bob")


def test_manual_entries_post_once_per_key_and_refuse_a_reused_key(pg):
    account = fresh_id()
    with pg.begin() as conn:
        accounts.add(conn, account, SETTINGS, "alice")
    key = f"k-{uuid.uuid4()}"
    with pg.begin() as conn:
        first = accounts.post_manual(conn, account, "refund", 250, "disputed call", "dan", key)
    with pg.begin() as conn:
        again = accounts.post_manual(conn, account, "refund", 250, "disputed call", "dan", key)
    assert first.new and not again.new and again.entry_id == first.entry_id
    with pytest.raises(AccountError, match="key: .* was used for another entry"):
        with pg.begin() as conn:
            accounts.post_manual(conn, account, "refund", 300, "disputed call", "dan", key)
    with pg.begin() as conn:
        adjusted = accounts.post_manual(conn, account, "adjustment", -50, "pay out", "erin")
    assert adjusted.new and adjusted.balance_minor == 200


def test_a_command_retried_at_once_from_two_sessions_posts_once(pg):
    account = fresh_id()
    with pg.begin() as conn:
        accounts.add(conn, account, SETTINGS, "alice")
    start = threading.Barrier(4)
    posted, failures = [], []

    def credit() -> None:
        try:
            start.wait()
            with pg.begin() as conn:
                posted.append(accounts.post_manual(conn, account, "topup", 500, "r", "o", "same"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=credit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(p.new for p in posted) == [False, False, False, True]
    assert len({p.entry_id for p in posted}) == 1
    with pg.connect() as conn:
        row = conn.execute(select(prepaid_account).where(prepaid_account.c.account_id == account))
        assert row.one().balance_minor == 500


def test_the_command_works_on_the_demo_s_sqlite_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'billing.sqlite'}"
    upgrade(create_engine(url))
    assert command(url, "add", "resident-7", *ADD_OPTIONS).returncode == 0
    done = command(
        url, "credit", "resident-7", "3.00", "--reason", "welcome", "--operator", "alice"
    )
    assert done.returncode == 0 and "balance 3.00 EUR" in done.stdout
    ledger = command(url, "ledger", "resident-7")
    assert ledger.stdout.splitlines()[-1] == "balance 3.00 EUR"


def test_the_command_on_a_database_not_upgraded_says_how_to_upgrade_it(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    assert run_main(["--url", url, "list"]) == 2
    error = capsys.readouterr().err
    assert "python -m cdr_billing.migrations upgrade" in error and "Traceback" not in error
