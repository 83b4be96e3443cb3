"""The billing month as runs show it: the note's lines (the user's own kept), the task log's
first line, and the month resolved as the run's tasks resolve it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdr_billing.config import ConfigError, load_config
from cdr_billing.dag_tasks import side_by_side
from cdr_billing.months import run_month
from cdr_billing.run_notes import (
    NOTE_LIMIT,
    first_log_line,
    month_line,
    queued_line,
    same_month_line,
    with_our_lines,
)

ZONE = "Europe/Stockholm"


def test_the_month_is_the_param_else_the_interval_start_in_the_billing_timezone():
    # a backfill run of October: its interval starts at Stockholm's midnight, 22:00 UTC
    october = datetime(2026, 9, 30, 22, 0, tzinfo=UTC)
    assert run_month(None, october, ZONE) == "2026-10"
    assert run_month("2026-07", october, ZONE) == "2026-07"
    assert run_month("", october, ZONE) == "2026-10"
    assert run_month(None, None, ZONE) is None


def test_the_first_log_line_names_month_and_run():
    assert first_log_line("2026-10", "manual__x") == "Billing month 2026-10 · run manual__x"
    assert first_log_line(None, "r").startswith("Billing month not known")


def test_a_note_keeps_the_users_lines_below_the_month():
    assert with_our_lines(None, [month_line("2026-10")]) == "Billing month 2026-10"
    note = with_our_lines("re-run after the tariff fix", [month_line("2026-10")])
    assert note == "Billing month 2026-10\nre-run after the tariff fix"


def test_our_lines_are_replaced_not_repeated():
    first = with_our_lines("mine", [month_line("2026-11"), queued_line(3, 3)])
    second = with_our_lines(first, [month_line("2026-11")])
    assert second == "Billing month 2026-11\nmine"
    assert with_our_lines(second, [month_line("2026-11")]) == second


def test_a_note_fits_airflows_column():
    assert len(with_our_lines("x" * 2000, [month_line("2026-11")])) == NOTE_LIMIT


def test_why_a_run_waits_or_shares_its_month():
    assert "months_at_once is 3" in queued_line(3, 3)
    line = same_month_line("2026-11", ["scheduled__a", "manual__b"])
    assert line.startswith("Also running for 2026-11: scheduled__a, manual__b.")
    assert "loads last is the month's current batch" in line


def test_file_tasks_are_capped_per_run_and_across_runs():
    config = load_config()
    assert side_by_side(config) == {
        "max_active_tis_per_dagrun": config.files_at_once,
        "max_active_tis_per_dag": config.files_at_once,
    }


def test_months_at_once_defaults_to_three_and_refuses_zero(tmp_path: Path):
    shipped = Path(__file__).resolve().parents[2] / "include/config"
    text = (shipped / "pipeline.yaml").read_text()
    assert "\nmonths_at_once: 3\n" in text
    (tmp_path / "profiles.yaml").write_text((shipped / "profiles.yaml").read_text())
    (tmp_path / "pipeline.yaml").write_text(text.replace("\nmonths_at_once: 3\n", "\n"))
    assert load_config(tmp_path / "pipeline.yaml").months_at_once == 3
    (tmp_path / "pipeline.yaml").write_text(text.replace("months_at_once: 3", "months_at_once: 0"))
    with pytest.raises(ConfigError, match="months_at_once must be a whole number"):
        load_config(tmp_path / "pipeline.yaml")
