"""The compose stack cannot run here (no Docker engine): check that it lines up."""

import json
import re
import tomllib
from importlib.metadata import version

import pytest
import yaml

from cdr_billing.config import load_config
from cdr_devkit.airflow_env import ALLOCATOR_SETTINGS, PROJECT_ROOT

IMAGE_AIRFLOW_HOME = "/opt/airflow"  # the official image's AIRFLOW_HOME
# `${VAR...}` is compose interpolation; `$${VAR}` is a literal `${VAR}` for the shell.
PLACEHOLDER = re.compile(r"(?<!\$)\$\{(\w+)[^}]*\}")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_plain_placeholders(text: str) -> str:
    """Turn `${VAR:?message}` into `${VAR}`, so a connection's JSON parses."""
    return PLACEHOLDER.sub(lambda match: f"${{{match.group(1)}}}", text)


def _mounts(service: dict) -> dict[str, str]:
    """A service's volumes as container path -> source (named volume or ./host path)."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])}


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def env(compose):
    return compose["x-airflow-common"]["environment"]


@pytest.fixture(scope="module")
def connections(env):
    return {
        key.removeprefix("AIRFLOW_CONN_").lower(): json.loads(_with_plain_placeholders(value))
        for key, value in env.items()
        if key.startswith("AIRFLOW_CONN_")
    }


@pytest.fixture(scope="module")
def airflow_services(compose):
    """The services that run the project's Airflow image."""
    image = compose["x-airflow-common"]["image"]
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == image
    }


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, pinned = line.split("==")
            pins[_canonical(name)] = pinned
    return pins


@pytest.fixture(scope="module")
def compose_readme() -> str:
    """The "## Compose stack" section of docs/deployment.md, which the tests hold to the file."""
    deployment = (PROJECT_ROOT / "docs/deployment.md").read_text()
    return deployment.split("\n## Compose stack", 1)[1].split("\n## ", 1)[0]


def test_services_of_the_airflow_3_stack_exist(compose):
    expected = {
        "postgres",
        "redis",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-worker",
        "airflow-triggerer",
        "flower",
        "billing-db",
        "sftp-primary",
        "sftp-secondary",
        "mailpit",
    }
    assert expected <= set(compose["services"])


def test_the_readme_names_every_service_and_only_services_that_exist(compose, compose_readme):
    rows = [line for line in compose_readme.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}
    assert named == set(compose["services"])


def test_celery_executor_with_a_redis_broker_and_a_postgres_result_backend(compose, env):
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker, backend = env["AIRFLOW__CELERY__BROKER_URL"], env["AIRFLOW__CELERY__RESULT_BACKEND"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD[^}]*\}@redis:6379/0", broker)
    assert compose["services"]["redis"]["image"].startswith("redis:")
    assert backend.startswith("db+postgresql")
    # The result backend is the metadata database itself.
    assert (
        backend.split("@")[1]
        == env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("@")[1]
        == "postgres/airflow"
    )
    assert (
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    )


