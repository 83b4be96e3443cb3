"""`make bench-ui` at a small size: the generated month is consistent (lines are their calls'
sums, the groups their rows') and every page it times answers."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from cdr_devkit import bench_ui

SHAPE = bench_ui.Shape(calls=20_000, customers=20, users=200, accounts=50, ranges=30)


def test_the_benchmark_month_is_consistent_and_every_page_answers(airflow_home, postgres):
    database = postgres.create_database("bench_ui_smoke")
    engine = create_engine(postgres.url_of(database))
    try:
        steps, timings = bench_ui.run(engine, postgres.connection(database), SHAPE, requests=2)
        with engine.connect() as conn:
            lines = conn.execute(
                text("SELECT sum(call_count), sum(total_minor), count(*) FROM billing_line")
            ).one()
            calls = conn.execute(text("SELECT count(*), sum(cost_minor) FROM billed_call")).one()
            grouped = conn.execute(text("SELECT sum(calls) FROM not_billed_group")).scalar()
            heavy = conn.execute(text("SELECT max(call_count) FROM billing_user_line")).scalar()
    finally:
        engine.dispose()
    assert (lines[0], lines[1]) == (calls[0], calls[1]) == (SHAPE.calls, calls[1])
    assert lines[2] > SHAPE.customers  # several sequence numbers per customer
    assert grouped == SHAPE.not_billed
    assert heavy > SHAPE.calls / SHAPE.users  # some users far above the average
    assert len(timings) == 16 and all(len(t.millis) == 2 for t in timings)
    report = bench_ui.format_report(SHAPE, steps, timings)
    assert all(t.page in report for t in timings)
    assert "index build: billed_call_of_user (0007)" in report
