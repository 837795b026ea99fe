"""failover: a multi-CDN failover reverse proxy."""

from .app import App, create_app
from .config import ConfigError, Settings, build_settings, load_config

__all__ = ["App", "ConfigError", "Settings", "build_settings", "create_app", "load_config"]
__version__ = "0.1.0"
