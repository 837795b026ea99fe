"""The maintenance page: what users get when the proxy itself answers 502, 503 or 504.

The page (`pages.unavailable`) is read and split at its placeholders once per config, so an
answer costs a join of a few strings, and nothing at all on the normal path. Placeholders:
`{{retry_after}}` (seconds), `{{since}}` (when the pool stopped being fully operational, RFC
3339 UTC) and `{{notice}}` (the operator's notice, empty when none); every value is HTML-
escaped. A client that accepts JSON but not HTML gets the same facts as a JSON object.
"""

from __future__ import annotations

import html
import json
import logging
import re
from http import HTTPStatus

from starlette.types import Send

from .config import MAX_PAGE_BYTES

__all__ = ["PLACEHOLDERS", "MaintenancePage", "load_page", "wants_json"]

logger = logging.getLogger("failover.pages")

PLACEHOLDERS = ("retry_after", "since", "notice")
_PLACEHOLDER = re.compile(r"\{\{\s*(retry_after|since|notice)\s*\}\}")


def wants_json(accept: bytes | None) -> bool:
    """Whether an Accept header asks for JSON rather than HTML (a browser names text/html)."""
    if not accept:
        return False
    lowered = accept.lower()
    return b"json" in lowered and b"text/html" not in lowered


class MaintenancePage:
    def __init__(self, template: str) -> None:
        # Alternating literal text and placeholder names: [text, name, text, name, text].
        self.parts: list[str] = _PLACEHOLDER.split(template)

    def html(self, retry_after: str, since: str, notice: str) -> bytes:
        values = {
            "retry_after": html.escape(retry_after),
            "since": html.escape(since),
            "notice": html.escape(notice),
        }
        parts = self.parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(values[parts[i]])
            out.append(parts[i + 1])
        return "".join(out).encode()

    @staticmethod
    def json(status: int, retry_after: str, since: str, notice: str) -> bytes:
        body = {
            "status": status,
            "error": HTTPStatus(status).phrase,
            "retry_after": int(retry_after),
            "since": since,
            "notice": notice or None,
        }
        return json.dumps(body).encode()

    async def send(
        self,
        send: Send,
        status: int,
        accept: bytes | None,
        retry_after: str,
        since: str,
        notice: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        if wants_json(accept):
            body, kind = self.json(status, retry_after, since, notice), b"application/json"
        else:
            body, kind = self.html(retry_after, since, notice), b"text/html; charset=utf-8"
        headers = [
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", retry_after.encode()),
            (b"cache-control", b"no-store"),
            (b"vary", b"accept"),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def load_page(path: str | None) -> MaintenancePage | None:
    """The page at `path` (checked by the config), or None: without one, or when it can no
    longer be read, the proxy answers errors in plain text."""
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PAGE_BYTES + 1)
        if len(data) > MAX_PAGE_BYTES:
            raise ValueError(f"it is larger than {MAX_PAGE_BYTES} bytes")
        return MaintenancePage(data.decode("utf-8"))
    except (OSError, ValueError) as exc:
        logger.error(
            "pages.unavailable: %r cannot be read (%s); errors are answered in plain text.",
            path,
            exc,
        )
        return None
