"""What the Billing page tests share: the seeded billing months (billing_seed.py), loaded once
per session since every module reads the same running Airflow's billing database."""

from __future__ import annotations

import pytest
from billing_seed import Seeded, seed_months


@pytest.fixture(scope="session")
def seeded(running_airflow, postgres, tmp_path_factory) -> Seeded:
    return seed_months(running_airflow, postgres, tmp_path_factory)
