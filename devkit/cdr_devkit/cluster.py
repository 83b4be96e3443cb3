"""`make cluster`: what docker-compose.yaml describes, on one machine, without Docker.

The plan is read from the compose file itself (so the two cannot drift): one process per compose
service (and per worker replica), each Airflow process with its own AIRFLOW_HOME-like directory
under the state directory, where compose has a container. Only what compose shares is shared:
its named volumes and bind mounts become symlinks into each home (logs, work and archive
directories, DAGs, the client key), the databases and Redis are the same servers for all.
Environment = compose's, `${VAR}` interpolated from a generated .env with deploy/env.example's
names, compose host names rewritten to 127.0.0.1 and the port each local server got.

What differs from compose, and why (local_settings and the servers): Debian's PostgreSQL 15
with trust authentication (roles and databases as compose's), sshd without a chroot (so the
pipeline config's remote directories are rewritten under the SFTP home), the devkit's SMTP
server for mailpit, task_instance.hostname = the compose node's name (several workers on one
host), no scheduled runs (the command triggers its month), two task slots per worker by
default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cdr_devkit.airflow_env import ALLOCATOR_SETTINGS, DAG_ID, PROJECT_ROOT
from cdr_devkit.airflow_server import (
    AirflowClient,
    airflow_command,
    write_admin_password,
)
from cdr_devkit.services import LocalServices, ServerProcess, ServiceError, free_port

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / "deploy" / "env.example"
DEFAULT_STATE = PROJECT_ROOT / ".cluster"
IMAGE_HOME = "/opt/airflow"  # the official image's AIRFLOW_HOME, where compose mounts things
NODE_ENV = "CDR_CLUSTER_NODE"
ADMIN_PASSWORD = "admin"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 180
STOP_TIMEOUT_SECONDS = 30

POSTGRES, REDIS, SFTP, SMTP = "postgres", "redis", "sftp", "smtp"
AIRFLOW, AIRFLOW_ONCE, WORKER, PORTAL = "airflow", "airflow-once", "airflow-worker", "portal"
# How each compose service runs here; a service missing from this table fails the plan.
LOCAL_FOR = {
    "postgres": POSTGRES,
    "billing-db": POSTGRES,
    "redis": REDIS,
    "airflow-init": AIRFLOW_ONCE,
    "airflow-apiserver": AIRFLOW,
    "airflow-scheduler": AIRFLOW,
    "airflow-dag-processor": AIRFLOW,
    "airflow-triggerer": AIRFLOW,
    "airflow-worker": WORKER,
    "flower": AIRFLOW,
    "sftp-primary": SFTP,
    "sftp-secondary": SFTP,
    "mailpit": SMTP,
    "billing-portal": PORTAL,
}
# The local argv of each Airflow service (airflow-init's chown needs no root here: one user).
AIRFLOW_ARGV = {
    "airflow-init": ("db", "migrate"),
    "airflow-apiserver": ("api-server",),
    "airflow-scheduler": ("scheduler",),
    "airflow-dag-processor": ("dag-processor",),
    "airflow-triggerer": ("triggerer",),
    "flower": ("celery", "flower"),
}
SERVER_KINDS = (POSTGRES, REDIS, SFTP, SMTP)  # started by the devkit's servers, before Airflow
# Services with a port of their own here (compose's fixed ports would clash on one host).
LISTENING = (POSTGRES, REDIS, SFTP, SMTP, PORTAL)
PLACEHOLDER = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
URL_HOST = re.compile(
    r"(?P<head>://(?:[^@/\s]*@)?)(?P<host>[A-Za-z][\w-]*)(?::(?P<port>\d+))?(?=[/\s]|$)"
)


@dataclass(frozen=True)
class ProcessSpec:
    """One local process standing in for a compose container."""

    name: str  # the node: the compose service, or airflow-worker-<i> for a replica
    service: str  # the compose service
    kind: str  # how it runs here (LOCAL_FOR)
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    home: Path | None = None  # AIRFLOW_HOME-like state of an Airflow process
    links: Mapping[str, Path] = field(default_factory=dict)  # path in home -> shared target
    depends_on: tuple[str, ...] = ()  # compose services started before it
    port: int | None = None


def node_name() -> str:
    """Airflow's hostname_callable in the cluster: the compose node this process stands for
    (airflow-worker-1, ...), so task_instance.hostname tells workers on one host apart."""
    return os.environ.get(NODE_ENV) or socket.getfqdn()


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    """The compose file, merge keys (`<<:`) resolved by the YAML loader."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def env_names(example: Path = ENV_EXAMPLE) -> list[str]:
    """The variable names deploy/env.example asks for, in its order."""
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", example.read_text(encoding="utf-8"), re.MULTILINE)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: `${VAR}`, `${VAR:?msg}` (required), `${VAR:-default}`, `$$`."""

    def value(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator and "?" in operator:
            raise KeyError(f"{name} is not set ({argument})")
        return argument if operator and "-" in operator else ""

    return PLACEHOLDER.sub(value, text)


def host_key_file(name: str) -> str:
    """The key file a CDR_SFTP_<X>_HOST_KEY variable pins (deploy/env.example's naming)."""
    server = name.removeprefix("CDR_").removesuffix("_HOST_KEY").lower()
    return f"{server}_host_ed25519"


def generate_env(state: Path, names: Sequence[str] | None = None) -> dict[str, str]:
    """The cluster's .env (state/.env, kept across starts): every deploy/env.example variable,
    secrets random, host keys those of the key pairs in state/servers."""
    path = state / ".env"
    if path.exists():
        kept = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        if set(kept) == set(names or env_names()):
            return kept
    from cryptography.fernet import Fernet

    keys = LocalServices(state / "servers")
    env = {}
    for name in names or env_names():
        if name == "AIRFLOW_UID":
            env[name] = str(os.getuid())
        elif name == "AIRFLOW_FERNET_KEY":
            env[name] = Fernet.generate_key().decode()
        elif name.endswith("_HOST_KEY"):
            public = keys._key_pair(host_key_file(name).removesuffix("_ed25519")).public
            env[name] = " ".join(public.read_text().split()[:2])
        elif re.search(r"(PASSWORD|SECRET|SECRET_KEY)$", name):
            env[name] = secrets.token_hex(24)
        else:
            raise ValueError(f"{name} (deploy/env.example): the cluster does not know its value")
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
    path.chmod(0o600)
    return env


def active_services(compose: dict, profiles: Sequence[str] = ()) -> dict[str, dict]:
    """The services `docker compose up` starts with these profiles; each one must be mapped."""
    unmapped = sorted(set(compose["services"]) - set(LOCAL_FOR))
    if unmapped:
        raise ValueError(f"compose services without a local process (LOCAL_FOR): {unmapped}")
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def start_order(services: Mapping[str, dict]) -> list[str]:
    """The services in depends_on order; servers (no Airflow image) first, since every Airflow
    process's connections name them."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in order or name not in services:
            return
        if name in path:
            raise ValueError(f"depends_on cycle: {' -> '.join((*path, name))}")
        for dependency in services[name].get("depends_on") or ():
            visit(dependency, (*path, name))
        order.append(name)

    servers = [n for n in services if LOCAL_FOR[n] in (POSTGRES, REDIS, SFTP, SMTP)]
    for name in [*servers, *services]:
        visit(name)
    return order


def mounts(service: dict) -> dict[str, str]:
    """A service's volumes as container path -> source (named volume or ./host path)."""
    found = {}
    for volume in service.get("volumes") or ():
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def host_path(source: str, state: Path) -> Path:
    """Where a compose volume source lives here: named volumes in state/shared, the key files
    of ./deploy/keys in state/servers (generated), other bind mounts in the project."""
    if source.startswith("./deploy/keys/"):
        return state / "servers" / source.removeprefix("./deploy/keys/")
    if source.startswith("./"):
        return PROJECT_ROOT / source.removeprefix("./")
    return state / "shared" / source


def published_ports(services: Mapping[str, dict], ports: Mapping[str, int]) -> dict[int, int]:
    """Compose's published host ports (`ports: ["8090:8090"]`) of the Airflow image's and the
    portal's services -> the local port each one got here (localhost:8090 in a setting)."""
    published = {}
    for name, service in services.items():
        if LOCAL_FOR[name] in (AIRFLOW, PORTAL) and name in ports:
            for mapping in service.get("ports") or ():
                published[int(str(mapping).split(":")[-2])] = ports[name]
    return published


def rewrite_hosts(
    value: str, ports: Mapping[str, int], sftp_login: str, published: Mapping[int, int]
) -> str:
    """A setting with compose host names made loopback addresses with their local ports: URLs
    (host[:port], localhost:<published port>) and Airflow connections as JSON (host, port;
    SFTP logins as sshd's user)."""
    if value.startswith("{"):
        connection = json.loads(value)
        host = connection.get("host")
        if host in ports:
            connection.update(host=LOOPBACK, port=ports[host])
            if LOCAL_FOR[host] == SFTP:
                connection["login"] = sftp_login
        return json.dumps(connection)

    def local(match: re.Match) -> str:
        host, port = match.group("host"), match.group("port")
        if host == "localhost" and port and int(port) in published:
            return f"{match.group('head')}{LOOPBACK}:{published[int(port)]}"
        if host not in ports:
            return match.group(0)
        return f"{match.group('head')}{LOOPBACK}:{ports[host]}"

    return URL_HOST.sub(local, value)


def airflow_env(
    service: dict,
    node: str,
    home: Path,
    env: Mapping[str, str],
    ports: Mapping[str, int],
    local: Mapping[str, str],
    published: Mapping[int, int],
) -> dict[str, str]:
    """An Airflow process's environment: compose's, interpolated, container paths in its home,
    hosts local; then the local settings."""
    from cdr_devkit.openssh_server import login_name

    compose_env = {}
    for key, raw in (service.get("environment") or {}).items():
        text = interpolate(str(raw), env).replace(IMAGE_HOME, str(home))
        compose_env[key] = rewrite_hosts(text, ports, login_name(), published)
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "CDR_BILLING_"))  # a test session's own Airflow
    }
    return {
        **inherited,
        **compose_env,
        **local,
        "AIRFLOW_HOME": str(home),
        NODE_ENV: node,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
            home / "simple_auth_manager_passwords.json"
        ),
    }


