"""The Celery config of the cluster's workers: Airflow's default, a task sent while the broker
restarts retried instead of failed, and the billing's heavy libraries imported once in each
worker before it forks.

Airflow reads it through `[celery] celery_config_options`
(`AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=cdr_billing.celery_config.CELERY_CONFIG`). A worker
runs each task in a process forked from it; a task that imports pandas, pyarrow and Great
Expectations itself pays about 2 s for it (each validate_cdr_file task does), where a worker
that imported them first hands them to every fork at no cost, its pages shared. The imports
hang on Celery's `import_modules` signal, sent as a worker starts and before its pool forks
(the provider preloads Airflow's own modules the same way), so the scheduler and api-server,
which read this config too, import none of it.
"""

from __future__ import annotations

import importlib
import logging
import time

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import import_modules

log = logging.getLogger(__name__)

# What the billing tasks import, heaviest first; importing the task modules takes their own
# imports too (the stage modules, SQLAlchemy).
PRELOADED = (
    "pandas",
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.csv",
    "pyarrow.parquet",
    "great_expectations",
    "cdr_billing.validate",
    "cdr_billing.tasks.validate",
    "cdr_billing.tasks.bill",
)

# A task the scheduler sends while Redis restarts is retried for about a minute (a failed
# publish would fail the task instance and wait for its retry delay).
PUBLISH_RETRY_POLICY = {
    "max_retries": 30,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}

CELERY_CONFIG: dict = {**DEFAULT_CELERY_CONFIG, "task_publish_retry_policy": PUBLISH_RETRY_POLICY}


@import_modules.connect
def preload(**_: object) -> None:
    """Import PRELOADED in the worker before it forks (Celery's `import_modules` signal)."""
    started = time.perf_counter()
    for name in PRELOADED:
        importlib.import_module(name)
    log.info("preloaded %s in %.1f s", ", ".join(PRELOADED), time.perf_counter() - started)