def test_the_worker_scales_and_shuts_down_warm(compose):
    worker = compose["services"]["airflow-worker"]
    assert worker["command"] == "celery worker"
    assert "container_name" not in worker and "ports" not in worker
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"
    assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
    assert worker["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_flower_is_optional(compose):
    assert compose["services"]["flower"]["profiles"] == ["flower"]


def test_every_connection_the_pipeline_uses_is_defined_and_points_at_a_service(
    compose, connections
):
    config = load_config(PROJECT_ROOT / "include/config/pipeline.yaml")
    used = {*config.sftp_connections, config.billing.connection, config.smtp_connection}
    if config.entitlement_source.source == "sql":
        used.add(config.entitlement_source.connection)
    assert used <= set(connections)
    for conn_id, connection in connections.items():
        assert connection["host"] in compose["services"], conn_id


def test_sftp_connections_pin_host_keys_and_never_skip_the_check(connections):
    config = load_config(PROJECT_ROOT / "include/config/pipeline.yaml")
    for conn_id in config.sftp_connections:
        extra = connections[conn_id]["extra"]
        assert extra["no_host_key_check"] is False, conn_id
        assert re.fullmatch(r"\$\{CDR_SFTP_\w+_HOST_KEY\}", extra["host_key"]), conn_id


def test_sftp_servers_use_the_host_keys_the_env_example_describes(compose, connections):
    env_example = (PROJECT_ROOT / "deploy/env.example").read_text()
    for conn_id, connection in connections.items():
        if connection["conn_type"] != "sftp":
            continue
        variable = PLACEHOLDER.fullmatch(connection["extra"]["host_key"]).group(1)
        described = re.search(rf"((?:^#.*\n)+){variable}=", env_example, re.MULTILINE)
        assert described, f"{variable} is not described in deploy/env.example"
        key_file = re.search(r"deploy/keys/[\w.-]+", described.group(1)).group(0)
        server = compose["services"][connection["host"]]
        assert _mounts(server)["/etc/ssh/ssh_host_ed25519_key"] == f"./{key_file}", conn_id


def test_sftp_servers_authorise_the_client_key_the_connections_use(compose, connections):
    airflow_mounts = _mounts(compose["x-airflow-common"])
    for conn_id, connection in connections.items():
        if connection["conn_type"] != "sftp":
            continue
        client_key = airflow_mounts[connection["extra"]["key_file"]]
        keys_dir = f"/home/{connection['login']}/.ssh/keys/"
        server_mounts = _mounts(compose["services"][connection["host"]])
        authorised = {source for path, source in server_mounts.items() if path.startswith(keys_dir)}
        assert f"{client_key}.pub" in authorised, conn_id


def test_the_readme_generates_the_key_files_the_stack_mounts(compose, compose_readme):
    mounted = {
        source.removeprefix("./")
        for service in (compose["x-airflow-common"], *compose["services"].values())
        for source in _mounts(service).values()
        if source.startswith("./deploy/keys/")
    }
    generated = set(re.findall(r"ssh-keygen .*-f (deploy/keys/\S+)", compose_readme))
    assert generated <= mounted <= generated | {f"{key}.pub" for key in generated}


def test_every_named_volume_is_declared_and_used(compose):
    used = {
        source
        for service in compose["services"].values()
        for source in _mounts(service).values()
        if not source.startswith((".", "/"))
    }
    assert used == set(compose["volumes"])


def test_the_work_and_archive_dirs_are_volumes_every_airflow_service_shares(
    monkeypatch, airflow_services
):
    monkeypatch.setenv("AIRFLOW_HOME", IMAGE_AIRFLOW_HOME)
    config = load_config(PROJECT_ROOT / "include/config/pipeline.yaml")
    assert "airflow-worker" in airflow_services and "airflow-scheduler" in airflow_services
    for name, service in airflow_services.items():
        mounts = _mounts(service)
        for path in (config.work_root, config.archive_root):
            assert not mounts.get(str(path), ".").startswith((".", "/")), (
                f"{name}: {path} is not a named volume"
            )


def test_depends_on_refers_to_existing_services(compose):
    for name, service in compose["services"].items():
        assert set(service.get("depends_on", {})) <= set(compose["services"]) - {name}, name


def test_no_secret_is_written_into_the_file(compose):
    environments = [compose["x-airflow-common"]["environment"]]
    environments += [service.get("environment", {}) for service in compose["services"].values()]
    for environment in environments:
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|FERNET|AUTH", key):
                assert str(value).startswith("${"), key
    for text in _strings(compose):
        secrets = re.findall(r'"password": "([^"]*)"', text) + re.findall(
            r"://[^:/@\s]*:(\$\{[^}]*\}|[^@\s]*)@", text
        )
        assert all(secret.startswith("${") for secret in secrets), text
    redis_command = compose["services"]["redis"]["command"]
    assert redis_command[redis_command.index("--requirepass") + 1].startswith("${")


def test_every_variable_is_required_and_documented_in_the_env_example():
    text = (PROJECT_ROOT / "docker-compose.yaml").read_text()
    used = set(PLACEHOLDER.findall(text))
    assert all(match.startswith(":?") for match in re.findall(r"(?<!\$)\$\{\w+([^}]*)\}", text))
    documented = set(
        re.findall(r"^(\w+)=", (PROJECT_ROOT / "deploy/env.example").read_text(), re.MULTILINE)
    )
    assert used == documented


def test_mounted_project_folders_exist(compose):
    for volume in compose["x-airflow-common"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./") and "keys" not in source:
            assert (PROJECT_ROOT / source).is_dir(), source


def test_the_devkit_is_not_in_the_image_and_the_pipeline_does_not_import_it(compose):
    """The devkit (local servers, demo, benchmarks) is for development: the image's PYTHONPATH
    and mounts leave it out, and nothing the image runs may import it."""
    mounted = [volume.split(":")[0] for volume in compose["x-airflow-common"]["volumes"]]
    assert not [source for source in mounted if "devkit" in source]
    image_path = re.search(r"PYTHONPATH=(\S+)", (PROJECT_ROOT / "Dockerfile").read_text())
    assert image_path and "devkit" not in image_path.group(1)
    shipped = [
        p
        for folder in ("include", "dags", "plugins")
        for p in (PROJECT_ROOT / folder).rglob("*.py")
    ]
    assert shipped and not [p for p in shipped if "cdr_devkit" in p.read_text()]
    assert not (PROJECT_ROOT / "include" / "cdr_devkit").exists()


def test_the_image_installs_the_same_lock_at_the_same_airflow_and_python(compose, lock):
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "COPY requirements.txt /requirements.txt" in dockerfile
    assert "pip install --no-cache-dir -r /requirements.txt" in dockerfile
    base = re.search(r"^FROM apache/airflow:([\d.]+)-python([\d.]+)$", dockerfile, re.MULTILINE)
    assert base and base.group(1) == lock["apache-airflow"]
    target = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["ruff"][
        "target-version"
    ]
    assert base.group(2) == f"{target[2]}.{target[3:]}"
    assert compose["x-airflow-common"]["build"] == "."
    assert compose["x-airflow-common"]["image"].endswith(f":{lock['apache-airflow']}")


def test_the_celery_provider_is_in_the_lock_and_installed_from_it(lock):
    for package in ("apache-airflow-providers-celery", "celery", "kombu", "redis"):
        assert version(package) == lock[package], package


def test_airflow_reads_dates_in_the_billing_timezone(env):
    """`airflow backfill create --from-date 2026-01-01` must mean the billing month's midnight."""
    assert env["AIRFLOW__CORE__DEFAULT_TIMEZONE"] == load_config().billing.timezone


def test_workers_keep_freed_memory_as_the_local_airflow_does(env):
    assert {name: env.get(name) for name in ALLOCATOR_SETTINGS} == ALLOCATOR_SETTINGS
