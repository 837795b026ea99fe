"""Operator overrides (drain, disable) and the state file that keeps them.

The file is JSON, written atomically (a temporary file renamed over the old one), so that a
restart, or another worker watching the file, never reads half of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ACTIONS", "OverrideStore"]

logger = logging.getLogger("failover.overrides")

ACTIONS = ("drain", "disable", "enable")


class OverrideStore:
    """name -> {"action": "drain" | "disable" | "enable", "by": who, "at": wall-clock seconds}.

    An enable is kept too (it means: automatic), so that when two copies meet (a restart, or
    the fleet after Redis comes back) the newest word on each origin wins.
    """

    def __init__(self, path: str | None, wall_clock: Callable[[], float]) -> None:
        self.path = Path(path) if path else None
        self.wall_clock = wall_clock
        self.entries: dict[str, dict[str, Any]] = {}

    def load(self) -> bool:
        """Read the state file; say whether what it holds differs from what we had."""
        if self.path is None:
            return False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            logger.error(
                "Cannot read the state file %s: %s; keeping the overrides.", self.path, exc
            )
            return False
        entries = data.get("overrides", {}) if isinstance(data, dict) else {}
        valid = {
            name: entry
            for name, entry in entries.items()
            if isinstance(entry, dict) and entry.get("action") in ACTIONS
        }
        changed = valid != self.entries
        self.entries = valid
        return changed

    def set(self, name: str, action: str, by: str) -> dict[str, Any]:
        entry = {"action": action, "by": by, "at": self.wall_clock()}
        self.entries[name] = entry
        self.save()
        return entry

    def merge(self, others: dict[str, dict[str, Any]]) -> bool:
        """Take every entry of `others` that is newer than ours; say whether any was."""
        changed = False
        for name, entry in others.items():
            ours = self.entries.get(name)
            if entry.get("action") in ACTIONS and (
                ours is None or float(entry.get("at", 0)) > float(ours.get("at", 0))
            ):
                self.entries[name] = entry
                changed = True
        if changed:
            self.save()
        return changed

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"overrides": self.entries}, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