def local_settings(
    state: Path, ports: Mapping[str, int], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Settings compose does not have, one machine needs (see the module's docstring)."""
    api = ports["airflow-apiserver"]
    flower = (
        {
            "AIRFLOW__CELERY__FLOWER_HOST": LOOPBACK,
            "AIRFLOW__CELERY__FLOWER_PORT": str(ports["flower"]),
        }
        if "flower" in ports
        else {}
    )
    return {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(api),
        "AIRFLOW__API__BASE_URL": f"http://{LOOPBACK}:{api}",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports["airflow-scheduler"]),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "cdr_devkit.cluster.node_name",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # sshd serves absolute paths: the config's remote directories under the SFTP home
        "CDR_BILLING_CONFIG": str(state / "shared" / "pipeline.yaml"),
        "CDR_BILLING_STABLE_SECONDS": "0",  # the demo's files are complete when served
        "GX_ANALYTICS_ENABLED": "false",
        **ALLOCATOR_SETTINGS,
        **flower,
        **(extra or {}),
    }


def airflow_argv(service_name: str, node: str, concurrency: int | None) -> tuple[str, ...]:
    """`airflow <command>`; a worker named after its node, no log server (compose shares the
    log volume; two log servers on one host would clash on port 8793)."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    if service_name == "airflow-worker":
        argv = ["celery", "worker", "--celery-hostname", f"{node}@%h", "--skip-serve-logs"]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        return (airflow, *argv)
    return (airflow, *AIRFLOW_ARGV[service_name])


def portal_argv(service: dict, port: int) -> tuple[str, ...]:
    """The portal's compose command with this host's Python, loopback and its port."""
    command = service.get("command") or ["python", "-m", "cdr_billing.portal"]
    argv = command.split() if isinstance(command, str) else list(command)
    if argv[0].startswith("python"):
        argv[0] = sys.executable
    for option, value in (("--host", LOOPBACK), ("--port", str(port))):
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return tuple(argv)


def plan_ports(services: Mapping[str, dict]) -> dict[str, int]:
    """A free loopback port for every service that listens here (sshd and SMTP pick their own
    when started; the cluster records those)."""
    listening = [n for n in services if LOCAL_FOR[n] in LISTENING]
    listening += ["airflow-apiserver", "airflow-scheduler", "flower"]
    return {name: free_port() for name in listening if name in services}


def home_links(service: dict, state: Path) -> dict[str, Path]:
    """A service's mounts under the image's AIRFLOW_HOME as paths in a local home -> what
    they are here (a named volume's shared directory, a project or key file)."""
    return {
        target.removeprefix(IMAGE_HOME + "/"): host_path(source, state)
        for target, source in mounts(service).items()
        if target.startswith(IMAGE_HOME + "/")
    }


def plan_from_compose(
    compose: dict,
    env: Mapping[str, str],
    ports: Mapping[str, int],
    state: Path,
    workers: int = 2,
    profiles: Sequence[str] = (),
    worker_concurrency: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> list[ProcessSpec]:
    """Every process of the compose stack as it runs here, in start order."""
    services = active_services(compose, profiles)
    local = local_settings(state, ports, extra_env)
    published = published_ports(services, ports)
    plan = []
    for name in start_order(services):
        service, kind = services[name], LOCAL_FOR[name]
        depends = tuple(service.get("depends_on") or ())
        base = ProcessSpec(name, name, kind, depends_on=depends, port=ports.get(name))
        if kind in (AIRFLOW, AIRFLOW_ONCE, WORKER, PORTAL):
            nodes = [f"{name}-{i}" for i in range(1, workers + 1)] if kind == WORKER else [name]
            for node in nodes:
                home = state / node
                plan.append(
                    replace(
                        base,
                        name=node,
                        argv=portal_argv(service, ports[name])
                        if kind == PORTAL
                        else airflow_argv(name, node, worker_concurrency),
                        env=airflow_env(service, node, home, env, ports, local, published),
                        home=home,
                        links=home_links(service, state),
                    )
                )
        elif kind == REDIS:
            command = [interpolate(str(part), env) for part in service.get("command") or ()]
            plan.append(replace(base, argv=tuple(command[1:])))  # options after redis-server
        elif kind == POSTGRES:
            plan.append(
                replace(
                    base,
                    env={k: interpolate(str(v), env) for k, v in service["environment"].items()},
                )
            )
        elif kind == SFTP:
            links = {target: host_path(source, state) for target, source in mounts(service).items()}
            plan.append(replace(base, links=links, argv=tuple(str(service["command"]).split())))
        else:
            plan.append(base)
    return plan


class DbServer:
    """A compose PostgreSQL service: a local cluster with compose's role and database."""

    def __init__(self, spec: ProcessSpec) -> None:
        from cdr_devkit.postgres import LocalPostgres

        self.user, self.database = spec.env["POSTGRES_USER"], spec.env["POSTGRES_DB"]
        self.server = LocalPostgres(database=self.database)
        self.server.port = spec.port
        self.password = spec.env["POSTGRES_PASSWORD"]

    def start(self) -> DbServer:
        """initdb, start, create compose's role as the database's owner."""
        from sqlalchemy import create_engine, text

        self.server.start()
        engine = create_engine(self.server.url_of("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE ROLE {self.user} LOGIN PASSWORD :p"), {"p": self.password})
            conn.execute(text(f"ALTER DATABASE {self.database} OWNER TO {self.user}"))
        engine.dispose()
        return self

    @property
    def url(self) -> str:
        """SQLAlchemy URL of compose's database, as the superuser (tests look and lock)."""
        return self.server.url_of(self.database)

    def stop(self) -> None:
        self.server.stop()


def descendants(pid: int) -> list[int]:
    """Every process below pid, each child before its own children (/proc/<pid>/task/<tid>/
    children of each thread): the Task SDK puts a task process in a process group of its own,
    so a worker's process group is not all of it."""
    children = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in listing.read_text().split()]
        except OSError:  # the thread or process ended meanwhile
            continue
    return [found for child in children for found in (child, *descendants(child))]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it, descendants first, as a crashed host would."""
    for victim in [*reversed(descendants(pid)), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def write_pipeline_config(path: Path, sftp_home: Path) -> Path:
    """The shipped pipeline config with every remote directory under sftp_home (what atmoz/sftp's
    chroot /home/<user> is; sshd here has no chroot)."""
    config = yaml.safe_load((PROJECT_ROOT / "include/config/pipeline.yaml").read_text())
    for source in config["sources"]:
        source["remote_dir"] = f"{sftp_home}{source['remote_dir']}"
    for files in config["reference"].values():
        files["remote_dir"] = f"{sftp_home}{files['remote_dir']}"
    config["profiles_file"] = str(
        PROJECT_ROOT / "include/config" / config.get("profiles_file", "profiles.yaml")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class LocalCluster:
    """The compose stack as local processes (see the module docstring); stops it all on exit.

    Interface: `start()`/`stop()` (or `with`), `api` (AirflowClient of the api-server),
    `metadata_url`/`billing_url` (superuser URLs), `sftp_home` (what the SFTP servers serve as
    their root), `worker(i)` (node name), `kill_worker(i)`, `restart(node)`, `airflow(*args)`,
    `env_of(node)`, `plan`.
    """

    def __init__(
        self,
        state: Path = DEFAULT_STATE,
        workers: int = 2,
        profiles: Sequence[str] = (),
        worker_concurrency: int | None = 2,
        extra_env: Mapping[str, str] | None = None,
        compose_file: Path = COMPOSE_FILE,
    ) -> None:
        self.state = state
        self.compose = load_compose(compose_file)
        self.options = {
            "workers": workers,
            "profiles": tuple(profiles),
            "worker_concurrency": worker_concurrency,
            "extra_env": dict(extra_env or {}),
        }
        self.env: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.plan: list[ProcessSpec] = []
        self.processes: dict[str, subprocess.Popen] = {}
        self.databases: dict[str, DbServer] = {}
        self.servers: dict[str, ServerProcess] = {}
        self.local: LocalServices | None = None
        self.api = AirflowClient("http://unset", ADMIN_PASSWORD)

    # --- plan -----------------------------------------------------------------------------
    @property
    def sftp_home(self) -> Path:
        """The SFTP user's home (atmoz/sftp's chroot): the inbox and reference volumes."""
        return self.state / "sftp-home"

    def spec(self, node: str) -> ProcessSpec:
        """The plan's process of a node."""
        return next(spec for spec in self.plan if spec.name == node)

    def env_of(self, node: str) -> dict[str, str]:
        """The environment of an Airflow node (e.g. to run the CLI or read its config)."""
        return dict(self.spec(node).env)

    @staticmethod
    def worker(index: int) -> str:
        """The node name of worker replica index (1-based), as task_instance.hostname shows it."""
        return f"airflow-worker-{index}"

    @property
    def metadata_url(self) -> str:
        """Airflow's metadata database (service postgres), as its superuser."""
        return self.databases["postgres"].url

    @property
    def billing_url(self) -> str:
        """The billing database (service billing-db), as its superuser."""
        return self.databases["billing-db"].url

    def _make_plan(self) -> list[ProcessSpec]:
        return plan_from_compose(self.compose, self.env, self.ports, self.state, **self.options)

    # --- start ----------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        """Start every service in depends_on order, each once its dependencies are ready."""
        self.state.mkdir(parents=True, exist_ok=True)
        for stale in ("shared/airflow-logs", "sftp-home"):
            shutil.rmtree(self.state / stale, ignore_errors=True)
        self.env = generate_env(self.state)
        self.local = LocalServices(self.state / "servers")
        self.ports = plan_ports(active_services(self.compose, self.options["profiles"]))
        self.plan = self._make_plan()
        for spec in [s for s in self.plan if s.kind in SERVER_KINDS]:
            self._start_server(spec)
        self.plan = self._make_plan()  # with the ports sshd and SMTP picked
        write_pipeline_config(self.state / "shared" / "pipeline.yaml", self.sftp_home)
        self.api = AirflowClient(f"http://{LOOPBACK}:{self.ports['airflow-apiserver']}")
        self._start_in_waves([s for s in self.plan if s.kind not in SERVER_KINDS])
        return self

    def _start_in_waves(self, pending: list[ProcessSpec]) -> None:
        """As compose does: every process whose dependencies are ready starts at once, and the
        next wave once they are ready (airflow-init: once it completed)."""
        ready = {spec.service for spec in self.plan if spec.kind in SERVER_KINDS}
        while pending:
            wave = [spec for spec in pending if set(spec.depends_on) <= ready]
            if not wave:
                raise ServiceError(f"unmet depends_on: {[spec.name for spec in pending]}")
            for spec in wave:
                self._launch(spec)
            for spec in wave:
                if spec.kind != AIRFLOW_ONCE:
                    self._wait_ready(spec)
            ready |= {spec.service for spec in wave}
            pending = [spec for spec in pending if spec not in wave]

    def _start_server(self, spec: ProcessSpec) -> None:
        assert self.local is not None
        if spec.kind == POSTGRES:
            self.databases[spec.name] = DbServer(spec).start()
            return
        if spec.kind == REDIS:
            password = spec.argv[spec.argv.index("--requirepass") + 1]
            server = self.local.start_redis(spec.name, password, spec.port, spec.argv)
        elif spec.kind == SMTP:
            server = self.local.start_smtp(self.state / "shared" / "mail")
        else:
            server = self.local.start_openssh(self._sftp_name(spec))
            self._link_sftp_home(spec)
        self.servers[spec.name] = server
        self.ports[spec.name] = server.port

    @staticmethod
    def _sftp_name(spec: ProcessSpec) -> str:
        """The server's key pair name: its host key file in compose is <name>_host_ed25519."""
        return spec.links["/etc/ssh/ssh_host_ed25519_key"].name.removesuffix("_host_ed25519")

    def _link_sftp_home(self, spec: ProcessSpec) -> None:
        """The chroot's volumes (/home/<user>/cdr, /home/<user>/reference) in sftp_home."""
        user = spec.argv[0].split(":")[0]
        for target, source in spec.links.items():
            inside = target.removeprefix(f"/home/{user}/")
            if inside != target and not inside.startswith(".ssh/"):
                source.mkdir(parents=True, exist_ok=True)
                link = self.sftp_home / inside
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(source)

    def _prepare_home(self, spec: ProcessSpec) -> None:
        assert spec.home is not None
        spec.home.mkdir(parents=True, exist_ok=True)
        write_admin_password(spec.home, ADMIN_PASSWORD)
        for inside, target in spec.links.items():
            if not target.exists() and target.parent.name == "shared":
                target.mkdir(parents=True)
            link = spec.home / inside
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)

    def _start_process(self, spec: ProcessSpec) -> None:
        self._launch(spec)
        self._wait_ready(spec)

    def _launch(self, spec: ProcessSpec) -> None:
        """Start a process (airflow-init: run it to its end)."""
        self._prepare_home(spec)
        assert spec.home is not None
        with (spec.home / "process.log").open("ab") as log:
            if spec.kind == AIRFLOW_ONCE:
                done = subprocess.run(spec.argv, env=dict(spec.env), stdout=log, stderr=log)
                if done.returncode:
                    raise ServiceError(f"{spec.name} failed: see {spec.home / 'process.log'}")
                return
            self.processes[spec.name] = subprocess.Popen(
                spec.argv,
                env=dict(spec.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    # --- readiness (compose's healthchecks) ------------------------------------------------
    def _ready_check(self, spec: ProcessSpec) -> Callable[[], bool]:
        """The compose healthcheck's probe, run from here: curl of a path on the service's local
        port, `airflow jobs check` as a query of the job table, `celery inspect ping` through
        the broker; without a healthcheck, an open port."""
        test = self.compose["services"][spec.service].get("healthcheck", {}).get("test", [])
        command = " ".join(str(part) for part in test)
        if curl := re.search(r"curl .*http://localhost:\d+(\S*)", command):
            path = curl.group(1).strip("\"'") or "/"
            return lambda: self._http_ok(self.ports[spec.service], path)
        if job := re.search(r"--job-type (\w+)", command):
            return lambda: self._job_alive(job.group(1), spec.name)
        if "inspect ping" in command:
            return lambda: self._worker_pongs(spec.name)
        return lambda: self._port_open(spec.port)

    def _wait_ready(self, spec: ProcessSpec) -> None:
        check = self._ready_check(spec)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.processes[spec.name].poll() is not None:
                raise ServiceError(f"{spec.name} exited: see {spec.home}/process.log")
            if check():
                return
            time.sleep(0.5)
        raise ServiceError(f"{spec.name} was not ready within {START_TIMEOUT_SECONDS} s")

    @staticmethod
    def _http_ok(port: int, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    @staticmethod
    def _port_open(port: int | None) -> bool:
        try:
            with socket.create_connection((LOOPBACK, port or 0), timeout=1):
                return True
        except OSError:
            return False

    def _job_alive(self, job_type: str, node: str) -> bool:
        """`airflow jobs check --job-type X --hostname node`, read from the metadata DB."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.metadata_url)
        try:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        text(
                            "SELECT 1 FROM job WHERE job_type = :t AND hostname = :h "
                            "AND state = 'running' "
                            "AND latest_heartbeat > now() - interval '30 seconds'"
                        ),
                        {"t": job_type, "h": node},
                    ).first()
                )
        except Exception:  # the job table appears with the first migration only
            return False
        finally:
            engine.dispose()

    def _worker_pongs(self, node: str) -> bool:
        """`celery inspect ping` of the worker, through the broker."""
        from celery import Celery

        broker = self.env_of(node)["AIRFLOW__CELERY__BROKER_URL"]
        app = Celery(broker=broker)
        try:
            answers = app.control.ping(timeout=1)
        except Exception:
            return False
        finally:
            app.close()
        return any(name.startswith(f"{node}@") for answer in answers for name in answer)

    # --- faults ---------------------------------------------------------------------------
    def kill_worker(self, index: int) -> list[int]:
        """SIGKILL worker replica index and every process below it (its task processes);
        return their pids."""
        process = self.processes.pop(self.worker(index))
        killed = [process.pid, *descendants(process.pid)]
        kill_tree(process.pid)
        process.wait()
        return killed

    def restart(self, node: str) -> None:
        """Stop a node (SIGTERM; the Redis AOF is written) and start it again on the same
        port and state; a killed worker is started again."""
        spec = self.spec(node)
        if spec.kind == REDIS:
            assert self.local is not None
            old = self.servers.pop(node)
            old.stop()
            self.local.servers.remove(old)
            self._start_server(spec)
            return
        if spec.kind not in (AIRFLOW, WORKER, PORTAL):
            raise ValueError(f"restart of {node} ({spec.kind}) is not supported")
        if node in self.processes:
            self._terminate([self.processes.pop(node)])
        self._start_process(spec)

    # --- stop -----------------------------------------------------------------------------
    @staticmethod
    def _terminate(processes: list[subprocess.Popen]) -> None:
        """SIGTERM each process group at once, wait up to STOP_TIMEOUT_SECONDS, then SIGKILL
        whatever is left below each (task processes have process groups of their own)."""
        below = {process.pid: descendants(process.pid) for process in processes}
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in processes:
            for pid in below[process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            kill_tree(process.pid)
            process.wait()

    def stop(self) -> None:
        """Stop every process, then the servers; nothing is left running."""
        self._terminate(list(reversed(self.processes.values())))
        self.processes.clear()
        if self.local is not None:
            self.local.stop_all()
        for database in self.databases.values():
            database.stop()
        self.databases.clear()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def airflow(self, *args: str, node: str = "airflow-scheduler") -> str:
        """Run an `airflow ...` CLI command as a node would."""
        return airflow_command(self.env_of(node), *args)


# --- the demo month --------------------------------------------------------------------------
@dataclass(frozen=True)
class MonthRun:
    """A triggered run of the monthly DAG: its id, end state and task instances (task_id,
    map_index, state, try_number, hostname)."""

    run_id: str
    state: str
    task_instances: list[dict[str, Any]]


def trigger_month(cluster: LocalCluster, month: str) -> str:
    """Unpause the monthly DAG and trigger a run of month; return its run id."""
    cluster.api.wait_for_dag(DAG_ID, START_TIMEOUT_SECONDS)
    cluster.api.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    answer = cluster.api.api(
        "POST",
        f"/dags/{DAG_ID}/dagRuns",
        {"logical_date": None, "conf": {"billing_month": month}},
    )
    return answer["dag_run_id"]


def wait_for_run(cluster: LocalCluster, run_id: str, timeout_seconds: float = 600) -> MonthRun:
    """Poll the run until it succeeded or failed; its task instances."""
    deadline = time.monotonic() + timeout_seconds
    state = "queued"
    while time.monotonic() < deadline:
        state = cluster.api.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            break
        time.sleep(1)
    answer = cluster.api.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=1000")
    keys = ("task_id", "map_index", "state", "try_number", "hostname")
    instances = [{key: ti.get(key) for key in keys} for ti in answer["task_instances"]]
    return MonthRun(run_id, state, instances)


def lines_summary(billing_url: str, month: str) -> list[dict[str, Any]]:
    """The month's current billing lines: customer, sequence, currency, total, calls."""
    from sqlalchemy import create_engine, text

    engine = create_engine(billing_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.customer_id, l.sequence_number, l.currency, l.total_minor, "
                "l.call_count FROM billing_line l JOIN billing_batch b USING (batch_id) "
                "WHERE b.billing_month = :m AND b.status = 'current' "
                "ORDER BY l.customer_id, l.sequence_number, l.currency"
            ),
            {"m": month},
        ).mappings()
        lines = [dict(row) for row in rows]
    engine.dispose()
    return lines


def format_run(run: MonthRun, lines: list[dict[str, Any]]) -> str:
    """The lines and which node ran each task instance."""
    out = [f"run {run.run_id}: {run.state}", "billing lines (current batch):"]
    out += [
        f"  {line['customer_id']:<12}{line['sequence_number']:<6}{line['currency']:<5}"
        f"{line['total_minor'] / 100:>12,.2f}{line['call_count']:>8} calls"
        for line in lines
    ]
    out.append("task instances (node that ran each, try):")
    for ti in sorted(run.task_instances, key=lambda t: (t["task_id"], t["map_index"])):
        mapped = "" if ti["map_index"] < 0 else f"[{ti['map_index']}]"
        out.append(
            f"  {ti['task_id'] + mapped:<28}{ti['state'] or '':<10}"
            f"{ti['hostname'] or '':<24}try {ti['try_number']}"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from cdr_billing.months import BillingMonth
    from cdr_devkit.sample_data import generate_month
    from cdr_devkit.services import stop_on_sigterm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--month", default="2026-10", help="the sample month to bill")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker replicas")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="task slots per worker (compose: Celery's 16)"
    )
    parser.add_argument("--profile", action="append", default=[], help="compose profile")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="the cluster's files")
    parser.add_argument("--keep", action="store_true", help="stay up until Ctrl-C")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    cluster = LocalCluster(
        args.state.resolve(), args.workers, args.profile, worker_concurrency=args.concurrency
    )
    started = time.monotonic()
    with cluster:
        print(
            f"cluster up in {time.monotonic() - started:.0f} s: "
            + ", ".join(spec.name for spec in cluster.plan if spec.kind != AIRFLOW_ONCE)
        )
        generate_month(cluster.sftp_home, BillingMonth.parse(args.month))
        triggered = time.monotonic()
        run = wait_for_run(cluster, trigger_month(cluster, args.month))
        print(f"the month's run took {time.monotonic() - triggered:.0f} s")
        print(format_run(run, lines_summary(cluster.billing_url, args.month)))
        if args.keep:
            print(f"Airflow UI: {cluster.api.base_url} (admin/{ADMIN_PASSWORD})")
            if "billing-portal" in cluster.ports:
                print(f"portal: http://{LOOPBACK}:{cluster.ports['billing-portal']}")
            print(f"mails: {cluster.state / 'shared' / 'mail'}; Ctrl-C stops it all")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0 if run.state == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
