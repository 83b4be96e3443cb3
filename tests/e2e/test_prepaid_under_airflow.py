"""The prepaid DAG under a running Airflow (api-server, scheduler with LocalExecutor,
dag-processor): three hundred prepaid accounts, their month's carrier CDRs delivered in four
files, a run triggered after each; the balances equal the gateway's record of what it charged
plus the accounts' opening credits less an independent pricing of the calls (tests/oracle.py);
every lock and unlock reached the switch once, in order per account."""

from __future__ import annotations

import csv
import random
import shutil
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from cdr_billing.migrations import upgrade
from cdr_billing.months import BillingMonth
from cdr_billing.prepaid import accounts
from cdr_devkit.sample_data import generate_month, write_carrier_csv
from oracle import expected_prepaid

DAG_ID = "cdr_prepaid_balances"
MONTH = BillingMonth(2026, 11)
CARRIER = Path(f"cdr/carrier/carrier_cdr_{MONTH.year}{MONTH.month:02d}.csv")
ACCOUNTS = [f"PRE-{n:04d}" for n in range(300)]
DECLINING = set(ACCOUNTS[::25])  # their payment method is refused
OPENING = 150  # minor units each account is credited before the month
DELIVERIES = 4
RUN_TIMEOUT_SECONDS = 300


def _month_of_calls(base: Path) -> list[dict]:
    """The month under base (the oracle's input), its carrier file the prepaid accounts' calls."""
    generate_month(base, MONTH, seed=31)
    write_carrier_csv(base / CARRIER, random.Random(31), MONTH, ACCOUNTS, 3000)
    with (base / CARRIER).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _deliver(served: Path, rows: list[dict], number: int) -> None:
    """A delivery appears whole on the server (written aside, then renamed)."""
    target = served / CARRIER.parent / f"{CARRIER.stem}_{number}.csv"
    aside = target.with_suffix(".partial")
    with aside.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    aside.rename(target)


def _trigger_and_wait(airflow, logical_date: str) -> str:
    run_id = airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": logical_date})[
        "dag_run_id"
    ]
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        state = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    pytest.fail(f"{run_id} did not end within {RUN_TIMEOUT_SECONDS} s")


@pytest.fixture(scope="module")
def billing(postgres):
    engine = create_engine(postgres.url_of("billing_ui"))
    upgrade(engine)  # as a deployment does before it adds accounts
    yield engine
    engine.dispose()


def test_a_month_of_deliveries_under_a_running_airflow(
    running_airflow, billing, services, sftp_root, tmp_path
):
    rows = _month_of_calls(tmp_path / "truth")
    with billing.begin() as conn:
        for account in ACCOUNTS:
            method = "decline" if account in DECLINING else "approve"
            settings = accounts.AccountSettings("EUR", 100, 500, 0, 50, method, 2)
            accounts.add(conn, account, settings, "e2e")
            accounts.post_manual(conn, account, "credit", OPENING, "opening", "e2e", account)
    running_airflow.wait_for_dag(DAG_ID)
    running_airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    size = -(-len(rows) // DELIVERIES)
    try:
        for number in range(1, DELIVERIES + 1):
            _deliver(sftp_root, rows[(number - 1) * size : number * size], number)
            state = _trigger_and_wait(running_airflow, f"2026-11-{10 + number}T12:00:00+01:00")
            assert state == "success", number
    finally:
        for number in range(1, DELIVERIES + 1):  # the session's other tests see no November
            (sftp_root / CARRIER.parent / f"{CARRIER.stem}_{number}.csv").unlink(missing_ok=True)
        running_airflow.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": True})

    costs = {account: Decimal(0) for account in ACCOUNTS}
    calls = expected_prepaid(tmp_path / "truth", 2026, 11, frozenset(ACCOUNTS))
    for call in calls.values():
        costs[call.account] += call.cost
    charged = {account: 0 for account in ACCOUNTS}
    for charge in services.gateway.charges():
        if charge.charged and charge.account_id in charged:
            charged[charge.account_id] += charge.amount_minor
    with billing.connect() as conn:
        balances = dict(
            conn.execute(
                text(
                    "SELECT account_id, balance_minor FROM prepaid_account "
                    "WHERE account_id LIKE 'PRE-%'"
                )
            ).all()
        )
        debits = conn.execute(
            text(
                "SELECT count(*) FROM balance_entry "
                "WHERE kind = 'debit' AND account_id LIKE 'PRE-%'"
            )
        ).scalar()
        events = conn.execute(
            text(
                "SELECT account_id, action, delivered_at IS NOT NULL FROM switch_outbox "
                "WHERE account_id LIKE 'PRE-%' ORDER BY outbox_id"
            )
        ).all()
    assert debits == len(calls)
    for account in ACCOUNTS:
        expected = Decimal(OPENING + charged[account]) / 100 - costs[account]
        assert Decimal(balances[account]) / 100 == expected, account
    assert any(charged[a] for a in ACCOUNTS if a not in DECLINING)  # top-ups happened
    assert all(charged[a] == 0 for a in DECLINING)
    assert all(delivered for _, _, delivered in events)
    sent: dict[str, list[str]] = {}
    for account, action, _ in events:
        sent.setdefault(account, []).append(action)
    assert DECLINING & set(sent)  # some lines ran out of credit
    for actions in sent.values():  # LOCK, UNLOCK, LOCK ... : no change sent twice
        assert actions == ["LOCK", "UNLOCK"] * (len(actions) // 2) + ["LOCK"] * (len(actions) % 2)
    received: dict[str, list[str]] = {}
    for event in services.switch.events():
        if event["account_id"].startswith("PRE-"):
            received.setdefault(event["account_id"], []).append(event["action"])
    assert received == sent
    shutil.rmtree(tmp_path / "truth")
