"""Fetch a month's files from an ordered list of SFTP servers, failing over in order.

Host keys are verified by the SFTP hook against the key pinned in the connection (extra
`host_key`) or known_hosts; an unknown or changed key makes that server fail. Downloads
stream to a temporary name, are checked against the remote size and renamed atomically.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import socket
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class AcquireError(RuntimeError):
    """Files could not be fetched."""


class UnsafeRemoteNameError(AcquireError):
    """A remote file name would escape the download directory."""


class AllServersFailedError(AcquireError):
    """No SFTP server in the list could deliver the files."""


class TransferError(AcquireError):
    """A download ended with a different size than the server announced."""


@dataclass(frozen=True)
class FileRequest:
    """Which remote files to fetch: all matches, or only the newest name."""

    role: str
    source: str
    remote_dir: str
    pattern: str
    newest_only: bool = False


@dataclass(frozen=True)
class FetchedFile:
    """A file downloaded and verified."""

    role: str
    source: str
    name: str
    local_path: str
    size: int
    sha256: str
    server: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FetchResult:
    """The files of a fetch and the servers that failed before one succeeded."""

    files: list[FetchedFile]
    failovers: list[dict[str, str]]
    ignored: int


def safe_local_name(remote_name: str) -> str:
    """Return the remote name if it is a plain file name; refuse anything else."""
    if (
        not remote_name
        or remote_name in (".", "..")
        or "/" in remote_name
        or "\\" in remote_name
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in remote_name)
    ):
        raise UnsafeRemoteNameError(f"refusing unsafe remote file name {remote_name!r}")
    return remote_name


def select_names(names: list[str], request: FileRequest) -> list[str]:
    """Return the names that match the request's pattern, case-insensitively, sorted."""
    pattern = request.pattern.casefold()
    matched = sorted(n for n in names if fnmatch.fnmatchcase(n.casefold(), pattern))
    return matched[-1:] if request.newest_only else matched


def download(sftp: Any, remote_path: str, local_path: Path, expected_size: int) -> str:
    """Stream a remote file to local_path via a temporary name; return its sha256."""
    partial = local_path.with_name(f".{local_path.name}.part")
    digest = hashlib.sha256()
    received = 0
    with sftp.open(remote_path, "rb") as remote, partial.open("wb") as local:
        remote.prefetch(expected_size)
        while chunk := remote.read(CHUNK_BYTES):
            local.write(chunk)
            digest.update(chunk)
            received += len(chunk)
        local.flush()
        os.fsync(local.fileno())
    if received != expected_size:
        partial.unlink(missing_ok=True)
        raise TransferError(f"{remote_path}: received {received} of {expected_size} bytes")
    os.replace(partial, local_path)
    return digest.hexdigest()


def _fetch_from_server(sftp: Any, server: str, requests: list[FileRequest], dest: Path) -> tuple[list[FetchedFile], int]:
    fetched, ignored = [], 0
    for request in requests:
        entries = {e.filename: e for e in sftp.listdir_attr(request.remote_dir) if stat.S_ISREG(e.st_mode or 0)}
        names = select_names(list(entries), request)
        ignored += len(entries) - len(names)
        for name in names:
            local = dest / safe_local_name(name)
            remote_path = f"{request.remote_dir.rstrip('/')}/{name}"
            sha256 = download(sftp, remote_path, local, entries[name].st_size)
            fetched.append(FetchedFile(request.role, request.source, name, str(local), entries[name].st_size, sha256, server))
            log.info("fetched %s (%d bytes) from %s", name, entries[name].st_size, server)
    return fetched, ignored


def describe_error(exc: BaseException) -> str:
    """Return a one-line, secret-free description of a server failure."""
    import paramiko

    if isinstance(exc, paramiko.BadHostKeyException):
        return "host key does not match the pinned key: possible man-in-the-middle attack, server not trusted"
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return "host key is unknown (not pinned and not in known_hosts): server not trusted"
    if isinstance(exc, paramiko.AuthenticationException):
        return "authentication failed"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = list(exc.errors.values())
        if causes and all(isinstance(c, ConnectionRefusedError) for c in causes):
            return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}"


def fetch_with_failover(conn_ids: list[str], requests: list[FileRequest], dest: Path, timeout_seconds: int) -> FetchResult:
    """Fetch every request from the first server that delivers them all."""
    import paramiko
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    dest.mkdir(parents=True, exist_ok=True)
    failovers: list[dict[str, str]] = []
    for conn_id in conn_ids:
        hook = SFTPHook(ssh_conn_id=conn_id, conn_timeout=timeout_seconds, conn_retry_attempts=1)
        try:
            with hook.get_managed_conn() as sftp:
                sftp.get_channel().settimeout(timeout_seconds)
                files, ignored = _fetch_from_server(sftp, conn_id, requests, dest)
            return FetchResult(files, failovers, ignored)
        except (paramiko.SSHException, OSError, EOFError, TransferError) as exc:
            reason = describe_error(exc)
            log.warning("SFTP server %s failed: %s", conn_id, reason)
            failovers.append({"server": conn_id, "error": reason})
    raise AllServersFailedError("all SFTP servers failed: " + "; ".join(f"{f['server']}: {f['error']}" for f in failovers))
