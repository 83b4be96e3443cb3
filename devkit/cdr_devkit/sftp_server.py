"""A real SFTP server on loopback (asyncssh), serving one directory to one client key.

Run as its own process so tests can kill it:
  python -m cdr_devkit.sftp_server --root DIR --host-key KEY --authorized-keys PUB --ready-file F
It writes the port it listens on to the ready file once it accepts connections, and logs
every client that starts to authenticate (stdout).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import asyncssh

AUTH_ATTEMPT = "auth attempt by"  # logged when a client starts to authenticate: tests check who did


class _KeyOnlyServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        print(f"{AUTH_ATTEMPT} {username}", flush=True)
        return True

    def password_auth_supported(self) -> bool:
        return False


class ThrottledSFTPServer(asyncssh.SFTPServer):
    """Serves reads at most at `bytes_per_second`, so tests can break a transfer midway."""

    bytes_per_second = 0
    _lock: asyncio.Lock | None = None

    async def read(self, file_obj, offset: int, size: int) -> bytes:
        if self.bytes_per_second:
            ThrottledSFTPServer._lock = ThrottledSFTPServer._lock or asyncio.Lock()
            async with ThrottledSFTPServer._lock:
                await asyncio.sleep(size / self.bytes_per_second)
        return super().read(file_obj, offset, size)


async def serve(
    root: Path, host_key: Path, authorized_keys: Path, port: int, ready_file: Path
) -> None:
    server = await asyncssh.create_server(
        _KeyOnlyServer,
        "127.0.0.1",
        port,
        server_host_keys=[str(host_key)],
        authorized_client_keys=str(authorized_keys),
        sftp_factory=lambda chan: ThrottledSFTPServer(chan, chroot=str(root)),
        allow_scp=False,
    )
    bound_port = server.sockets[0].getsockname()[1]
    ready_file.write_text(str(bound_port), encoding="utf-8")
    await server.wait_closed()
    await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host-key", type=Path, required=True)
    parser.add_argument("--authorized-keys", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--max-bytes-per-second", type=int, default=0, help="0: unthrottled")
    args = parser.parse_args()
    ThrottledSFTPServer.bytes_per_second = args.max_bytes_per_second
    asyncio.run(serve(args.root, args.host_key, args.authorized_keys, args.port, args.ready_file))


if __name__ == "__main__":
    main()
