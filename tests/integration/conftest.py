"""What the fetch tests share: a billing database of their own, the session's SMTP server and
a config whose work and archive directories are the test's."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.migrations import upgrade
from cdr_devkit.services import connection_env, smtp_connection

DATABASES = itertools.count()


@dataclass(frozen=True)
class FetchEnvironment:
    """A fresh ledger (billing database), the config pointing at the test's folders."""

    config: PipelineConfig
    engine: Engine


@pytest.fixture
def fetch_environment(tmp_path, postgres, services, monkeypatch) -> FetchEnvironment:
    database = postgres.create_database(f"fetch_{next(DATABASES)}")
    for key, value in connection_env(
        {
            "billing_db": postgres.connection(database),
            "smtp_default": smtp_connection(services.smtp.port),
        }
    ).items():
        monkeypatch.setenv(key, value)
    config = replace(
        load_config(), work_root=str(tmp_path / "work"), archive_root=tmp_path / "archive"
    )
    engine = create_engine(postgres.url_of(database))
    upgrade(engine)  # as the DAG's first task does, once per run
    return FetchEnvironment(config, engine)
