"""`make bench-sftp`: the fetch against the transfer's limit, OpenSSH's own `sftp` client.

Serves the benchmark month (`make bench-pipeline`'s, cached in `.bench/pipeline/`) from OpenSSH's
sshd, the server providers run, and times on the same files, best of N rounds:

1. OpenSSH's `sftp` client (`sftp -q -b -`, default settings, only the pinned host key trusted)
   getting one file, then the month's files in one session: the limit;
2. the project's fetch (`acquire.fetch_with_failover`, as the fetch stage calls it: host key
   pinned, stable-file listing, SHA-256, size and mtime checked after the download, fsync,
   atomic rename) on the same file, then the month.

Prints MB/s and the project's share of the limit (target: at least 70 %). Everything else lives
under `.bench/sftp/`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from cdr_billing.acquire import FileRequest, fetch_with_failover
from cdr_devkit.airflow_env import PROJECT_ROOT
from cdr_devkit.bench_data import BenchMonth
from cdr_devkit.bench_pipeline import limit_bench_arguments
from cdr_devkit.services import LocalServices, SftpServer, connection_env

DEFAULT_ROOT = PROJECT_ROOT / ".bench" / "sftp"
TARGET_SHARE = 0.70
CONN_ID = "bench_sftp_openssh"
TIMEOUT_SECONDS = 60


class Timing(NamedTuple):
    """One contender on one set of files: bytes moved and the best wall time of the rounds."""

    contender: str
    files: int
    bytes: int
    seconds: float

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6


def pinned_known_hosts(server: SftpServer, path: Path) -> Path:
    """A known_hosts file holding only the server's pinned key, for OpenSSH's client."""
    path.write_text(f"[127.0.0.1]:{server.port} {server.host_key}\n", encoding="utf-8")
    return path


def sftp_command(server: SftpServer, client_key: Path, known_hosts: Path) -> list[str]:
    """OpenSSH's sftp in batch mode trusting only the pinned key: no user or system config, no
    other known_hosts, no agent, no question asked."""
    return [
        "sftp",
        "-q",
        "-b",
        "-",
        "-F",
        "/dev/null",
        "-i",
        str(client_key),
        "-P",
        str(server.port),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        f"{server.login}@127.0.0.1",
    ]


def time_openssh_sftp(command: list[str], files: Sequence[Path], dest: Path) -> float:
    """Seconds for OpenSSH's sftp to get the files into dest in one session (connect included)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    script = "".join(f'get "{path}" "{dest / path.name}"\n' for path in files)
    started = time.perf_counter()
    subprocess.run(command, input=script, text=True, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    _check_copies(files, dest)
    return seconds


def time_project_fetch(served_dir: Path, pattern: str, files: Sequence[Path], dest: Path) -> float:
    """Seconds for the project's fetch (connect, list, download, verify) of the files."""
    shutil.rmtree(dest, ignore_errors=True)
    request = FileRequest("cdr", "carrier", str(served_dir), pattern)
    started = time.perf_counter()
    result = fetch_with_failover([CONN_ID], [request], dest, TIMEOUT_SECONDS)
    seconds = time.perf_counter() - started
    if sorted(f.name for f in result.files) != sorted(p.name for p in files):
        raise RuntimeError(f"the fetch got {[f.name for f in result.files]}, not {files}")
    _check_copies(files, dest)
    return seconds


def _check_copies(files: Sequence[Path], dest: Path) -> None:
    """Every file arrived whole (sizes; the fetch checks its own SHA-256)."""
    for path in files:
        if (dest / path.name).stat().st_size != path.stat().st_size:
            raise RuntimeError(f"{path.name}: the copy's size differs")


def best_of(rounds: int, measure: Callable[[], float]) -> float:
    """The fastest of the rounds (the machine's other work only ever slows a round down)."""
    return min(measure() for _ in range(rounds))


def serve(month: BenchMonth, served_dir: Path) -> list[Path]:
    """The month's CDR files under served_dir (hard links where possible)."""
    shutil.rmtree(served_dir, ignore_errors=True)
    served_dir.mkdir(parents=True)
    served = []
    for source in month.cdr_files:
        target = served_dir / source.name
        try:
            os.link(source, target)
        except OSError:  # another file system
            shutil.copyfile(source, target)
        served.append(target)
    return served


def run(month: BenchMonth, root: Path, rounds: int) -> dict:
    """Time both contenders on one file and on the month; return the figures (also kept in
    root/bench_sftp.json)."""
    root.mkdir(parents=True, exist_ok=True)
    served = serve(month, root / "served")
    cases = {"one file": (served[:1], served[0].name), "the month": (served, "carrier_cdr_*.csv")}
    timings: list[Timing] = []
    with LocalServices(root / "services") as services:
        server = services.start_openssh("bench_openssh")
        os.environ.update(connection_env({CONN_ID: server.connection(services.client_key)}))
        command = sftp_command(
            server, services.client_key, pinned_known_hosts(server, root / "known_hosts")
        )
        for case, (files, pattern) in cases.items():
            size = sum(path.stat().st_size for path in files)
            limit = best_of(rounds, lambda f=files: time_openssh_sftp(command, f, root / "got"))
            ours = best_of(
                rounds,
                lambda f=files, p=pattern: time_project_fetch(root / "served", p, f, root / "got"),
            )
            timings += [
                Timing(f"OpenSSH sftp, {case}", len(files), size, limit),
                Timing(f"project fetch, {case}", len(files), size, ours),
            ]
    shutil.rmtree(root / "got", ignore_errors=True)
    facts = {
        "calls": month.rows,
        "rounds": rounds,
        "timings": [{**t._asdict(), "mb_per_second": t.mb_per_second} for t in timings],
        "shares": {
            case: timings[2 * k].seconds / timings[2 * k + 1].seconds
            for k, case in enumerate(cases)
        },
    }
    (root / "bench_sftp.json").write_text(json.dumps(facts, indent=1), encoding="utf-8")
    return facts


def format_report(facts: dict) -> str:
    """The timings, MB/s and the project's share of OpenSSH's speed."""
    out = [
        f"SFTP from OpenSSH's sshd, {facts['calls']:,} CDR rows, best of {facts['rounds']}",
        f"  {'contender':<30}{'files':>6}{'MB':>10}{'seconds':>10}{'MB/s':>9}",
    ]
    for t in facts["timings"]:
        out.append(
            f"  {t['contender']:<30}{t['files']:>6}{t['bytes'] / 1e6:>10,.0f}"
            f"{t['seconds']:>10.2f}{t['mb_per_second']:>9.0f}"
        )
    for case, share in facts["shares"].items():
        verdict = "met" if share >= TARGET_SHARE else "NOT met"
        out.append(
            f"project/OpenSSH speed, {case}: {share:.0%} (target {TARGET_SHARE:.0%}: {verdict})"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    bench = limit_bench_arguments(__doc__.splitlines()[0], DEFAULT_ROOT, argv)
    facts = run(bench.month, bench.root, bench.repeat)
    print(format_report(facts))
    return 0 if min(facts["shares"].values()) >= TARGET_SHARE else 1


if __name__ == "__main__":
    raise SystemExit(main())
