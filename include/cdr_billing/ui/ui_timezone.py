"""The Airflow UI in the billing timezone by default.

The UI shows and reads every time (the backfill's date range too) in the timezone kept in the
browser's localStorage key `timezone` (a JSON string); without one it takes the browser's, UTC
in a headless or server-side browser. Airflow 3.3 has no server-side default, so this root
middleware adds one line to the UI's page that stores the billing timezone for a browser that
has none. A user's own choice (the UI's timezone menu) is kept.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The UI's page (airflow/ui/dist/index.html): the root element the app mounts on.
UI_PAGE_MARK = b'<div id="root"'


def default_timezone_script(timezone: str) -> bytes:
    """The line that stores the timezone unless the browser has one (the UI's module script
    runs after it: module scripts wait until the page is parsed)."""
    value = json.dumps(json.dumps(timezone))
    return (
        "<script>try{if(localStorage.getItem('timezone')===null)"
        f"localStorage.setItem('timezone',{value})}}catch(e){{}}</script>"
    ).encode()


def with_default_timezone(page: bytes, timezone: str) -> bytes:
    """The UI's page with the line in its head; any other page unchanged."""
    if UI_PAGE_MARK not in page or b"</head>" not in page:
        return page
    return page.replace(b"</head>", default_timezone_script(timezone) + b"</head>", 1)


class DefaultUiTimezone:
    """ASGI middleware: the UI's page (an uncompressed HTML answer to a GET) gets the line;
    everything else passes through untouched and unbuffered."""

    def __init__(self, app: ASGIApp, timezone: str) -> None:
        self.app = app
        self.timezone = timezone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def send_page(message: Message) -> None:
            if message["type"] == "http.response.start" and _is_plain_html(message):
                held["start"], held["body"] = message, b""
                return
            if message["type"] != "http.response.body" or "start" not in held:
                await send(message)
                return
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            body = with_default_timezone(held["body"], self.timezone)
            start = held.pop("start")
            MutableHeaders(scope=start)["content-length"] = str(len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_page)


def _is_plain_html(start: Message) -> bool:
    headers = MutableHeaders(scope=start)
    return headers.get("content-type", "").startswith("text/html") and (
        "content-encoding" not in headers
    )


def middlewares(timezone: str, enabled: bool) -> list[dict[str, Any]]:
    """The plugin's fastapi_root_middlewares: the default when billing.ui_timezone_default is
    on."""
    if not enabled:
        return []
    return [
        {
            "middleware": DefaultUiTimezone,
            "args": [],
            "kwargs": {"timezone": timezone},
            "name": "Airflow UI in the billing timezone by default",
        }
    ]
