"""Live config edits: the proxy watches its config file (and reloads on SIGHUP).

A new config is read and validated first; if it is invalid the proxy keeps serving with the
old one and reports every problem. The directory is watched rather than the file, because
editors and Kubernetes ConfigMaps replace files (rename, symlink swap) instead of writing them;
a change counts only when the file's bytes differ from what was last applied.
The state file of operator overrides is watched the same way, so that every worker applies an
override that one of them received.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from watchfiles import Change, awatch

from .config import ConfigError, Settings, build_settings, read_yaml

__all__ = ["ReloadHost", "Reloader"]


class ReloadHost(Protocol):
    """What reloading needs of the running proxy (the app provides it)."""

    def apply(self, settings: Settings, trigger: str) -> None: ...

    def reload_failed(self, problems: list[str], trigger: str) -> None: ...

    def load_overrides(self) -> None: ...


logger = logging.getLogger("failover.reload")


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError:
        return None


class Reloader:
    def __init__(self, app: ReloadHost, config_path: Path | None, state_file: Path | None) -> None:
        self.app = app
        self.config_path = config_path
        self.state_file = state_file
        self._config_bytes = _read(config_path)
        self._state_bytes = _read(state_file)
        self.stop = asyncio.Event()

    def reload(self, trigger: str) -> bool:
        """Re-read the config; apply it if valid. Returns whether it was applied."""
        if self.config_path is None:
            return False
        self._config_bytes = _read(self.config_path)
        try:
            settings = build_settings(read_yaml(self.config_path))
        except ConfigError as error:
            self.app.reload_failed(error.problems, trigger)
            return False
        self.app.apply(settings, trigger)
        return True

    def check(self) -> None:
        """Apply whatever changed on disk since the last look."""
        config = _read(self.config_path)
        if config is not None and config != self._config_bytes:
            self.reload("config file changed")
        state = _read(self.state_file)
        if state != self._state_bytes:
            self._state_bytes = state
            self.app.load_overrides()

    async def watch(self) -> None:
        files = [p for p in (self.config_path, self.state_file) if p is not None]
        folders = {p.parent.resolve() for p in files}
        folders = {folder for folder in folders if folder.is_dir()}
        if not folders:
            return
        # Only our files count (other files in the folder, such as logs, change all the time);
        # `..data` is the symlink a Kubernetes ConfigMap volume swaps on each update.
        names = {p.name for p in files} | {"..data"}

        def ours(change: Change, path: str) -> bool:
            return Path(path).name in names

        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        self.check()  # whatever changed between start-up and now
        async for _ in awatch(
            *folders,
            watch_filter=ours,
            debounce=100,
            step=20,
            stop_event=self.stop,
            recursive=False,
        ):
            try:
                self.check()
            except Exception:
                logger.exception("Applying a change on disk failed; watching on.")
