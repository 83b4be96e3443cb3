"""OpenSSH's sshd on a loopback port, as the SFTP servers of production are: tests run the
fetch against it as well as against the asyncssh server.

The daemon runs with a config of its own (its host key, the client's public key as the only
authorized key, `internal-sftp`, no PAM, no passwords) and serves the whole file system to the
running user, so remote paths are the served directory's absolute paths (a chroot would need
every directory above it owned by root and not writable by others, which /tmp is not).
Needs Debian's openssh-server (`make openssh-server`).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cdr_devkit.services import READY_TIMEOUT_SECONDS, ServiceError, SftpServer, free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"  # sshd re-executes itself: an absolute path
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")  # sshd started by root refuses to run without it


def login_name() -> str:
    """The user sshd lets in: the one running it (root included, with a key only)."""
    return pwd.getpwuid(os.getuid()).pw_name


def sshd_config(port: int, host_key: Path, authorized_keys: Path, pid_file: Path) -> str:
    """An sshd_config for one loopback port, one user and SFTP only."""
    return "\n".join(
        [
            f"ListenAddress 127.0.0.1:{port}",
            f"HostKey {host_key}",
            f"PidFile {pid_file}",
            f"AuthorizedKeysFile {authorized_keys}",
            f"AllowUsers {login_name()}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "ForceCommand internal-sftp",
            "LogLevel VERBOSE",
            "",
        ]
    )


def _descendants(pid: int) -> list[int]:
    """The processes below pid (sshd's per-connection session processes), from /proc."""
    parents = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat_file.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _wait_for_banner(process: subprocess.Popen, port: int, name: str) -> None:
    """Wait until the daemon answers with an SSH banner."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(
                f"{name}: sshd exited with code {process.returncode} before it was ready"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                if probe.recv(8).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise ServiceError(f"{name}: sshd was not ready after {READY_TIMEOUT_SECONDS} s")


@dataclass
class OpenSshServer(SftpServer):
    """sshd serving the file system over SFTP; `kill` also kills its sessions, as a crash would."""

    def auth_attempts(self) -> list[str]:
        """The users that offered a key, from sshd's log."""
        text = (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if self.log_path.exists()
            else ""
        )
        return re.findall(r"(?:Accepted|Failed|Postponed) publickey for (\S+)", text)

    def kill(self) -> None:
        """SIGKILL the sessions (a transfer breaks mid-file) and the daemon."""
        for pid in _descendants(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        super().kill()

    def stop(self) -> None:
        """Stop the daemon and any session left."""
        self.kill()


def start_sshd(
    base: Path, name: str, host_key: Path, host_public_key: Path, authorized_keys: Path
) -> OpenSshServer:
    """Start sshd on a free loopback port; its log is <base>/<name>.log."""
    if not Path(SSHD).is_file():
        raise FileNotFoundError(
            f"OpenSSH's sshd is not installed ({SSHD}): make openssh-server installs it"
        )
    if os.getuid() == 0:
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = base / f"{name}_sshd_config"
    config.write_text(
        sshd_config(port, host_key, authorized_keys, base / f"{name}.pid"), encoding="utf-8"
    )
    log_path = base / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    _wait_for_banner(process, port, name)
    key_type, key_data = host_public_key.read_text().split()[:2]
    return OpenSshServer(
        name,
        port,
        process,
        root=Path("/"),
        host_key=f"{key_type} {key_data}",
        log_path=log_path,
        login=login_name(),
    )
