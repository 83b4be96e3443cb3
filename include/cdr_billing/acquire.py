"""Fetch a month's files from an ordered list of SFTP servers, failing over in order.

The server's host key is compared with the key pinned in the Airflow connection (extra
`host_key`) before anything is authenticated, and nothing else is trusted: no known_hosts,
no system host keys, no `no_host_key_check`; a connection without a pinned key is refused.
A file is fetched only once it is stable: its size and mtime unchanged over `stable_seconds`
(listed twice), or, when its source names one, once its done marker or checksum sidecar
exists. Downloads stream to a temporary name, are checked against the listed size, the
file's attributes after the download and a `.sha256`/`.md5` sidecar when the server has
one, and are renamed atomically.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import socket
import stat
import time
from base64 import b64decode
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from io import StringIO
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

log = logging.getLogger(__name__)

# SFTP read requests: OpenSSH serves up to 255 KiB per request (it says so in its
# limits@openssh.com extension); paramiko's own 32 KiB made the fetch 3x slower than OpenSSH's
# sftp client. A server that names no limit gets the 32 KiB every server takes.
READ_REQUEST_BYTES = 255 << 10
PORTABLE_READ_REQUEST_BYTES = 32 << 10
READ_REQUESTS_IN_FLIGHT = 32  # pipelined SFTP reads in flight or buffered at most (8 MiB)
# The SSH channel: a window that never stalls the 8 MiB of reads in flight, and packets that
# carry a whole 255 KiB read answer.
CHANNEL_WINDOW_BYTES = 1 << 27
CHANNEL_MAX_PACKET_BYTES = 1 << 18
# AES-GCM first (one pass for cipher and MAC, AES-NI): OpenSSH picks the client's first
# common cipher; paramiko's own order starts with aes128-ctr and a separate HMAC.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
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


class HostKeyError(AcquireError):
    """A server is not trusted: its connection pins no host key, or the server shows another."""


class UnpinnedHostKeyError(HostKeyError):
    """The connection has no pinned host key: the server is refused, never trusted on first use."""


class HostKeyMismatchError(HostKeyError):
    """The server's host key differs from the pinned one: possibly an attack."""


class StillBeingWrittenError(AcquireError):
    """A file changed while it was downloaded: it is fetched in a later run."""


@dataclass(frozen=True)
class FileRequest:
    """Which remote files to fetch: all matches, or only the newest name."""

    role: str
    source: str
    remote_dir: str
    pattern: str
    newest_only: bool = False
    done_marker: str | None = None  # e.g. "{name}.done": the file is complete once this file exists
    require_sidecar: bool = False  # the file is complete once its .sha256/.md5 sidecar exists
    # A history of dated files (entitlement snapshots): the one in force on this day
    # (YYYY-MM-DD) and all later ones.
    dated_from: str | None = None


@dataclass(frozen=True)
class RemoteFile:
    """A matching file on a server, with its checksum sidecar if there is one. `marked`: None
    when its source names no done marker or sidecar (stable by interval), else whether it exists."""

    role: str
    source: str
    name: str
    path: str
    size: int
    mtime: int
    checksum_path: str | None = None
    marked: bool | None = None


@dataclass(frozen=True)
class Listing:
    """The files that may be fetched now, those still being written, and how many others were
    ignored."""

    stable: list[RemoteFile]
    unstable: list[RemoteFile]
    ignored: int


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
    not_yet_stable: list[RemoteFile] = field(default_factory=list)


class RemoteListing(NamedTuple):
    """The files a listing matched, and how many other files of the CDR folders it ignored."""

    files: list[RemoteFile]
    ignored: int


class Checksum(NamedTuple):
    """What a checksum sidecar announces: the algorithm and the file's hex digest."""

    algorithm: str
    hex_digest: str


class Downloaded(NamedTuple):
    """A downloaded, verified file and its SHA-256."""

    path: Path
    sha256: str


class Delivered(NamedTuple, Generic[T]):
    """What an action returned, the server it succeeded on and the servers that failed first."""

    result: T
    server: str
    failovers: list[dict[str, str]]


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
    if request.dated_from:
        return dated_history(matched, request.dated_from)
    return matched[-1:] if request.newest_only else matched


