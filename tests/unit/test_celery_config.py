"""The workers' Celery config: Airflow's default, and the heavy libraries imported as a worker
starts, before it forks, and only in a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from airflow.providers.celery.executors import celery_executor_utils as utils
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from cdr_billing.celery_config import CELERY_CONFIG, PRELOADED
config = utils.get_celery_configuration()
before = [name for name in PRELOADED if name in sys.modules]
utils.app.loader.init_worker()  # what a starting worker runs before its pool forks
print(json.dumps({
    "airflow_reads_it": config is CELERY_CONFIG,
    "extends_the_default": all(CELERY_CONFIG[k] == v for k, v in DEFAULT_CELERY_CONFIG.items()),
    "publish_retries": config["task_publish_retry_policy"]["max_retries"],
    "before_worker_start": before,
    "missing_after": [name for name in PRELOADED if name not in sys.modules],
}))
"""


def test_a_worker_imports_the_heavy_libraries_before_it_forks_and_only_a_worker():
    env = {
        **os.environ,
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "cdr_billing.celery_config.CELERY_CONFIG",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["airflow_reads_it"] and facts["extends_the_default"], facts
    assert facts["publish_retries"] > 0, facts  # a publish while Redis restarts is retried
    # the scheduler and the api-server read the config too: they must not pay for the imports
    assert "great_expectations" not in facts["before_worker_start"], facts
    assert "cdr_billing.tasks.validate" not in facts["before_worker_start"], facts
    assert facts["missing_after"] == [], facts
