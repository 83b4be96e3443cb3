"""The pipeline config: what a deployment may set, and what it may not."""

from __future__ import annotations

import pytest
import yaml

from cdr_billing.config import DEFAULT_FILES_AT_ONCE, ConfigError, load_config
from cdr_devkit.airflow_env import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "include" / "config" / "pipeline.yaml"


def _config_with(tmp_path, **settings):
    raw = {**yaml.safe_load(SHIPPED.read_text()), **settings}
    raw["profiles_file"] = str(SHIPPED.with_name("profiles.yaml"))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_files_at_once_is_read_and_defaults_when_absent(tmp_path):
    assert load_config(_config_with(tmp_path, files_at_once=3)).files_at_once == 3
    raw = yaml.safe_load(SHIPPED.read_text())
    raw.pop("files_at_once")
    raw["profiles_file"] = str(SHIPPED.with_name("profiles.yaml"))
    (tmp_path / "without.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "without.yaml").files_at_once == DEFAULT_FILES_AT_ONCE


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, None])
def test_files_at_once_must_be_a_whole_number_of_at_least_one(tmp_path, value):
    with pytest.raises(ConfigError, match="files_at_once"):
        load_config(_config_with(tmp_path, files_at_once=value))