DATE_IN_NAME = re.compile(r"\d{4}-\d{2}-\d{2}")


def dated_history(names: list[str], first_day: str) -> list[str]:
    """The name dated (YYYY-MM-DD in the name) last on or before `first_day` (in force that day)
    and those dated after it, oldest first; with no dated name, the newest name."""
    dated = sorted((found.group(), name) for name in names if (found := DATE_IN_NAME.search(name)))
    in_force = [name for day, name in dated if day <= first_day][-1:]
    return in_force + [name for day, name in dated if day > first_day] or names[-1:]


def _done_markers(request: FileRequest, names: set[str]) -> set[str]:
    """The listed names that are done markers of other listed names."""
    if request.done_marker is None:
        return set()
    return {request.done_marker.format(name=n) for n in names} & names


def _marked(request: FileRequest, name: str, names: set[str], sidecar: str | None) -> bool | None:
    """Whether the file's done marker or required sidecar exists; None if its source names
    neither."""
    if request.done_marker is not None:
        return request.done_marker.format(name=name) in names
    if request.require_sidecar:
        return sidecar is not None
    return None


def list_remote(sftp: Any, requests: list[FileRequest]) -> RemoteListing:
    """List the files each request matches; return them and how many other files in the
    CDR folders were ignored (other months, other names)."""
    found, ignored = [], 0
    for request in requests:
        entries = {
            e.filename: e
            for e in sftp.listdir_attr(request.remote_dir)
            if stat.S_ISREG(e.st_mode or 0)
        }
        sidecars = {n for n in entries if any(n.endswith(suffix) for suffix in CHECKSUM_SUFFIXES)}
        markers = _done_markers(request, set(entries))
        names = select_names([n for n in entries if n not in sidecars | markers], request)
        if request.role == "cdr":  # other months' CDR files; reference folders hold several kinds
            ignored += len(entries) - len(sidecars | markers) - len(names)
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
                    _marked(request, name, set(entries), sidecar),
                )
            )
    return RemoteListing(found, ignored)


def _is_stable(
    remote: RemoteFile,
    before: dict[tuple[str, str], tuple[int, int]],
    settled: Callable[[RemoteFile], bool],
) -> bool:
    """A marked file is stable once its marker exists; another once it is settled (an archived
    copy) or its size and mtime are what the first listing showed."""
    if remote.marked is not None:
        return remote.marked
    return settled(remote) or before.get((remote.source, remote.name)) == (
        remote.size,
        remote.mtime,
    )


def list_stable(
    sftp: Any,
    requests: list[FileRequest],
    stable_seconds: float,
    settled: Callable[[RemoteFile], bool] = lambda _: False,
) -> Listing:
    """List the requested files and split them into stable and still being written: a file
    whose source names no marker must show the same size and mtime in two listings
    `stable_seconds` apart (the wait is skipped when no file needs it)."""
    first = second = list_remote(sftp, requests)
    if any(r.marked is None and not settled(r) for r in first.files):
        time.sleep(stable_seconds)
        second = list_remote(sftp, requests)
    before = {(r.source, r.name): (r.size, r.mtime) for r in first.files}
    stable = [r for r in second.files if _is_stable(r, before, settled)]
    unstable = [r for r in second.files if r not in stable]
    for remote in unstable:
        log.warning(
            "%s: not yet stable (still being written or not marked done): not fetched in this run",
            remote.name,
        )
    return Listing(stable, unstable, second.ignored)


def _expected_checksum(sftp: Any, remote: RemoteFile) -> Checksum | None:
    """The algorithm and hex digest of the file's sidecar, if it has one."""
    if remote.checksum_path is None:
        return None
    with sftp.open(remote.checksum_path, "r") as handle:
        words = handle.read(4096).decode("ascii", errors="replace").split()
    algorithm = CHECKSUM_SUFFIXES[Path(remote.checksum_path).suffix]
    if not words:
        raise TransferError(
            f"{remote.name}: checksum file {Path(remote.checksum_path).name} is empty"
        )
    return Checksum(algorithm, words[0].lower())


