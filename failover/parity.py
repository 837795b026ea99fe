"""Continuous parity: catch an origin that answers 200 with the wrong bytes.

Every `parity.interval` each canary path of a pool is fetched from the pool's `reference`
origin (typically the origin server behind the CDNs) and from each other origin, through the
origins' own connection pools (same TLS identity and Host header as their requests). An origin
whose answer differs from the reference's gets the `diverged` flag, with the difference as the
reason; the flag clears once every canary matches again.

    compare(path, answer, reference)   pure: Same, Different(detail) or Unknown(detail)
    summarize(verdicts)                pure: what one round means for one origin
    Parity                             the background loop of one pool (I/O, owned by the app)

Answers are compared on status, content type, length and SHA-256 of the body; two equal strong
ETags count as the same body. A reference that cannot be fetched means "cannot judge" (no flag
changes); an origin that cannot be fetched is left to the health checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from . import h1
from .config import ParityConfig
from .engine import Engine
from .origins import Flag, Origin
from .upstream import map_error

__all__ = ["Answer", "Parity", "Verdict", "answer_of", "compare", "summarize"]

logger = logging.getLogger("failover.parity")

USER_AGENT = "failover-parity"


@dataclass(frozen=True)
class Answer:
    """What one origin answered for one canary path."""

    status: int
    content_type: str  # normalized: lower case, no spaces; "" if none
    length: int  # bytes of the body (as far as read when too_large)
    sha256: str  # hex digest of the body ("" when too_large)
    etag: str | None = None  # a strong ETag; None when absent or weak
    too_large: bool = False  # the body went over parity.max_body


@dataclass(frozen=True)
class Verdict:
    kind: Literal["same", "different", "unknown"]
    detail: str


def _content_type(value: str) -> str:
    return "".join(value.split()).lower()


def answer_of(
    status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes, too_large: bool = False
) -> Answer:
    """An `Answer` from a status, raw response headers and the body read."""
    content_type, etag = "", None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-type":
            content_type = _content_type(value.decode("latin-1"))
        elif lowered == b"etag":
            text = value.decode("latin-1").strip()
            etag = None if text.startswith("W/") or not text else text
    digest = "" if too_large else hashlib.sha256(body).hexdigest()
    return Answer(status, content_type, len(body), digest, etag, too_large)


def _short(digest: str) -> str:
    return digest[:8] + ".."


def compare(path: str, answer: Answer, reference: Answer) -> Verdict:
    """How `answer` (an origin's) stands against `reference` (the reference origin's)."""
    if answer.too_large or reference.too_large:
        which = "reference" if reference.too_large else "answer"
        return Verdict("unknown", f"{path}: too large to compare ({which} over the limit)")
    if answer.status != reference.status:
        return Verdict(
            "different", f"{path}: status {answer.status} != reference {reference.status}"
        )
    differences: list[str] = []
    if answer.content_type != reference.content_type:
        differences.append(
            f"content-type {answer.content_type or '-'!r} != reference "
            f"{reference.content_type or '-'!r}"
        )
    same_etag = answer.etag is not None and answer.etag == reference.etag
    if not same_etag:
        if answer.length != reference.length:
            differences.append(f"length {answer.length} != reference {reference.length}")
        if answer.sha256 != reference.sha256:
            differences.append(
                f"sha256 {_short(answer.sha256)} != reference {_short(reference.sha256)}"
            )
    if differences:
        return Verdict("different", f"{path}: {', '.join(differences)}")
    return Verdict("same", f"{path}: matches the reference")


def summarize(verdicts: list[Verdict], canaries: int) -> Verdict:
    """One round for one origin: different if any canary differs, same only when every one
    of the `canaries` was judged the same, unknown otherwise (no flag change)."""
    different = [v.detail for v in verdicts if v.kind == "different"]
    if different:
        return Verdict("different", "; ".join(different))
    same = [v for v in verdicts if v.kind == "same"]
    if len(same) == canaries:
        return Verdict("same", "canaries match the reference")
    unknown = [v.detail for v in verdicts if v.kind == "unknown"]
    return Verdict("unknown", "; ".join(unknown) or "not every canary could be judged")


async def fetch(origin: Origin, path: str, config: ParityConfig) -> Answer | str:
    """GET `path` from `origin` through its connection pool, within `config.timeout` and
    reading at most `config.max_body` bytes; an `Answer`, or what failed."""
    pool: h1.Pool = origin.pool
    timeout, max_body = config.timeout, config.max_body
    headers = (
        ("Host", origin.host_header),
        ("User-Agent", USER_AGENT),
        ("Accept-Encoding", "identity"),  # compare the bytes, not one CDN's compression
    )
    try:
        async with asyncio.timeout(timeout):
            response = await pool.request("GET", pool.prefix + path, headers)
            try:
                parts: list[bytes] = []
                size = 0
                while chunk := await response.content.readany():
                    size += len(chunk)
                    if size > max_body:
                        return answer_of(response.status, response.raw_headers, b"", True)
                    parts.append(chunk)
                return answer_of(response.status, response.raw_headers, b"".join(parts))
            finally:
                if response.content.is_eof():
                    response.release()
                else:
                    response.close()
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except (OSError, h1.PoolFull) as exc:
        return map_error(exc, timeout).detail


class Parity:
    """The parity loop of one pool. A config reload starts a new one (the flags stay with the
    origins); the app owns the task and cancels it with the pool."""

    def __init__(self, pool_name: str, engine: Engine, config: ParityConfig) -> None:
        self.pool_name = pool_name
        self.engine = engine
        self.config = config
        self.reference = engine.by_name[config.reference]
        self.rounds = 0
        self._cannot_judge: str | None = None  # logged once until it changes
        self._unknown: dict[str, str] = {}  # origin -> the finding logged once

    async def run(self) -> None:
        """Check at once, then every `interval`; a failed round is logged, never fatal."""
        self.settle()
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception(
                    "Parity check of pool %s failed; trying again in %g s.",
                    self.pool_name,
                    self.config.interval,
                )
            await asyncio.sleep(self.config.interval)

    def settle(self) -> None:
        """The reference itself is never diverged (it may have been another origin's before)."""
        if Flag.DIVERGED in self.reference.flags:
            self.engine.set_flag(
                self.reference, Flag.DIVERGED, False, "converged", "it is the parity reference"
            )
            self.reference.parity = ""

    async def check(self) -> None:
        """One round: every canary from the reference and from every other origin."""
        config = self.config
        others = [o for o in self.engine.origins if o is not self.reference]
        targets = [self.reference, *others]
        fetches = [fetch(origin, path, config) for path in config.canaries for origin in targets]
        results = await asyncio.gather(*fetches)
        self.rounds += 1
        width = len(targets)
        verdicts: dict[str, list[Verdict]] = {o.name: [] for o in others}
        failed: list[str] = []
        for index, path in enumerate(config.canaries):
            row = results[index * width : (index + 1) * width]
            reference = row[0]
            if isinstance(reference, str):
                failed.append(f"{path}: {reference}")
                continue
            for origin, answer in zip(others, row[1:], strict=True):
                if isinstance(answer, Answer):
                    verdicts[origin.name].append(compare(path, answer, reference))
        self._reference_state(failed)
        for origin in others:
            self._apply(origin, summarize(verdicts[origin.name], len(config.canaries)))

    def _reference_state(self, failed: list[str]) -> None:
        problem = "; ".join(failed) or None
        if problem != self._cannot_judge:
            if problem is not None:
                logger.warning(
                    "Pool %s: cannot judge parity, the reference %s did not answer: %s.",
                    self.pool_name,
                    self.reference.name,
                    problem,
                )
            else:
                logger.info(
                    "Pool %s: the parity reference %s answers again.",
                    self.pool_name,
                    self.reference.name,
                )
            self._cannot_judge = problem

    def _apply(self, origin: Origin, verdict: Verdict) -> None:
        if verdict.kind == "unknown":
            if verdict.detail != self._unknown.get(origin.name):
                self._unknown[origin.name] = verdict.detail
                if "too large" in verdict.detail:
                    logger.warning(
                        "Pool %s: parity of %s not judged: %s.",
                        self.pool_name,
                        origin.name,
                        verdict.detail,
                    )
            return
        self._unknown.pop(origin.name, None)
        diverged = verdict.kind == "different"
        origin.parity = verdict.detail
        kind = "diverged" if diverged else "converged"
        reason = verdict.detail if diverged else "canaries match the reference again"
        self.engine.set_flag(origin, Flag.DIVERGED, diverged, kind, reason)


def clear(engine: Engine, reason: str) -> None:
    """Parity no longer applies to this pool: no origin stays diverged."""
    for origin in engine.origins:
        origin.parity = ""
        engine.set_flag(origin, Flag.DIVERGED, False, "converged", reason)
