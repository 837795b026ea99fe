"""failover: a multi-CDN failover reverse proxy.

The public names are loaded on first use, so that `failover check` and `--help` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import App, create_app
    from .config import ConfigError, Settings, build_settings, load_config

__all__ = ["App", "ConfigError", "Settings", "build_settings", "create_app", "load_config"]
__version__ = "0.1.0"

_HOMES = {
    "App": "app",
    "create_app": "app",
    "ConfigError": "config",
    "Settings": "config",
    "build_settings": "config",
    "load_config": "config",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'failover' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
