"""Fetch a month's files from an ordered list of SFTP servers, failing over in order.

Host keys are verified by the SFTP hook against the key pinned in the connection (extra
`host_key`) or known_hosts; an unknown or changed key makes that server fail, never
trusted. Downloads stream to a temporary name, are checked against the remote size and a
`.sha256`/`.md5` sidecar when the server has one, and are renamed atomically.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
READ_WINDOW_BYTES = 8 << 20  # pipelined SFTP reads in flight or buffered at most
CHECKSUM_SUFFIXES = {".sha256": "sha256", ".md5": "md5"}
T = TypeVar("T")


class AcquireError(RuntimeError):
    """Files could not be fetched."""


class UnsafeRemoteNameError(AcquireError):
    """A remote file name would escape the download directory."""


class AllServersFailedError(AcquireError):
    """No SFTP server in the list could deliver the files."""


class TransferError(AcquireError):
    """A download does not match the size or checksum the server announced."""


@dataclass(frozen=True)
class FileRequest:
    """Which remote files to fetch: all matches, or only the newest name."""

    role: str
    source: str
    remote_dir: str
    pattern: str
    newest_only: bool = False


@dataclass(frozen=True)
class RemoteFile:
    """A matching file on a server, with its checksum sidecar if there is one."""

    role: str
    source: str
    name: str
    path: str
    size: int
    mtime: int
    checksum_path: str | None = None


@dataclass(frozen=True)
class FetchedFile:
    """A file on local disk, verified; `downloaded` is False when an archived copy was reused."""

    role: str
    source: str
    name: str
    local_path: str
    size: int
    remote_mtime: int
    sha256: str
    server: str
    downloaded: bool = True
    remote_path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def moved_to(self, path: Path) -> FetchedFile:
        return replace(self, local_path=str(path))


@dataclass(frozen=True)
class FetchResult:
    """The files of a fetch, the server that delivered them and the ones that failed first."""

    files: list[FetchedFile]
    server: str
    failovers: list[dict[str, str]]
    ignored: int


Reuse = Callable[[RemoteFile], FetchedFile | None]


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


def list_remote(sftp: Any, requests: list[FileRequest]) -> tuple[list[RemoteFile], int]:
    """List the files each request matches; return them and how many other files in the
    CDR folders were ignored (other months, other names)."""
    found, ignored = [], 0
    for request in requests:
        entries = {e.filename: e for e in sftp.listdir_attr(request.remote_dir) if stat.S_ISREG(e.st_mode or 0)}
        sidecars = {n for n in entries if any(n.endswith(suffix) for suffix in CHECKSUM_SUFFIXES)}
        names = select_names([n for n in entries if n not in sidecars], request)
        if request.role == "cdr":  # other months' CDR files; reference folders hold several kinds
            ignored += len(entries) - len(sidecars) - len(names)
        base = request.remote_dir.rstrip("/")
        for name in names:
            sidecar = next((name + s for s in CHECKSUM_SUFFIXES if name + s in sidecars), None)
            found.append(
                RemoteFile(
                    request.role,
                    request.source,
                    safe_local_name(name),
                    f"{base}/{name}",
                    entries[name].st_size,
                    int(entries[name].st_mtime or 0),
                    f"{base}/{sidecar}" if sidecar else None,
                )
            )
    return found, ignored


def _expected_checksum(sftp: Any, remote: RemoteFile) -> tuple[str, str] | None:
    """Return (algorithm, hex digest) from the file's sidecar, if it has one."""
    if remote.checksum_path is None:
        return None
    with sftp.open(remote.checksum_path, "r") as handle:
        words = handle.read(4096).decode("ascii", errors="replace").split()
    algorithm = CHECKSUM_SUFFIXES[Path(remote.checksum_path).suffix]
    if not words:
        raise TransferError(f"{remote.name}: checksum file {Path(remote.checksum_path).name} is empty")
    return algorithm, words[0].lower()


def _pipelined_reads(source: Any, size: int) -> Iterator[bytes]:
    """The file's bytes in order, READ_WINDOW_BYTES of pipelined requests at a time: fast on a
    long link, and memory stays bounded however slowly the chunks are consumed (paramiko's
    whole-file prefetch would buffer up to the whole file)."""
    for start in range(0, size, READ_WINDOW_BYTES):
        end = min(start + READ_WINDOW_BYTES, size)
        yield from source.readv([(offset, min(CHUNK_BYTES, end - offset)) for offset in range(start, end, CHUNK_BYTES)])


def download(sftp: Any, remote: RemoteFile, dest: Path) -> tuple[Path, str]:
    """Stream a remote file to dest via a temporary name; verify it; return (path, sha256)."""
    expected = _expected_checksum(sftp, remote)
    local = dest / remote.name
    partial = dest / f".{remote.name}.part"
    digests = {"sha256": hashlib.sha256()}  # the ledger's; and the sidecar's algorithm, when it is another
    if expected and expected[0] != "sha256":
        digests[expected[0]] = hashlib.new(expected[0], usedforsecurity=False)
    received = 0
    try:
        with sftp.open(remote.path, "rb") as source, partial.open("wb") as target:
            for chunk in _pipelined_reads(source, remote.size):
                target.write(chunk)
                for digest in digests.values():
                    digest.update(chunk)
                received += len(chunk)
            target.flush()
            os.fsync(target.fileno())
        if received != remote.size:
            raise TransferError(f"{remote.name}: received {received} of {remote.size} bytes")
        if expected and digests[expected[0]].hexdigest() != expected[1]:
            raise TransferError(f"{remote.name}: {expected[0]} checksum does not match its sidecar file")
        os.replace(partial, local)
    finally:
        partial.unlink(missing_ok=True)
    return local, digests["sha256"].hexdigest()


