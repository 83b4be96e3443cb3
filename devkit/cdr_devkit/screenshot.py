"""`make screenshot`: the README's pictures of the Billing page inside the Airflow UI, taken by
headless Chromium (Debian package chromium; driven over the DevTools protocol, no WebDriver):
docs/billing-page.png (a month), docs/billing-calls-phone-dark.png (a user's calls, drilled
down from the month, on a 390 px phone in dark mode), docs/billing-months-tried.png.

Runs on what `make demo` leaves (the demo's Airflow home, its SQLite billing database and run
files): starts Airflow (api-server, scheduler, dag-processor) on a free port, logs in the way
the UI's login page does (a JWT from POST /auth/token, kept as the `_token` cookie), then drives
Chromium over the DevTools protocol: open Billing in the UI, click the month, wait until its
chart is drawn, save the screenshot; click a customer, a line and a user; then Months tried.
It fails when the page in the frame is anything else (e.g. a login or error page), so the
pictures always show the real pages.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from websockets.sync.client import ClientConnection, connect

from cdr_devkit.airflow_env import PROJECT_ROOT, airflow_settings
from cdr_devkit.airflow_server import RunningAirflow
from cdr_devkit.demo import AIRFLOW_HOME, DEMO_DIR
from cdr_devkit.services import connection_env, stop_on_sigterm

BILLING_DB = DEMO_DIR / "billing.sqlite"
DOCS = PROJECT_ROOT / "docs"
WIDTH, HEIGHT = 1400, 1000
PHONE_WIDTH, PHONE_HEIGHT = 390, 844
WAIT_SECONDS = 90
# The frame's document, once it is the Billing app's (Airflow shows plugin pages in an iframe).
FRAME = "document.querySelector('iframe')?.contentDocument"


class ScreenshotError(RuntimeError):
    """The page could not be shown or captured."""


class DevTools:
    """A minimal Chrome DevTools protocol client: one WebSocket to the browser, flattened
    sessions."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._last_id = 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command and return its result (events in between are skipped)."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        while True:
            reply = json.loads(self._socket.recv(timeout=30))
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise ScreenshotError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        return self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)[
            "result"
        ].get("value")

    def wait_for(self, session: str, expression: str, what: str) -> None:
        """Wait until the expression is true in the page."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not self.evaluate(session, expression):
            if time.monotonic() > deadline:
                shown = self.evaluate(session, f"{FRAME}?.title || document.title")
                raise ScreenshotError(
                    f"{what} did not appear within {WAIT_SECONDS} s (the page shows {shown!r})"
                )
            time.sleep(0.5)


class Chromium(NamedTuple):
    """A headless Chromium and the WebSocket URL of its browser's DevTools endpoint."""

    process: subprocess.Popen
    devtools_url: str


def start_chromium(profile: Path) -> Chromium:
    """Start headless Chromium with the DevTools protocol on a free port; return it and its
    browser URL."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise ScreenshotError("Chromium is missing: apt-get install -y chromium")
    command = [
        binary,
        "--headless",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        f"--window-size={WIDTH},{HEIGHT}",
        "--no-first-run",
        "about:blank",
    ]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    browser = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or len(port_file.read_text().split()) < 2:
        if browser.poll() is not None or time.monotonic() > deadline:
            raise ScreenshotError("Chromium did not open its DevTools port")
        time.sleep(0.2)
    port, path = port_file.read_text().split()[:2]
    return Chromium(browser, f"ws://127.0.0.1:{port}{path}")


@contextmanager
def open_browser(profile: Path) -> Iterator[DevTools]:
    """A headless Chromium on the profile folder and a DevTools client on it; the browser (its
    whole process group: renderers, GPU) is stopped on the way out."""
    chromium = start_chromium(profile)
    try:
        with connect(chromium.devtools_url, max_size=None, proxy=None) as socket:
            yield DevTools(socket)
    finally:
        os.killpg(chromium.process.pid, signal.SIGTERM)
        chromium.process.wait(timeout=20)


def open_tab(
    devtools: DevTools, base_url: str, token: str, width: int = WIDTH, height: int = HEIGHT
) -> str:
    """Log in the way the UI's login page does (the JWT as the `_token` cookie) and open a blank
    tab of the given size; return its DevTools session."""
    devtools.call(
        "Storage.setCookies", cookies=[{"name": "_token", "value": token, "url": f"{base_url}/"}]
    )
    return blank_tab(devtools, width, height)


def blank_tab(devtools: DevTools, width: int = WIDTH, height: int = HEIGHT) -> str:
    """A blank tab of the given size; its DevTools session."""
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    return session


def _png(devtools: DevTools, session: str) -> bytes:
    time.sleep(1)  # let the UI settle (fonts, nav icons)
    return base64.b64decode(devtools.call("Page.captureScreenshot", session, format="png")["data"])


def _follow(devtools: DevTools, session: str, selector: str, title_start: str) -> None:
    """Click the frame's first link that matches and wait for the page it opens."""
    link = f"{FRAME}?.querySelector({json.dumps(selector)})"
    devtools.wait_for(session, f"!!{link}", f"a link {selector}")
    devtools.evaluate(session, f"{link}.click()")
    devtools.wait_for(
        session,
        f"({FRAME}?.title || '').startsWith({json.dumps(title_start)}) "
        f"&& {FRAME}.readyState === 'complete'",
        f"the page {title_start}…",
    )


