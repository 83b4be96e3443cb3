"""The compose stack cannot run here (no Docker engine): check that it lines up."""

import re

import pytest
import yaml

from cdr_billing.config import load_config
from cdr_devkit.airflow_env import PROJECT_ROOT


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text())


def test_services_of_the_airflow_3_stack_exist(compose):
    expected = {
        "postgres",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "billing-db",
        "sftp-primary",
        "sftp-secondary",
        "mailpit",
    }
    assert expected <= set(compose["services"])


def test_every_connection_the_pipeline_uses_is_defined(compose):
    config = load_config()
    env = compose["x-airflow-common"]["environment"]
    for conn_id in (*config.sftp_connections, config.billing.connection, "smtp_default"):
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in env


def test_sftp_connections_pin_host_keys_and_never_skip_the_check(compose):
    env = compose["x-airflow-common"]["environment"]
    for name in ("AIRFLOW_CONN_CDR_SFTP_PRIMARY", "AIRFLOW_CONN_CDR_SFTP_SECONDARY"):
        assert '"no_host_key_check": false' in env[name] and '"host_key": "${' in env[name]


def test_no_secret_is_written_into_the_file(compose):
    environments = [compose["x-airflow-common"]["environment"]]
    environments += [service.get("environment", {}) for service in compose["services"].values()]
    for environment in environments:
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|FERNET", key):
                assert str(value).startswith("${"), key
            for secret in re.findall(r'"password": "([^"]*)"', str(value)):
                assert secret.startswith("${"), key


def test_mounted_project_folders_exist(compose):
    for volume in compose["x-airflow-common"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./") and "keys" not in source:
            assert (PROJECT_ROOT / source).is_dir(), source


def test_the_image_installs_the_same_lock():
    assert "pip install --no-cache-dir -r /requirements.txt" in (PROJECT_ROOT / "Dockerfile").read_text()
    assert "apache-airflow==3.3.2" in (PROJECT_ROOT / "requirements.txt").read_text()