def describe_error(exc: BaseException) -> str:
    """Return a one-line, secret-free description of a server failure."""
    import paramiko

    if isinstance(exc, paramiko.BadHostKeyException):
        return "host key does not match the pinned key: possible man-in-the-middle attack, server not trusted"
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return "host key is unknown (not pinned and not in known_hosts): server not trusted"
    if isinstance(exc, paramiko.AuthenticationException):
        return "authentication failed"
    if isinstance(exc, paramiko.SSHException) and any(
        hint in str(exc) for hint in ("No existing session", "Error reading SSH protocol banner")
    ):
        return "connection timed out: no SSH answer (server hung or not an SSH server)"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = list(exc.errors.values())
        if causes and all(isinstance(c, ConnectionRefusedError) for c in causes):
            return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, FileNotFoundError):
        return f"listing failed: no such directory or file ({exc.filename or exc})"
    if isinstance(exc, TransferError):
        return f"transfer failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def with_failover(conn_ids: list[str], timeout_seconds: int, action: Callable[[Any, str], T]) -> tuple[T, str, list[dict]]:
    """Run action(sftp, server) on the first server where it succeeds; return the result,
    that server and the failures before it. Raise AllServersFailedError if none does."""
    import paramiko
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    failovers: list[dict[str, str]] = []
    for conn_id in conn_ids:
        hook = SFTPHook(
            ssh_conn_id=conn_id,
            conn_timeout=timeout_seconds,
            banner_timeout=timeout_seconds,
            auth_timeout=timeout_seconds,
            conn_retry_attempts=1,
        )
        try:
            with hook.get_managed_conn() as sftp:
                sftp.get_channel().settimeout(timeout_seconds)
                return action(sftp, conn_id), conn_id, failovers
        except (paramiko.SSHException, OSError, EOFError, TransferError) as exc:
            reason = describe_error(exc)
            log.warning("SFTP server %s failed: %s", conn_id, reason)
            failovers.append({"server": conn_id, "error": reason})
    raise AllServersFailedError("all SFTP servers failed: " + "; ".join(f"{f['server']}: {f['error']}" for f in failovers))


def fetch_with_failover(
    conn_ids: list[str], requests: list[FileRequest], dest: Path, timeout_seconds: int, reuse: Reuse | None = None
) -> FetchResult:
    """Fetch every requested file from the first server that delivers them all.

    `reuse` may return an already archived copy of a remote file, which is then not
    downloaded again. Files completed before a server failed are not fetched twice.
    """
    dest.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], FetchedFile] = {}
    ignored_counts: list[int] = []

    def fetch_all(sftp: Any, server: str) -> list[FetchedFile]:
        remote_files, ignored = list_remote(sftp, requests)
        ignored_counts.append(ignored)
        for remote in remote_files:
            key = (remote.source, remote.name)
            if key in done:
                continue
            reused = reuse(remote) if reuse else None
            if reused is not None:
                done[key] = reused
                log.info("%s: unchanged since it was archived, not downloaded again", remote.name)
                continue
            local, sha256 = download(sftp, remote, dest)
            done[key] = FetchedFile(
                remote.role, remote.source, remote.name, str(local), remote.size, remote.mtime, sha256, server, True, remote.path
            )
            log.info("fetched %s (%d bytes) from %s", remote.name, remote.size, server)
        return [done[(r.source, r.name)] for r in remote_files]

    files, server, failovers = with_failover(conn_ids, timeout_seconds, fetch_all)
    return FetchResult(files, server, failovers, ignored_counts[-1])


def move_to_processed(server: str, moves: list[tuple[str, str]], timeout_seconds: int) -> None:
    """Rename remote files (path, target directory) on the server that delivered them.

    A file that cannot be moved stays where it is (logged): the ledger keeps it from being
    billed twice either way.
    """

    def move_all(sftp: Any, _server: str) -> None:
        for path, target_dir in moves:
            try:
                sftp.stat(target_dir)
            except FileNotFoundError:
                sftp.mkdir(target_dir)
            sftp.rename(path, f"{target_dir.rstrip('/')}/{Path(path).name}")
            log.info("moved %s to %s on %s", Path(path).name, target_dir, server)

    if not moves:
        return
    try:
        with_failover([server], timeout_seconds, move_all)
    except AllServersFailedError as exc:
        log.error("could not move processed files on %s: %s", server, exc)


def find_missing_sources(conn_ids: list[str], requests: list[FileRequest], timeout_seconds: int) -> list[str]:
    """List the servers (with failover) and return the sources that have no file yet."""
    remote_files, _, _ = with_failover(conn_ids, timeout_seconds, lambda sftp, _server: list_remote(sftp, requests)[0])
    present = {r.source for r in remote_files}
    return [r.source for r in requests if r.source not in present]
