"""Canary answers: what one origin answered for one path, and how two answers differ.

Pure: no network, no clock. `failover audit` compares each origin's answer with the
reference origin's (the pool's first); continuous parity checks may use the same comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CanaryAnswer", "difference"]


@dataclass(frozen=True)
class CanaryAnswer:
    """One answer to a canary request. `sha256` is the body's hex digest, "" when the body
    was not hashed (too large); `length` is -1 when unknown; `etag` as the origin sent it."""

    status: int
    content_type: str
    length: int
    sha256: str
    etag: str | None = None


def _short(digest: str) -> str:
    return f"{digest[:4]}.." if digest else "-"


def _strong(etag: str | None) -> str | None:
    """A strong ETag (weak ones, W/"...", promise no byte-for-byte equality)."""
    if etag is None or etag.startswith("W/"):
        return None
    return etag


def _media(content_type: str) -> str:
    return ";".join(part.strip() for part in content_type.lower().split(";"))


def difference(path: str, answer: CanaryAnswer, reference: CanaryAnswer) -> str | None:
    """None when `answer` matches `reference`; else the first difference, on one line, e.g.
    `/app.js: sha256 3f2a.. != reference 9b1c..`. The body's SHA-256 decides when both
    were hashed; otherwise strong ETags do, when both have one."""
    if answer.status != reference.status:
        return f"{path}: status {answer.status} != reference {reference.status}"
    if _media(answer.content_type) != _media(reference.content_type):
        return (
            f"{path}: content type {answer.content_type or '-'!r} != reference "
            f"{reference.content_type or '-'!r}"
        )
    if answer.length >= 0 and reference.length >= 0 and answer.length != reference.length:
        return f"{path}: length {answer.length} != reference {reference.length}"
    if answer.sha256 and reference.sha256:
        if answer.sha256 != reference.sha256:
            return f"{path}: sha256 {_short(answer.sha256)} != reference {_short(reference.sha256)}"
        return None
    mine, theirs = _strong(answer.etag), _strong(reference.etag)
    if mine is not None and theirs is not None and mine != theirs:
        return f"{path}: etag {mine} != reference {theirs}"
    return None