def read_request_bytes(sftp: Any) -> int:
    """The largest read the server answers in full: what its limits@openssh.com extension
    names (at most READ_REQUEST_BYTES), else PORTABLE_READ_REQUEST_BYTES. A bigger request
    would come back short, and paramiko would then read the rest one request at a time."""
    from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY, SFTPError

    try:
        kind, reply = sftp._request(CMD_EXTENDED, "limits@openssh.com")
    except (OSError, SFTPError, EOFError):
        return PORTABLE_READ_REQUEST_BYTES
    if kind != CMD_EXTENDED_REPLY:
        return PORTABLE_READ_REQUEST_BYTES
    reply.get_int64()  # max packet length
    max_read = reply.get_int64()
    return min(max_read, READ_REQUEST_BYTES) if max_read else PORTABLE_READ_REQUEST_BYTES


def _pipelined_reads(source: Any, size: int, request_bytes: int) -> Iterator[bytes]:
    """The file's bytes in order, READ_REQUESTS_IN_FLIGHT pipelined requests at a time: fast on
    a long link, and memory stays bounded however slowly the chunks are consumed (paramiko's
    whole-file prefetch would buffer up to the whole file)."""
    source.MAX_REQUEST_SIZE = request_bytes  # paramiko splits reads at this size
    window = request_bytes * READ_REQUESTS_IN_FLIGHT
    for start in range(0, size, window):
        end = min(start + window, size)
        yield from source.readv(
            [
                (offset, min(request_bytes, end - offset))
                for offset in range(start, end, request_bytes)
            ]
        )


def _check_unchanged(sftp: Any, remote: RemoteFile) -> None:
    """Raise StillBeingWrittenError if the file's size or mtime moved since it was listed."""
    now = sftp.stat(remote.path)
    if (now.st_size, int(now.st_mtime or 0)) != (remote.size, remote.mtime):
        raise StillBeingWrittenError(
            f"{remote.name}: changed while it was downloaded ({remote.size} -> {now.st_size} bytes)"
        )


def download(sftp: Any, remote: RemoteFile, dest: Path) -> Downloaded:
    """Stream a remote file to dest via a temporary name; verify it; return its path and
    SHA-256."""
    expected = _expected_checksum(sftp, remote)
    local = dest / remote.name
    partial = dest / f".{remote.name}.part"
    # the ledger's; and the sidecar's algorithm, when it is another
    digests = {"sha256": hashlib.sha256()}
    if expected and expected.algorithm != "sha256":
        digests[expected.algorithm] = hashlib.new(expected.algorithm, usedforsecurity=False)
    received = 0
    try:
        request_bytes = read_request_bytes(sftp)
        with sftp.open(remote.path, "rb") as source, partial.open("wb") as target:
            for chunk in _pipelined_reads(source, remote.size, request_bytes):
                target.write(chunk)
                for digest in digests.values():
                    digest.update(chunk)
                received += len(chunk)
            target.flush()
            os.fsync(target.fileno())
        _check_unchanged(sftp, remote)
        if received != remote.size:
            raise TransferError(f"{remote.name}: received {received} of {remote.size} bytes")
        if expected and digests[expected.algorithm].hexdigest() != expected.hex_digest:
            raise TransferError(
                f"{remote.name}: {expected.algorithm} checksum does not match its sidecar file"
            )
        os.replace(partial, local)
    finally:
        partial.unlink(missing_ok=True)
    return Downloaded(local, digests["sha256"].hexdigest())


def _pinned_host_key(conn_id: str, extra: dict[str, Any]) -> Any:
    """The public host key pinned in the connection's extra `host_key` ("ssh-ed25519 AAAA..." or
    the base64 alone); refuse a connection without one: a server is never trusted on first use."""
    import paramiko

    words = str(extra.get("host_key") or "").split()
    if not words:
        raise UnpinnedHostKeyError(
            f"connection {conn_id} pins no host key (extra host_key): "
            "server unknown, not trusted (no trust on first use)"
        )
    try:
        blob = b64decode(words[1] if len(words) > 1 else words[0], validate=True)
        return paramiko.PKey.from_type_string(paramiko.Message(blob).get_text(), blob)
    except (ValueError, paramiko.SSHException, paramiko.pkey.UnknownKeyType) as exc:
        raise UnpinnedHostKeyError(
            f"connection {conn_id}: extra host_key is not an SSH public key: server not trusted"
        ) from exc


