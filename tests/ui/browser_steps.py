"""What the browser tests of tests/ui do alike in headless Chromium (driven over the DevTools
protocol by cdr_devkit.screenshot, as `make screenshot` does): open a page of the Airflow UI
logged in, run JavaScript on the Billing app's document inside the UI's frame, wait for a page,
click a link as a user does, read a card's table, take a screenshot, wait for a download.
The fixture `browser` (conftest.py) gives each test a Chromium with a fresh profile."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

from cdr_devkit.screenshot import FRAME, DevTools, ScreenshotError, open_tab

WAIT_SECONDS = 90
POLL_SECONDS = 0.2
# DevTools' errors for an expression sent while the page changes documents
NAVIGATING = re.compile(r"navigated or closed|Cannot find context|Execution context was destroyed")
BILLING = "/plugin/billing"  # the Billing app in the UI, in its sandboxed frame


class View(NamedTuple):
    """A screen the pages are shown on."""

    name: str
    width: int
    height: int
    mobile: bool


PHONE = View("phone", 390, 844, True)
DESKTOP = View("desktop", 1400, 1000, False)


def frame(expression: str) -> str:
    """A JavaScript expression on the Billing app's document `d` inside the UI's frame (null
    while the frame has no document)."""
    return f"(() => {{ const d = {FRAME}; return d ? ({expression}) : null; }})()"


def in_frame(devtools: DevTools, session: str, expression: str) -> Any:
    """The value of an expression on the frame's document `d`."""
    return devtools.evaluate(session, frame(expression))


def _true_unless_navigating(devtools: DevTools, session: str, expression: str) -> bool:
    """The expression's value; False while the page is between two documents (a reload or a
    navigation lost the context the expression was sent to)."""
    try:
        return bool(devtools.evaluate(session, expression))
    except ScreenshotError as error:
        if NAVIGATING.search(str(error)):
            return False
        raise


def wait(devtools: DevTools, session: str, expression: str, what: str) -> None:
    """Wait until the expression (on the UI's page; frame() for the frame's) is true; fail with
    what the page and its frame show."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not _true_unless_navigating(devtools, session, expression):
        if time.monotonic() > deadline:
            shown = devtools.evaluate(
                session,
                f"location.pathname + ' | ' + ({FRAME}?.title || document.title) + ': ' + "
                f"({FRAME}?.body?.innerText || document.body.innerText).slice(0, 2000)",
            )
            raise AssertionError(f"{what} did not appear; the page shows {shown!r}")
        time.sleep(POLL_SECONDS)


def show(devtools: DevTools, session: str, view: View, scheme: str | None = None) -> None:
    """Show the tab as on the view's screen, and in the colour scheme the browser prefers."""
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=view.width,
        height=view.height,
        deviceScaleFactor=2 if view.mobile else 1,
        mobile=view.mobile,
    )
    if scheme:
        devtools.call(
            "Emulation.setEmulatedMedia",
            session,
            features=[{"name": "prefers-color-scheme", "value": scheme}],
        )


def open_ui(
    devtools: DevTools,
    airflow,
    path: str = BILLING,
    view: View = DESKTOP,
    scheme: str | None = None,
) -> str:
    """Log in with the UI's cookie and open the UI's page at `path` (Billing by default) on the
    view's screen; return the tab's DevTools session."""
    session = open_tab(devtools, airflow.base_url, airflow.token(), view.width, view.height)
    if view.mobile or scheme:
        show(devtools, session, view, scheme)
    devtools.call("Page.navigate", session, url=f"{airflow.base_url}{path}")
    return session


def element(scope: str, selector: str, text: str | None = None) -> str:
    """JavaScript: the first element under `scope` that matches the CSS selector (and whose
    trimmed text is `text`)."""
    if text is None:
        return f"{scope}.querySelector({json.dumps(selector)})"
    return (
        f"[...{scope}.querySelectorAll({json.dumps(selector)})]"
        f".find(e => e.innerText.trim() === {json.dumps(text)})"
    )


def click(
    devtools: DevTools,
    session: str,
    selector: str,
    text: str | None = None,
    scope: str = FRAME,
    opens: str | None = None,
) -> None:
    """Click an element as a user does, once it is there: in the Billing frame unless `scope`
    names another part of the UI's page. With `opens`, wait until a new document with that
    title has loaded in the frame (a listing's next page has the title of the one before)."""
    found = element(scope, selector, text)
    wait(devtools, session, f"!!({scope}) && !!{found}", repr(text or selector))
    if opens is not None:
        in_frame(devtools, session, "d.leftByTest = true")  # gone with its document
    devtools.evaluate(session, f"{found}.click()")
    if opens is not None:
        wait(
            devtools,
            session,
            frame(
                f"!d.leftByTest && d.readyState === 'complete' && d.title === {json.dumps(opens)}"
            ),
            f"the page {opens!r}",
        )


def section(heading: str) -> str:
    """JavaScript: the frame's card (section) whose heading starts with `heading`."""
    return (
        f"[...({FRAME}?.querySelectorAll('section') ?? [])]"
        f".find(s => s.querySelector('h2')?.textContent.startsWith({json.dumps(heading)}))"
    )


def table_rows(devtools: DevTools, session: str, heading: str) -> list[list[str]]:
    """The cell texts of the body rows of the frame's card whose heading starts with
    `heading`."""
    return devtools.evaluate(
        session,
        f"[...({section(heading)}?.querySelectorAll('tbody tr') ?? [])]"
        ".map(r => [...r.cells].map(c => c.innerText.trim()))",
    )


def shot(devtools: DevTools, session: str, path: Path) -> None:
    """The tab as a PNG file."""
    png = devtools.call("Page.captureScreenshot", session, format="png")["data"]
    path.write_bytes(base64.b64decode(png))


def allow_downloads(devtools: DevTools, folder: Path) -> None:
    """Downloads are saved into the folder (headless Chromium drops them otherwise)."""
    folder.mkdir(exist_ok=True)
    devtools.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder))


def downloaded(folder: Path, suffix: str) -> Path:
    """The one file with the suffix that a download saved into the folder, once complete
    (Chromium reserves the name with an empty file and renames its .crdownload over it)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        files = list(folder.iterdir())
        found = [p for p in files if p.suffix == suffix and p.stat().st_size > 0]
        if found and not [p for p in files if p.suffix == ".crdownload"]:
            [file] = found
            return file
        assert time.monotonic() < deadline, f"no complete download: {files}"
        time.sleep(POLL_SECONDS)
