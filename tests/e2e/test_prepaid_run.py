"""The prepaid DAG end to end: a month's carrier CDRs delivered in three files, three prepaid
accounts, real SFTP, PostgreSQL, SMTP, the local HTTPS payment gateway and switch, real DAG
runs (dag.test).

The balances are checked against the gateway's own record of what it charged, the operator's
credits and an independent pricing of the calls (tests/oracle.py), not against the ledger's
helpers."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from email import message_from_bytes
from pathlib import Path

import pendulum
import pytest
from sqlalchemy import create_engine, text

from cdr_billing.migrations import upgrade
from cdr_billing.months import BillingMonth
from cdr_devkit.airflow_env import load_dag, run_dag
from cdr_devkit.sample_data import generate_month
from cdr_devkit.services import connection_env
from oracle import expected_prepaid

MONTH = BillingMonth(2026, 11)
CARRIER = f"cdr/carrier/carrier_cdr_{MONTH.year}{MONTH.month:02d}.csv"
CHUNKS = 3
ZONE = "Europe/Stockholm"
# account role -> the gateway's behaviour for its payment method
ROLES = {"approves": "approve", "declines": "decline", "times_out": "timeout-after-charge"}
TOPUP = Decimal("30.00")


class Month:
    """The served SFTP root, the whole month (the oracle's input) and the carrier's deliveries."""

    def __init__(self, base: Path) -> None:
        self.truth, self.served = base / "truth", base / "served"
        generate_month(self.truth, MONTH, seed=26)
        shutil.copytree(self.truth, self.served)
        whole = self.served / CARRIER
        with whole.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header, rows = reader.fieldnames, list(reader)
        whole.unlink()
        size = -(-len(rows) // CHUNKS)
        self.deliveries = [rows[n * size : (n + 1) * size] for n in range(CHUNKS)]
        self.header = header

    def deliver(self, number: int) -> set[str]:
        """Put the carrier's delivery `number` (1-based) on the server; its transaction ids."""
        rows = self.deliveries[number - 1]
        path = self.served / CARRIER.replace(".csv", f"_{number}.csv")
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.header)
            writer.writeheader()
            writer.writerows(rows)
        return {row["transaction_id"] for row in rows}


