"""Posted forms read with bounds, for the Billing pages and the users' portal: only a small
urlencoded body is parsed, so a large or odd post costs nothing and is refused."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.requests import Request

URLENCODED = "application/x-www-form-urlencoded"


async def small_form(request: Request, max_bytes: int, max_fields: int) -> dict[str, str] | None:
    """The posted form's fields (the first value of each), or None when it is not an urlencoded
    form of at most max_bytes and max_fields."""
    if not request.headers.get("content-type", "").startswith(URLENCODED):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return None
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        return None
    return {name: values[0] for name, values in parsed.items()}
