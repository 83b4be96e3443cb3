"""Statement mails through a real SMTP server (cdr_devkit.smtp_server) and PostgreSQL: each
mail sent once, also when the task is retried; 550 bounced; 451 deferred, then sent; a mail a
killed sender was sending becomes unknown and is never resent."""

from __future__ import annotations

import email
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from statement_seed import SETTINGS, batch

from cdr_billing import load, statement_mail, statement_render
from cdr_billing.migrations import upgrade
from cdr_billing.schema import statement, statement_delivery
from cdr_devkit.services import connection_env, free_port, smtp_connection

CONN_ID = "statement_smtp"
NOW = datetime(2026, 6, 1, 8, tzinfo=UTC)


@pytest.fixture
def smtp(tmp_path, monkeypatch):
    """A real SMTP server whose refusals the test sets in its rules file."""
    maildir, rules, ready = tmp_path / "mail", tmp_path / "rules.json", tmp_path / "smtp.ready"
    rules.write_text("{}", encoding="utf-8")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdr_devkit.smtp_server",
            "--maildir",
            str(maildir),
            "--port",
            str(port),
            "--ready-file",
            str(ready),
            "--rules",
            str(rules),
        ],
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert time.monotonic() < deadline and process.poll() is None, "SMTP did not start"
        time.sleep(0.05)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(smtp_connection(port)))
    yield maildir, rules
    process.terminate()
    process.wait(10)


@pytest.fixture
def loaded(postgres, request, tmp_path):
    name = f"statement_mail_{request.node.name[5:30].lower()}"
    engine = create_engine(postgres.url_of(postgres.create_database(name)))
    upgrade(engine)
    batch_id = load.load_month(engine, "2026-05", "run-m", batch("run-m"), {}).batch_id
    statement_render.render_batch(engine, batch_id, tmp_path / "archive")
    return engine, batch_id


def _statuses(engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(statement.c.user_id, statement_delivery.c.status).join(
                statement, statement.c.statement_id == statement_delivery.c.statement_id
            )
        ).all()
    return dict(rows)


def _mails(maildir: Path) -> list[email.message.Message]:
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(maildir.glob("*.eml"))]


def _deliver(engine, batch_id, now=NOW):
    return statement_mail.deliver(engine, batch_id, SETTINGS, CONN_ID, now=now)


def test_each_mail_is_sent_once_even_when_the_task_runs_again(smtp, loaded):
    maildir, _ = smtp
    engine, batch_id = loaded
    first = _deliver(engine, batch_id)
    assert (first.sent, first.waiting) == (3, 0), _replies(engine)
    again = _deliver(engine, batch_id, NOW + timedelta(hours=1))  # a retried task
    assert again.sent == 0
    mails = _mails(maildir)
    assert sorted(m["To"] for m in mails) == [
        "u1@c1.example.test",
        "u2@c1.example.test",
        "u3@c2.test",
    ]
    by_address = {m["To"]: m for m in mails}
    pdf = [
        p
        for p in by_address["u1@c1.example.test"].walk()
        if p.get_content_type() == "application/pdf"
    ]
    assert len(pdf) == 1 and pdf[0].get_payload(decode=True).startswith(b"%PDF")
    link = by_address["u3@c2.test"].get_payload(decode=True).decode()
    assert "https://portal.example.test/statements/" in link
    assert _statuses(engine) == {"u1": "sent", "u2": "sent", "u3": "sent"}