def _host_key_algorithms(pinned: Any) -> list[str]:
    """The host key algorithms to negotiate: only the pinned key's, so a server with several
    host keys shows the pinned one."""
    if pinned.get_name() == "ssh-rsa":
        return ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    return [pinned.get_name()]


def _cipher_order(offered: tuple[str, ...]) -> list[str]:
    """paramiko's ciphers with AES-GCM first (the ones paramiko has)."""
    first = [name for name in PREFERRED_CIPHERS if name in offered]
    return first + [name for name in offered if name not in first]


def _private_key_from_text(text: str, passphrase: str | None) -> Any:
    """The client key from the connection's extra `private_key` (any key type paramiko reads)."""
    import paramiko

    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(StringIO(text), password=passphrase)
        except (paramiko.SSHException, ValueError):
            continue
    raise paramiko.SSHException("extra private_key is not a private key paramiko can read")


def _client_key(extra: dict[str, Any]) -> Any | None:
    """The connection's own client key (extra key_file or private_key); never ~/.ssh or an agent."""
    import paramiko

    passphrase = extra.get("private_key_passphrase")
    if extra.get("private_key"):
        return _private_key_from_text(extra["private_key"], passphrase)
    if extra.get("key_file"):
        return paramiko.PKey.from_path(extra["key_file"], passphrase)
    return None


def _verify_host_key(transport: Any, pinned: Any, conn_id: str) -> None:
    """Compare the key the server proved it holds with the pin, before any credential is sent."""
    if transport.get_remote_server_key().asbytes() != pinned.asbytes():
        raise HostKeyMismatchError(f"{conn_id}: host key does not match the pinned key")


def _authenticate(transport: Any, login: str, key: Any | None, password: str | None) -> None:
    """Log in with the connection's key, else its password."""
    import paramiko

    if key is not None:
        transport.auth_publickey(login, key)
    elif password:
        transport.auth_password(login, password)
    else:
        raise paramiko.AuthenticationException(
            "the connection has no key_file, private_key or password"
        )


@contextmanager
def open_sftp(conn_id: str, timeout_seconds: float) -> Iterator[Any]:
    """An SFTP session to the connection's server, its host key checked against the pin first.

    paramiko's Transport directly, not the SSH hook, whose known_hosts and system host keys
    would win over the pin: connect, negotiate only the pinned key's algorithm, compare the
    key, and only then authenticate."""
    import paramiko
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    pinned = _pinned_host_key(conn_id, extra)
    sock = socket.create_connection((conn.host, conn.port or 22), timeout=timeout_seconds)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # read requests go out at once
    transport = paramiko.Transport(
        sock,
        default_window_size=CHANNEL_WINDOW_BYTES,
        default_max_packet_size=CHANNEL_MAX_PACKET_BYTES,
    )
    try:
        transport.banner_timeout = transport.auth_timeout = timeout_seconds
        options = transport.get_security_options()
        options.key_types = _host_key_algorithms(pinned)
        options.ciphers = _cipher_order(options.ciphers)
        transport.start_client(timeout=timeout_seconds)
        _verify_host_key(transport, pinned, conn_id)
        _authenticate(transport, conn.login or "", _client_key(extra), conn.password)
        sftp = paramiko.SFTPClient.from_transport(transport)
        sftp.get_channel().settimeout(timeout_seconds)
        with sftp:
            yield sftp
    finally:
        transport.close()


