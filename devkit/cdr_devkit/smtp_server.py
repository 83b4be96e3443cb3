"""A real SMTP server on loopback (aiosmtpd) that keeps each message as an .eml file.

python -m cdr_devkit.smtp_server --maildir DIR --port N --ready-file F
    [--refuse ADDRESS]... [--defer ADDRESS]... [--rules FILE]

For delivery tests: --refuse answers RCPT TO of ADDRESS with 550 (a bounce at SMTP time),
--defer with 451 (try again later). --rules names a JSON file {"refuse": [...], "defer":
[...]} read again at every RCPT, so a test can lift a deferral while the server runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import threading
from pathlib import Path

from aiosmtpd.controller import Controller


class MaildirHandler:
    """Writes every accepted message to <maildir>/<n>.eml; refuses (550) or defers (451) the
    recipients it is told to."""

    def __init__(
        self,
        maildir: Path,
        refuse: tuple[str, ...] = (),
        defer: tuple[str, ...] = (),
        rules: Path | None = None,
    ) -> None:
        self.maildir = maildir
        self.counter = itertools.count(len(list(maildir.glob("*.eml"))) + 1)
        self.refuse, self.defer, self.rules = refuse, defer, rules

    def _lists(self) -> tuple[set[str], set[str]]:
        refuse, defer = {a.lower() for a in self.refuse}, {a.lower() for a in self.defer}
        if self.rules is not None and self.rules.is_file():
            rules = json.loads(self.rules.read_text(encoding="utf-8") or "{}")
            refuse |= {a.lower() for a in rules.get("refuse", [])}
            defer |= {a.lower() for a in rules.get("defer", [])}
        return refuse, defer

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: N802
        refuse, defer = self._lists()
        if address.lower() in refuse:
            return "550 5.1.1 Mailbox unavailable"
        if address.lower() in defer:
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        path = self.maildir / f"{next(self.counter):05d}.eml"
        path.write_bytes(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--refuse", action="append", default=[], help="answer RCPT with 550")
    parser.add_argument("--defer", action="append", default=[], help="answer RCPT with 451")
    parser.add_argument("--rules", type=Path, help='JSON {"refuse": [...], "defer": [...]}')
    args = parser.parse_args()
    args.maildir.mkdir(parents=True, exist_ok=True)
    handler = MaildirHandler(args.maildir, tuple(args.refuse), tuple(args.defer), args.rules)
    controller = Controller(handler, hostname="127.0.0.1", port=args.port)
    controller.start()
    args.ready_file.write_text(str(args.port), encoding="utf-8")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    controller.stop()


if __name__ == "__main__":
    main()