@pytest.fixture(scope="module")
def prepaid_world(tmp_path_factory, services, postgres, pipeline_connections):
    """SFTP servers on the month, a billing database, the gateway and the switch, the DAG."""
    base = tmp_path_factory.mktemp("prepaid")
    month = Month(base)
    primary = services.local.start_sftp("prepaid_primary", month.served)
    gateway = services.local.start_payment_gateway("prepaid_gateway", hang_seconds=25)
    switch = services.local.start_switch("prepaid_switch", secret="e2e-switch-secret")
    database = postgres.create_database("prepaid_e2e")
    upgrade(create_engine(postgres.url_of(database)))  # as a deployment does before adding accounts
    connections = {
        "cdr_sftp_primary": services.sftp_connection(primary),
        "cdr_sftp_secondary": services.sftp_connection(primary),
        "billing_db": postgres.connection(database),
        "payment_gateway": gateway.connection(),
        "prepaid_switch": switch.connection(),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in connection_env(connections).items():
            patch.setenv(key, value)
        patch.setenv("AIRFLOW__CORE__DEFAULT_TIMEZONE", ZONE)
        yield World(month, gateway, switch, postgres.url_of(database), services.maildir)


class World:
    def __init__(self, month, gateway, switch, url, maildir) -> None:
        self.month, self.gateway, self.switch, self.url = month, gateway, switch, url
        self.engine, self.maildir = create_engine(url), maildir

    def accounts_command(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cdr_billing.prepaid.accounts", "--url", self.url, *args],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def add_account(self, account: str, payment: str, topup: Decimal, lines: int) -> None:
        """A prepaid account in EUR: top-up below 2.00, locked at 0.00, unlocked above 1.00."""
        self.accounts_command(
            "add",
            account,
            "--currency",
            "EUR",
            "--low-balance",
            "2.00",
            "--topup",
            str(topup),
            "--lock-level",
            "0.00",
            "--unlock-level",
            "1.00",
            "--payment-method",
            payment,
            "--max-concurrent-calls",
            str(lines),
            "--operator",
            "e2e",
        )

    def balances(self) -> dict[str, Decimal]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT account_id, balance_minor FROM prepaid_account"))
            return {account: Decimal(minor) / 100 for account, minor in rows}

    def scalar(self, sql: str, **params: object):
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def mail_subjects(self) -> list[str]:
        return [
            message_from_bytes(path.read_bytes())["Subject"] or ""
            for path in sorted(self.maildir.glob("*"))
            if path.is_file()
        ]


def _run(dag, day: int, hour: int):
    run = run_dag(dag, logical_date=pendulum.datetime(2026, 11, day, hour, tz=ZONE))
    assert run.state == "success", run.state
    return run


def _account_costs(world: World, accounts: dict[str, str], transactions: set[str]) -> dict:
    """The oracle's cost of each prepaid account's calls among `transactions`."""
    costs = {account: Decimal(0) for account in accounts.values()}
    priced = expected_prepaid(world.month.truth, 2026, 11, frozenset(accounts.values()))
    for key, call in priced.items():
        if key.split(":", 1)[1] in transactions:
            costs[call.account] += call.cost
    return costs


def _busiest_carrier_accounts(month: Month) -> list[str]:
    counts: dict[str, int] = {}
    for rows in month.deliveries:
        for row in rows:
            counts[row["user_id"]] = counts.get(row["user_id"], 0) + 1
    return sorted(counts, key=lambda account: (-counts[account], account))


def test_a_month_of_deliveries_debits_tops_up_locks_and_unlocks(prepaid_world, airflow_home):
    world = prepaid_world
    busiest = _busiest_carrier_accounts(world.month)
    accounts = dict(zip(ROLES, busiest, strict=False))
    for role, account in accounts.items():
        # 20 lines at once puts an account above the exposure limit
        world.add_account(account, ROLES[role], TOPUP, 20 if role == "approves" else 2)
    dag = load_dag("cdr_prepaid_balances")
    delivered = world.month.deliver(1)

    _run(dag, 10, 12)  # the first delivery; the gateway declines one, times out on another
    costs = _account_costs(world, accounts, delivered)
    assert all(cost > 0 for cost in costs.values()), costs
    charges = {c.account_id: c for c in world.gateway.charges()}
    assert set(charges) == {accounts["approves"], accounts["declines"], accounts["times_out"]}
    balances = world.balances()
    assert balances[accounts["approves"]] == TOPUP - costs[accounts["approves"]]
    assert balances[accounts["declines"]] == -costs[accounts["declines"]]
    assert balances[accounts["times_out"]] == -costs[accounts["times_out"]]  # not known yet
    events = world.switch.events()
    assert sorted((e["account_id"], e["action"]) for e in events) == sorted(
        [(accounts["declines"], "LOCK"), (accounts["times_out"], "LOCK")]
    )

    # ops tops up the declined account by hand: its line unlocks; the switch is down
    desk = world.accounts_command(
        "credit",
        accounts["declines"],
        "50.00",
        "--kind",
        "topup",
        "--reason",
        "paid at desk",
        "--operator",
        "e2e",
        "--key",
        "desk-1",
    )
    assert "line UNLOCK" in desk  # at once, in the transaction of the top-up
    world.switch.control(mode="down")
    delivered |= world.month.deliver(2)
    _run(dag, 12, 12)
    assert len(world.switch.events()) == 2  # nothing more got through
    assert world.scalar("SELECT count(*) FROM switch_outbox WHERE delivered_at IS NULL") == 2
    assert any("did not accept" in s for s in world.mail_subjects())
    assert [c.account_id for c in world.gateway.charges()].count(accounts["times_out"]) == 1

    # an hour later the switch is back; the last delivery, and a run with nothing new
    world.switch.control(mode="up")
    with world.engine.begin() as conn:  # the backoff has passed
        conn.execute(text("UPDATE switch_outbox SET next_attempt_at = now() - interval '1 s'"))
    delivered |= world.month.deliver(3)
    _run(dag, 14, 12)
    _run(dag, 14, 13)

    costs = _account_costs(world, accounts, delivered)
    approved: dict[str, int] = {}  # what the gateway took, by its own record
    for charge in world.gateway.charges():
        if charge.charged:
            approved[charge.account_id] = approved.get(charge.account_id, 0) + charge.amount_minor
    manual = {accounts["declines"]: Decimal("50.00")}
    balances = world.balances()
    for account in accounts.values():
        expected = Decimal(approved.get(account, 0)) / 100 + manual.get(account, 0) - costs[account]
        assert balances[account] == expected, account
        summed = world.scalar(
            "SELECT sum(amount_minor) FROM balance_entry WHERE account_id = :a", a=account
        )
        assert Decimal(summed) / 100 == expected
    calls = expected_prepaid(world.month.truth, 2026, 11, frozenset(accounts.values()))
    assert world.scalar("SELECT count(*) FROM balance_entry WHERE kind = 'debit'") == len(calls)
    assert world.scalar("SELECT count(*) FROM balance_entry WHERE kind = 'reversal'") == 0
    assert world.scalar("SELECT count(DISTINCT call_key) FROM call_debit") == len(calls)
    per_account = {}
    for event in world.switch.events():
        per_account.setdefault(event["account_id"], []).append(event["action"])
    assert per_account == {
        accounts["declines"]: ["LOCK", "UNLOCK"],
        accounts["times_out"]: ["LOCK", "UNLOCK"],
    }
    assert world.scalar("SELECT count(*) FROM switch_outbox WHERE delivered_at IS NULL") == 0
    timed_out = [c for c in world.gateway.charges() if c.account_id == accounts["times_out"]]
    assert [(c.status, c.charged) for c in timed_out] == [("approved", True)]
    assert world.gateway.requests()[timed_out[0].idempotency_key] == 2  # sent again, same key
    subjects = world.mail_subjects()
    assert any("1 prepaid top-ups declined, 1 unanswered" in s for s in subjects)
    assert any("above the exposure limit" in s for s in subjects)
    latest = world.scalar("SELECT max(run_id) FROM prepaid_exposure")
    at_risk = world.scalar(
        "SELECT bound_minor + undebited_minor FROM prepaid_exposure "
        "WHERE account_id = :a AND run_id = :r",
        a=accounts["approves"],
        r=latest,
    )
    assert at_risk > 5000  # pipeline.yaml's limit: 50.00 EUR
    assert any("lines locked" in s for s in subjects)
    for account in accounts.values():
        assert not any(account in s for s in subjects if account.isdigit())


def test_a_run_whose_credit_control_fails_still_tells_the_switch_and_shows_failed(
    prepaid_world, monkeypatch
):
    """The gateway's connection broken (not https): control_credit fails and mails; the switch's
    webhooks and the exposure still run; the run shows failed."""
    world = prepaid_world
    broken = {**world.gateway.connection(), "conn_type": "http", "schema": "http"}
    for key, value in connection_env({"payment_gateway": broken}).items():
        monkeypatch.setenv(key, value)
    account = "SUB-LOWBAL"
    world.add_account(account, "approve", Decimal("5.00"), 1)
    before = set(world.maildir.glob("*"))
    run = run_dag(
        load_dag("cdr_prepaid_balances"),
        logical_date=pendulum.datetime(2026, 11, 20, 12, tz=ZONE),
    )
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["control_credit"] == "failed"
    assert states["deliver_switch_events"] == states["measure_exposure"] == "success"
    assert states["mark_run_failed"] == "failed"
    mails = [
        message_from_bytes(p.read_bytes())["Subject"] for p in set(world.maildir.glob("*")) - before
    ]
    assert [s for s in mails if "failed" in s] == [
        next(s for s in mails if "control_credit failed" in s)
    ]  # one mail, the failed task's; none for the run's last task
    assert any("2026-11" in s for s in mails if "control_credit failed" in s)