def test_a_refused_address_bounces_and_a_deferred_one_is_sent_later(smtp, loaded):
    maildir, rules = smtp
    engine, batch_id = loaded
    rules.write_text(
        json.dumps({"refuse": ["u1@c1.example.test"], "defer": ["u2@c1.example.test"]}),
        encoding="utf-8",
    )
    first = _deliver(engine, batch_id)
    assert (first.sent, first.bounced, first.deferred, first.waiting) == (1, 1, 1, 1)
    assert _statuses(engine) == {"u1": "bounced", "u2": "deferred", "u3": "sent"}
    too_soon = _deliver(engine, batch_id, NOW + timedelta(seconds=30))  # retry after 1 min
    assert too_soon.sent == 0 and too_soon.waiting == 1
    rules.write_text("{}", encoding="utf-8")  # the server takes mail again
    later = _deliver(engine, batch_id, NOW + timedelta(minutes=2))
    assert (later.sent, later.waiting) == (1, 0)
    assert _statuses(engine) == {"u1": "bounced", "u2": "sent", "u3": "sent"}
    assert sorted(m["To"] for m in _mails(maildir)) == ["u2@c1.example.test", "u3@c2.test"]
    with engine.connect() as conn:
        reply = conn.execute(
            select(statement_delivery.c.smtp_reply, statement_delivery.c.attempts)
            .join(statement, statement.c.statement_id == statement_delivery.c.statement_id)
            .where(statement.c.user_id == "u1")
        ).one()
    assert reply.smtp_reply.startswith("550") and reply.attempts == 1


def test_a_deferral_past_max_attempts_is_given_up(smtp, loaded):
    _, rules = smtp
    engine, batch_id = loaded
    rules.write_text(json.dumps({"defer": ["u2@c1.example.test"]}), encoding="utf-8")
    now = NOW
    for _ in range(SETTINGS.max_attempts):
        _deliver(engine, batch_id, now)
        now += timedelta(hours=1)
    assert _statuses(engine)["u2"] == "bounced"


def _stalling_server(port_holder: list[int], stop: threading.Event) -> None:
    """An SMTP server that greets, answers EHLO, then never answers again (a sender stuck
    mid-mail)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port_holder.append(server.getsockname()[1])
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            client.sendall(b"220 stall ESMTP\r\n")
            client.recv(1024)
            client.sendall(b"250 stall\r\n")
            stop.wait(60)
            client.close()


def test_a_mail_being_sent_when_the_sender_is_killed_is_unknown_and_never_resent(
    smtp, loaded, postgres
):
    maildir, _ = smtp
    engine, batch_id = loaded
    port, stop = [], threading.Event()
    threading.Thread(target=_stalling_server, args=(port, stop), daemon=True).start()
    while not port:
        time.sleep(0.01)
    env = {
        **os.environ,
        **connection_env({"stalled_smtp": smtp_connection(port[0])}),
    }
    script = (
        "import sys; from sqlalchemy import create_engine; "
        "from cdr_billing import statement_mail; from statement_seed import SETTINGS; "
        f"statement_mail.deliver(create_engine({str(engine.url.render_as_string(False))!r}), "
        f"{batch_id}, SETTINGS, 'stalled_smtp')"
    )
    sender = subprocess.Popen(
        [sys.executable, "-c", script], env={**env, "PYTHONPATH": _pythonpath()}
    )
    try:
        deadline = time.monotonic() + 30
        while "sending" not in _statuses(engine).values():
            assert time.monotonic() < deadline and sender.poll() is None
            time.sleep(0.1)
        sender.send_signal(signal.SIGKILL)
        sender.wait(10)
    finally:
        stop.set()
    stuck = [user for user, status in _statuses(engine).items() if status == "sending"]
    assert len(stuck) == 1
    later = datetime.now(UTC) + timedelta(minutes=SETTINGS.sending_stale_minutes + 1)
    done = _deliver(engine, batch_id, later)
    assert done.sent == 2 and done.unknown == 0
    statuses = _statuses(engine)
    assert statuses[stuck[0]] == "unknown"
    assert sorted(m["To"] for m in _mails(maildir)) == sorted(
        f"{u}@{'c2.test' if u == 'u3' else 'c1.example.test'}" for u in statuses if u != stuck[0]
    )
    assert _deliver(engine, batch_id, later + timedelta(days=1)).sent == 0


def _pythonpath() -> str:
    root = Path(__file__).resolve().parents[2]
    return os.pathsep.join(
        [
            str(root / "tests"),
            str(root / "include"),
            str(root / "devkit"),
            os.environ.get("PYTHONPATH", ""),
        ]
    )


def _replies(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(statement_delivery.c.smtp_reply)).scalars().all()
