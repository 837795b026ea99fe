"""The admin API as the operator's command line speaks it: httpx, synchronous.

Every failure to get an answer ends in one `AdminError`: a sentence for the operator and the
exit status the command line ends with (see `failover.control` for the table). httpx's own
errors are mapped here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_REFUSED", "AdminClient", "AdminError"]

EXIT_OK = 0  # done
EXIT_REFUSED = 1  # the proxy answered and said no on the merits (e.g. the new config is invalid)
EXIT_FAILED = 2  # could not be done as asked: usage, unreachable, token, admin.allow, names


class AdminError(Exception):
    """One line for the operator, and the exit status it ends with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else f"{line[:limit]}..."


class AdminClient:
    """Calls to one proxy's admin API at `url` (the prefix included, e.g.
    `http://127.0.0.1:8080/_failover`), with `token` as the bearer token when given."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def events(self, limit: int) -> dict[str, Any]:
        """The newest `limit` events, newest first, and `next`, the cursor to follow from."""
        return self._call("GET", "/events", params={"limit": str(limit)})

    def follow(self, after: int, wait: float) -> dict[str, Any]:
        """Events numbered `after` or later, oldest first, waiting up to `wait` seconds."""
        return self._call(
            "GET",
            "/events",
            params={"after": str(after), "wait": f"{wait:g}"},
            timeout=wait + self.timeout,
        )

    def override(self, origin: str, action: str, by: str | None) -> dict[str, Any]:
        params = {"by": by} if by else None
        return self._call("POST", f"/origins/{origin}/{action}", params=params, mutation=True)

    def reload(self) -> dict[str, Any]:
        """The outcome of a reload; an invalid config raises AdminError (exit 1) listing its
        problems, one per line."""
        return self._call("POST", "/reload", mutation=True)

    def start_drill(self, pool: str, body: dict[str, str], by: str | None) -> dict[str, Any]:
        """The new drill's report (202); a refusal raises AdminError (exit 1) with the
        proxy's sentence."""
        params = {"by": by} if by else None
        return self._call("POST", f"/pools/{pool}/drills", params=params, mutation=True, json=body)

    def drill(self, drill_id: str) -> dict[str, Any]:
        return self._call("GET", f"/drills/{drill_id}")

    # -- one request ------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        mutation: bool = False,
        json: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        url = self.url + path
        try:
            response = self._http.request(
                method, url, params=params, timeout=timeout or self.timeout, json=json
            )
        except httpx.ConnectError as exc:
            raise AdminError(
                f"cannot reach the proxy's admin API at {self.url}: {_reason(exc)}"
            ) from None
        except httpx.TimeoutException:
            raise AdminError(
                f"the proxy's admin API at {self.url} did not answer within "
                f"{timeout or self.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise AdminError(
                f"talking to the proxy's admin API at {self.url} failed: {_reason(exc)}"
            ) from None
        return self._answer(response, mutation)

    def _answer(self, response: httpx.Response, mutation: bool) -> dict[str, Any]:
        status = response.status_code
        body: Any = None
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                body = response.json()
            except ValueError:
                body = None
        if status in (200, 202) and isinstance(body, dict):
            return body
        said = _said(response)
        if status == 401:
            if self.token:
                raise AdminError(
                    f"the proxy at {self.url} refused the token (401): check --token or "
                    "FAILOVER_ADMIN_TOKEN against admin.token"
                )
            raise AdminError(
                f"the proxy at {self.url} needs the admin token for this: pass --token or "
                "set FAILOVER_ADMIN_TOKEN"
            )
        if status == 422 and isinstance(body, dict) and body.get("result") == "error":
            problems = "; ".join(str(p) for p in body.get("errors", []))
            raise AdminError(
                f"the proxy rejected the new config and keeps the old one: {problems}",
                EXIT_REFUSED,
            )
        if status == 409:
            raise AdminError(said, EXIT_REFUSED)
        if status in (400, 403, 404) and response.headers.get("content-type", "").startswith(
            "text/plain"
        ):
            raise AdminError(said)
        if 200 <= status < 300:
            raise AdminError(
                f"{response.request.url} did not answer like a failover admin API "
                f"({status}, {response.headers.get('content-type') or 'no content type'}): "
                "check --url and the admin prefix"
            )
        raise AdminError(
            f"{response.request.url} answered {status}"
            + (f": {said}" if said else "")
            + ("" if mutation or status >= 500 else "; check --url and the admin prefix")
        )


def _said(response: httpx.Response) -> str:
    """The proxy's own one-line reason ("404 Not Found: no origin named ..." -> the reason)."""
    text = _one_line(response.text)
    phrase = f"{response.status_code} {response.reason_phrase}: "
    return text[len(phrase) :] if text.startswith(phrase) else text


def _reason(exc: httpx.HTTPError) -> str:
    text = _one_line(str(exc)) or type(exc).__name__
    if "connection refused" in text.lower():
        return "connection refused (is the proxy running, and is this its address?)"
    return text
