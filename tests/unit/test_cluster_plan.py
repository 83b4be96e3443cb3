"""The local cluster's plan is read from docker-compose.yaml: every service has a process, every
Airflow process has compose's environment, its own home and only compose's shared volumes."""

from __future__ import annotations

import copy
import importlib
import json
import re
from pathlib import Path

import pytest

from cdr_devkit.cluster import (
    AIRFLOW,
    AIRFLOW_ONCE,
    LOCAL_FOR,
    NODE_ENV,
    WORKER,
    ProcessSpec,
    active_services,
    env_names,
    generate_env,
    interpolate,
    load_compose,
    plan_from_compose,
    start_order,
)

WORKERS = 3
AIRFLOW_KINDS = (AIRFLOW, AIRFLOW_ONCE, WORKER)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def env(state) -> dict[str, str]:
    return generate_env(state)


@pytest.fixture(scope="module")
def ports(compose) -> dict[str, int]:
    names = [*compose["services"], "airflow-scheduler"]
    return {name: 20000 + number for number, name in enumerate(names)}


@pytest.fixture(scope="module")
def plan(compose, env, ports, state) -> list[ProcessSpec]:
    return plan_from_compose(compose, env, ports, state, workers=WORKERS)


@pytest.fixture(scope="module")
def airflow_processes(plan) -> list[ProcessSpec]:
    return [spec for spec in plan if spec.kind in AIRFLOW_KINDS]


def test_every_compose_service_has_a_local_process(compose, plan):
    assert set(compose["services"]) <= set(LOCAL_FOR)
    default = {n for n, s in compose["services"].items() if "profiles" not in s}
    assert {spec.service for spec in plan} == default


def test_a_service_the_cluster_does_not_know_fails_the_plan(compose, env, ports, state):
    changed = copy.deepcopy(compose)
    changed["services"]["airflow-new-thing"] = {"image": "x"}
    with pytest.raises(ValueError, match="airflow-new-thing"):
        plan_from_compose(changed, env, ports, state)


def test_one_process_per_airflow_service_and_one_per_worker_replica(compose, airflow_processes):
    services = [  # the services with x-airflow-common's settings (the portal has its own)
        name
        for name, service in compose["services"].items()
        if "AIRFLOW__CORE__EXECUTOR" in (service.get("environment") or {})
        and "profiles" not in service
    ]
    expected = [name for name in services if name != "airflow-worker"]
    expected += [f"airflow-worker-{i}" for i in range(1, WORKERS + 1)]
    assert sorted(spec.name for spec in airflow_processes) == sorted(expected)


def test_flower_only_with_its_profile(compose, env, ports, state):
    with_profile = plan_from_compose(compose, env, ports, state, profiles=["flower"])
    assert [spec.argv[1:] for spec in with_profile if spec.service == "flower"] == [
        ("celery", "flower")
    ]


def test_workers_are_celery_workers_with_a_node_name_each_and_no_log_server(airflow_processes):
    workers = [spec for spec in airflow_processes if spec.kind == WORKER]
    hostnames = [spec.argv[spec.argv.index("--celery-hostname") + 1] for spec in workers]
    assert hostnames == [f"airflow-worker-{i}@%h" for i in range(1, WORKERS + 1)]
    assert all(spec.argv[1:3] == ("celery", "worker") for spec in workers)
    assert all("--skip-serve-logs" in spec.argv for spec in workers)
    assert [spec.env[NODE_ENV] for spec in workers] == [h.split("@")[0] for h in hostnames]


def test_every_compose_setting_reaches_every_airflow_process(compose, airflow_processes):
    common = set(compose["x-airflow-common"]["environment"])
    for spec in airflow_processes:
        assert common <= set(spec.env), spec.name
        assert spec.env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_secrets_are_the_same_in_every_process(airflow_processes, env):
    for key, variable in (
        ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_JWT_SECRET"),
        ("AIRFLOW__API__SECRET_KEY", "AIRFLOW_API_SECRET_KEY"),
        ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_FERNET_KEY"),
    ):
        assert {spec.env[key] for spec in airflow_processes} == {env[variable]}, key