def _as_phone_in_dark(devtools: DevTools, session: str, phone: bool) -> None:
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=PHONE_WIDTH if phone else WIDTH,
        height=PHONE_HEIGHT if phone else HEIGHT,
        deviceScaleFactor=2 if phone else 1,
        mobile=phone,
    )
    scheme = "dark" if phone else "light"
    devtools.call(
        "Emulation.setEmulatedMedia",
        session,
        features=[{"name": "prefers-color-scheme", "value": scheme}],
    )


def capture(devtools: DevTools, base_url: str, token: str, month: str) -> dict[str, bytes]:
    """Log in with the token cookie, open Billing in the UI, click the month, drill down to a
    user's calls, open Months tried; return each picture's PNG by file name."""
    session = open_tab(devtools, base_url, token)
    devtools.call("Page.navigate", session, url=f"{base_url}/plugin/billing")
    link = f"{FRAME}?.querySelector('a[href=\"month/{month}\"]')"
    devtools.wait_for(session, f"!!{link}", "the Billing page in the UI, with its month list,")
    devtools.evaluate(session, f"{link}.click()")
    devtools.wait_for(
        session,
        f"{FRAME}?.title === 'Billing {month}' && !!{FRAME}.querySelector('svg.chart')",
        "the month page",
    )
    pictures = {"billing-page.png": _png(devtools, session)}
    _follow(devtools, session, f'a[href^="{month}/customer/"]', "Customer ")
    _follow(devtools, session, 'a[href*="/line/"]', "Line ")
    _follow(devtools, session, 'a[href*="/user/"]', "Calls of ")
    _as_phone_in_dark(devtools, session, phone=True)
    pictures["billing-calls-phone-dark.png"] = _png(devtools, session)
    _as_phone_in_dark(devtools, session, phone=False)
    _follow(devtools, session, 'nav a[href$="runs"]', "Months tried")
    pictures["billing-months-tried.png"] = _png(devtools, session)
    return pictures


def check_month(month: str) -> None:
    """Fail early, with the fix, when the demo has not billed the month."""
    if BILLING_DB.exists():
        with sqlite3.connect(BILLING_DB) as db:
            query = "SELECT 1 FROM billing_batch WHERE billing_month = ? AND status = 'current'"
            if db.execute(query, (month,)).fetchone():
                return
    raise ScreenshotError(
        f"the demo billing database has no batch for {month}: run `make demo MONTH={month}` first"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--month", default="2026-10", help="the billed demo month to show (YYYY-MM)"
    )
    parser.add_argument(
        "--folder",
        type=Path,
        default=DOCS,
        help=f"where the PNG files go (default {DOCS.relative_to(PROJECT_ROOT)})",
    )
    args = parser.parse_args()
    stop_on_sigterm()
    check_month(args.month)
    env = {
        **os.environ,
        **airflow_settings(AIRFLOW_HOME, log_level="WARNING"),
        **connection_env({"billing_db": {"conn_type": "sqlite", "host": str(BILLING_DB)}}),
    }
    print(f"Starting Airflow on {AIRFLOW_HOME} and headless Chromium")
    with RunningAirflow(AIRFLOW_HOME, env, admin_password=secrets.token_urlsafe(16)) as airflow:
        with (
            tempfile.TemporaryDirectory(prefix="cdr-chromium-") as profile,
            open_browser(Path(profile)) as devtools,
        ):
            pictures = capture(devtools, airflow.base_url, airflow.token(), args.month)
    args.folder.mkdir(parents=True, exist_ok=True)
    for name, png in pictures.items():
        (args.folder / name).write_bytes(png)
        print(f"Wrote {args.folder / name} ({len(png)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
