"""A local telephone switch's webhook for tests and the demo: it receives LOCK and UNLOCK events
as the prepaid deliverer sends them (cdr_billing.prepaid.switch).

python -m cdr_devkit.switch_server --secret-file F --events F --deliveries F --port N
    --ready-file F [--window-seconds 300] [--tls-cert PEM --tls-key PEM]

`POST /events`: the signature (X-Signature over "X-Timestamp.body" with the shared secret) must
verify and the timestamp be within the window, else 401. An event id seen before answers 200
and is not recorded again (the deliverer sends at least once). Each accepted event is appended
to the events file (JSONL, in the order accepted, with its receipt time); every request, with
its answer, to the deliveries file.

`POST /control` (JSON) sets how the switch misbehaves, `GET /control` shows it:
  {"mode": "up" | "down" (503) | "drop" (close the connection unanswered),
   "fail_next": N (the next N events get 500, not recorded),
   "delay_seconds": S (answer S seconds after recording: a slow switch, or the window in
   which a deliverer may crash after the event was received)}
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import ssl
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

from cdr_devkit.services import serve_until_terminated

DEFAULT_WINDOW_SECONDS = 300
MAX_BODY_BYTES = 64 * 1024


@dataclass
class Behaviour:
    """How the switch answers the next events."""

    mode: str = "up"
    fail_next: int = 0
    delay_seconds: float = 0.0


class Switch:
    """The switch's state: the secret, the events accepted (deduplicated) and its behaviour."""

    def __init__(self, secret: bytes, events: Path, deliveries: Path, window_seconds: int) -> None:
        self.secret = secret
        self.events = events
        self.deliveries = deliveries
        self.window_seconds = window_seconds
        self.behaviour = Behaviour()
        self.lock = threading.Lock()
        self.seen = {
            json.loads(line)["event_id"]
            for line in (events.read_text().splitlines() if events.exists() else [])
        }

    def signature_ok(self, timestamp: str, body: bytes, presented: str) -> bool:
        expected = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(f"sha256={expected.hexdigest()}", presented)

    def fresh(self, timestamp: str) -> bool:
        return timestamp.isdigit() and abs(time.time() - int(timestamp)) <= self.window_seconds

    def note_delivery(self, event_id: str, status: int, duplicate: bool = False) -> None:
        record = {"event_id": event_id, "status": status, "duplicate": duplicate, "at": time.time()}
        with self.deliveries.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def accept(self, event: dict) -> bool:
        """Record an event unless its id was seen; True when it is new."""
        if event["event_id"] in self.seen:
            return False
        self.seen.add(event["event_id"])
        with self.events.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({**event, "received_at": time.time()}) + "\n")
        return True


class Answer(NamedTuple):
    """A status and its JSON document."""

    status: int
    document: dict


class Handler(BaseHTTPRequestHandler):
    server: SwitchServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        """Quiet: the deliveries file is the log."""

    def _answer(self, status: int, document: dict) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, MAX_BODY_BYTES))

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/control":
            self._answer(404, {"error": "not found"})
            return
        with self.server.switch.lock:
            self._answer(200, asdict(self.server.switch.behaviour))

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/control":
            self._control()
        elif self.path == "/events":
            self._event()
        else:
            self._answer(404, {"error": "not found"})

    def _control(self) -> None:
        switch = self.server.switch
        changes = json.loads(self._body() or b"{}")
        with switch.lock:
            switch.behaviour = Behaviour(**{**asdict(switch.behaviour), **changes})
            self._answer(200, asdict(switch.behaviour))

    def _event(self) -> None:
        switch = self.server.switch
        body = self._body()
        event_id = self.headers.get("X-Event-Id", "")
        with switch.lock:
            behaviour = switch.behaviour
            if behaviour.mode == "drop":
                switch.note_delivery(event_id, 0)
                self.close_connection = True
                self.connection.shutdown(2)
                return
            answer = self._judge(switch, behaviour, event_id, body)
            delay = behaviour.delay_seconds
        if delay:
            time.sleep(delay)
        self._answer(*answer)

    def _judge(self, switch: Switch, behaviour: Behaviour, event_id: str, body: bytes) -> Answer:
        """The answer to one event (under the switch's lock): recorded when accepted."""
        if behaviour.mode == "down":
            switch.note_delivery(event_id, 503)
            return Answer(503, {"error": "switch down"})
        if behaviour.fail_next > 0:
            behaviour.fail_next -= 1
            switch.note_delivery(event_id, 500)
            return Answer(500, {"error": "injected failure"})
        timestamp = self.headers.get("X-Timestamp", "")
        if not switch.signature_ok(timestamp, body, self.headers.get("X-Signature", "")):
            switch.note_delivery(event_id, 401)
            return Answer(401, {"error": "bad signature"})
        if not switch.fresh(timestamp):
            switch.note_delivery(event_id, 401)
            return Answer(401, {"error": "timestamp outside the window"})
        event = json.loads(body)
        if str(event.get("event_id")) != event_id:
            switch.note_delivery(event_id, 400)
            return Answer(400, {"error": "X-Event-Id is not the body's event_id"})
        new = switch.accept(event)
        switch.note_delivery(event_id, 200, duplicate=not new)
        return Answer(200, {"accepted": event_id, "duplicate": not new})


class SwitchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, switch: Switch) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.switch = switch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--deliveries", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--window-seconds", type=int, default=DEFAULT_WINDOW_SECONDS)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args()
    switch = Switch(
        args.secret_file.read_bytes().strip(), args.events, args.deliveries, args.window_seconds
    )
    server = SwitchServer(args.port, switch)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    serve_until_terminated(server, args.ready_file)


if __name__ == "__main__":
    main()
