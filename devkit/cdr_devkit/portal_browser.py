"""The portal in headless Chromium, as a user drives it (DevTools protocol, cdr_devkit.screenshot):
ask for a sign-in link, follow the link read from the SMTP server's maildir, confirm, and land
on the signed-in page. Used by `python -m cdr_devkit.portal --screenshot` and the browser tests.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from cdr_devkit.screenshot import HEIGHT, DevTools, ScreenshotError, blank_tab

WAIT_SECONDS = 60
HOME_TITLE = "My phone account"


def wait_until(devtools: DevTools, session: str, expression: str, what: str) -> None:
    """Wait until the expression is true on the page; fail with what the page shows."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not devtools.evaluate(session, expression):
        if time.monotonic() > deadline:
            shown = devtools.evaluate(
                session, "document.title + ': ' + (document.body?.innerText || '').slice(0, 1500)"
            )
            raise ScreenshotError(f"{what} did not appear; the page shows {shown!r}")
        time.sleep(0.2)


def open_page(devtools: DevTools, session: str, url: str, title: str) -> None:
    devtools.evaluate(session, "document.leftByTest = true")
    devtools.call("Page.navigate", session, url=url)
    loaded(devtools, session, title)


def loaded(devtools: DevTools, session: str, title: str) -> None:
    """Wait for a new document with the title (the one before was marked left)."""
    wait_until(
        devtools,
        session,
        f"!document.leftByTest && document.readyState === 'complete' "
        f"&& document.title === {json.dumps(title)}",
        f"the page {title!r}",
    )


def submit(devtools: DevTools, session: str, form: str, title: str) -> None:
    """Click the submit button of the form matching the CSS selector; wait for the page."""
    button = f"document.querySelector({json.dumps(form + ' button[type=submit]')})"
    wait_until(devtools, session, f"!!{button}", f"the form {form}")
    devtools.evaluate(session, f"document.leftByTest = true; {button}.click()")
    loaded(devtools, session, title)


def sign_in(devtools: DevTools, base_url: str, maildir: Path, address: str) -> str:
    """Sign in by a mailed link in a new tab; return its session, on the signed-in page."""
    from cdr_devkit.portal import mailed_links, wait_for_link

    session = blank_tab(devtools)
    known = len(mailed_links(maildir, address))
    open_page(devtools, session, f"{base_url}/sign-in", "Sign in")
    devtools.evaluate(
        session, f"document.querySelector('input[name=address]').value = {json.dumps(address)}"
    )
    submit(devtools, session, 'form[action="/sign-in"]', "Check your mail")
    link = wait_for_link(maildir, address, known)
    open_page(devtools, session, link, "Confirm sign-in")
    submit(devtools, session, 'form[action="/sign-in/confirm"]', HOME_TITLE)
    return session


def signed_in_picture(devtools: DevTools, session: str) -> bytes:
    """The signed-in page as a PNG, the whole page's height."""
    height = devtools.evaluate(session, "document.documentElement.scrollHeight")
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=1100,
        height=min(int(height or HEIGHT), 2400),
        deviceScaleFactor=1,
        mobile=False,
    )
    time.sleep(0.5)
    png = devtools.call("Page.captureScreenshot", session, format="png")["data"]
    return base64.b64decode(png)