def describe_error(exc: BaseException) -> str:
    """Return a one-line, secret-free description of a server failure."""
    import paramiko

    if isinstance(exc, HostKeyMismatchError):
        return (
            "host key does not match the pinned key: "
            "possible man-in-the-middle attack, server not trusted"
        )
    if isinstance(exc, UnpinnedHostKeyError):
        return str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return "authentication failed"
    if isinstance(exc, paramiko.SSHException) and any(
        hint in str(exc) for hint in ("No existing session", "Error reading SSH protocol banner")
    ):
        return "connection timed out: no SSH answer (server hung or not an SSH server)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, FileNotFoundError):
        return f"listing failed: no such directory or file ({exc.filename or exc})"
    if isinstance(exc, TransferError):
        return f"transfer failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def with_failover(
    conn_ids: list[str], timeout_seconds: int, action: Callable[[Any, str], T]
) -> Delivered[T]:
    """Run action(sftp, server) on the first server where it succeeds; return the result,
    that server and the failures before it. Raise AllServersFailedError if none does."""
    import paramiko

    failovers: list[dict[str, str]] = []
    for conn_id in conn_ids:
        try:
            with open_sftp(conn_id, timeout_seconds) as sftp:
                return Delivered(action(sftp, conn_id), conn_id, failovers)
        except (paramiko.SSHException, OSError, EOFError, TransferError, HostKeyError) as exc:
            reason = describe_error(exc)
            log.warning("SFTP server %s failed: %s", conn_id, reason)
            failovers.append({"server": conn_id, "error": reason})
    raise AllServersFailedError(
        "all SFTP servers failed: " + "; ".join(f"{f['server']}: {f['error']}" for f in failovers)
    )


def fetch_with_failover(
    conn_ids: list[str],
    requests: list[FileRequest],
    dest: Path,
    timeout_seconds: int,
    reuse: Reuse | None = None,
    stable_seconds: float = 0,
) -> FetchResult:
    """Fetch every stable requested file from the first server that delivers them all.

    `reuse` may return an already archived copy of a remote file, which is then not
    downloaded again (nor waited for: it was stable when it was archived). Files completed
    before a server failed are not fetched twice. Files not yet stable are left for a later run.
    """
    dest.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], FetchedFile] = {}
    listings: list[Listing] = []

    def fetch_all(sftp: Any, server: str) -> list[FetchedFile]:
        listing = list_stable(
            sftp,
            requests,
            stable_seconds,
            settled=lambda r: reuse is not None and reuse(r) is not None,
        )
        changed = []
        for remote in listing.stable:
            try:
                _fetch_one(sftp, remote, server, dest, done, reuse)
            except StillBeingWrittenError as exc:
                log.warning("%s: not fetched in this run", exc)
                changed.append(remote)
        listings.append(
            Listing(
                [r for r in listing.stable if r not in changed],
                listing.unstable + changed,
                listing.ignored,
            )
        )
        return [done[(r.source, r.name)] for r in listings[-1].stable]

    delivered = with_failover(conn_ids, timeout_seconds, fetch_all)
    return FetchResult(
        delivered.result,
        delivered.server,
        delivered.failovers,
        listings[-1].ignored,
        listings[-1].unstable,
    )


def _fetch_one(
    sftp: Any, remote: RemoteFile, server: str, dest: Path, done: dict, reuse: Reuse | None
) -> None:
    """Put the remote file into `done`: fetched before, an archived copy, or downloaded now."""
    key = (remote.source, remote.name)
    if key in done:
        return
    reused = reuse(remote) if reuse else None
    if reused is not None:
        done[key] = reused
        log.info("%s: unchanged since it was archived, not downloaded again", remote.name)
        return
    downloaded = download(sftp, remote, dest)
    done[key] = FetchedFile(
        remote.role,
        remote.source,
        remote.name,
        str(downloaded.path),
        remote.size,
        remote.mtime,
        downloaded.sha256,
        server,
        True,
        remote.path,
    )
    log.info("fetched %s (%d bytes) from %s", remote.name, remote.size, server)


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


def find_missing_sources(
    conn_ids: list[str],
    requests: list[FileRequest],
    timeout_seconds: int,
    stable_seconds: float = 0,
) -> list[str]:
    """List the servers (with failover) and return the sources that have no stable file yet."""
    listing = with_failover(
        conn_ids, timeout_seconds, lambda sftp, _server: list_stable(sftp, requests, stable_seconds)
    ).result
    present = {r.source for r in listing.stable}
    return [r.source for r in requests if r.source not in present]