def test_compose_host_names_are_loopback_addresses_with_local_ports(
    compose, airflow_processes, ports
):
    hosts = "|".join(re.escape(name) for name in compose["services"])
    compose_host = re.compile(rf"(@|//|\"host\": \")({hosts})\b")
    for spec in airflow_processes:
        for key, value in spec.env.items():
            assert not compose_host.search(value), (spec.name, key)
        env = spec.env
        assert env["AIRFLOW__CELERY__BROKER_URL"].endswith(f"@127.0.0.1:{ports['redis']}/0")
        assert (
            f"@127.0.0.1:{ports['postgres']}/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        )
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            f"http://127.0.0.1:{ports['airflow-apiserver']}/execution/"
        )
        billing = json.loads(env["AIRFLOW_CONN_BILLING_DB"])
        assert (billing["host"], billing["port"]) == ("127.0.0.1", ports["billing-db"])
        sftp = json.loads(env["AIRFLOW_CONN_CDR_SFTP_SECONDARY"])
        assert (sftp["host"], sftp["port"]) == ("127.0.0.1", ports["sftp-secondary"])
        assert sftp["extra"]["key_file"] == str(spec.home / "keys/client_ed25519")


def test_each_airflow_process_has_its_own_home_and_shares_only_compose_volumes(
    compose, airflow_processes, state
):
    homes = [spec.home for spec in airflow_processes]
    assert len(set(homes)) == len(homes)
    assert all(spec.env["AIRFLOW_HOME"] == str(spec.home) for spec in airflow_processes)
    mounted = {
        target.removeprefix("/opt/airflow/")
        for target in (v.split(":")[1] for v in compose["x-airflow-common"]["volumes"])
    }
    for spec in airflow_processes:
        assert set(spec.links) == mounted, spec.name
        for inside in ("logs", "cdr_billing_work", "cdr_billing_archive"):
            assert spec.links[inside].parent == state / "shared", inside
            assert not spec.links[inside].is_relative_to(spec.home)
    for inside in mounted:
        assert len({spec.links[inside] for spec in airflow_processes}) == 1, inside


def test_the_hostname_callable_names_the_node(airflow_processes, monkeypatch):
    path = airflow_processes[0].env["AIRFLOW__CORE__HOSTNAME_CALLABLE"]
    module, function = path.rsplit(".", 1)
    monkeypatch.setenv(NODE_ENV, "airflow-worker-2")
    assert getattr(importlib.import_module(module), function)() == "airflow-worker-2"


def test_the_generated_env_has_exactly_the_variables_of_env_example(compose, env, state):
    assert list(env) == env_names()
    text = (Path(__file__).resolve().parents[2] / "docker-compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    assert used <= set(env)
    assert generate_env(state) == env  # kept across starts: the databases keep their passwords
    assert (state / ".env").stat().st_mode & 0o077 == 0


def test_the_host_keys_in_the_env_are_the_servers_key_pairs(env, state):
    public = (state / "servers" / "sftp_primary_host_ed25519.pub").read_text()
    assert env["CDR_SFTP_PRIMARY_HOST_KEY"] == " ".join(public.split()[:2])


def test_interpolation_follows_compose():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A:?set}y$${HOSTNAME}${B:-d}", env) == "x1y${HOSTNAME}d"
    with pytest.raises(KeyError, match="EMPTY"):
        interpolate("${EMPTY:?set in .env}", env)


def test_servers_start_before_the_airflow_processes_and_dependencies_first(compose):
    services = active_services(compose)
    order = start_order(services)
    for name in order:
        for dependency in services[name].get("depends_on") or ():
            assert order.index(dependency) < order.index(name), (dependency, name)
    first_airflow = min(order.index(n) for n in order if LOCAL_FOR[n] in AIRFLOW_KINDS)
    servers = [n for n in order if LOCAL_FOR[n] in ("postgres", "redis", "sftp", "smtp")]
    assert all(order.index(n) < first_airflow for n in servers)


def test_the_portal_runs_its_compose_command_on_loopback_with_its_local_address(plan, ports):
    (portal,) = [spec for spec in plan if spec.service == "billing-portal"]
    assert portal.argv[1:3] == ("-m", "cdr_billing.portal")
    assert portal.argv[portal.argv.index("--host") + 1] == "127.0.0.1"
    assert portal.argv[portal.argv.index("--port") + 1] == str(ports["billing-portal"])
    # the sign-in mails link to where the portal is reached: compose's published port, here
    assert portal.env["CDR_PORTAL_URL"] == f"http://127.0.0.1:{ports['billing-portal']}"
    billing = json.loads(portal.env["AIRFLOW_CONN_BILLING_DB"])
    assert (billing["host"], billing["port"]) == ("127.0.0.1", ports["billing-db"])
