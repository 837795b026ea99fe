"""`failover demo`: two embedded origins on loopback behind the proxy.

A newcomer flips the primary into failure with one curl command, watches traffic move to the
secondary, flips it back and watches traffic return once the hold-down has passed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import uvicorn
import yaml

from .config import Settings, build_settings
from .faulty import FaultyOrigin

__all__ = ["demo_config", "run_demo"]


def demo_config(port: int, primary: int, secondary: int) -> dict[str, object]:
    """A config with short intervals, so that every move happens within seconds."""
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "origins": [
            {"name": "primary", "url": f"http://127.0.0.1:{primary}", "priority": 0},
            {"name": "secondary", "url": f"http://127.0.0.1:{secondary}", "priority": 1},
        ],
        "health": {
            "path": "/health",
            "interval": "1s",
            "timeout": "500ms",
            "healthy_threshold": 2,
            "unhealthy_threshold": 2,
        },
        "passive": {"consecutive_failures": 3, "ejection_time": "5s"},
        "failback": {"hold_down": "10s"},
        "timeouts": {"connect": "1s", "first_byte": "2s"},
    }


def instructions(port: int, primary: int) -> str:
    proxy = f"http://127.0.0.1:{port}"
    control = f"http://127.0.0.1:{primary}/_origin/mode"
    return f"""
The proxy listens on {proxy}, in front of two demo origins. In another terminal:

  # 1. Watch which origin answers (the X-Failover-Origin header), twice a second:
  while sleep 0.5; do curl -s -D - -o /dev/null {proxy}/ | grep -i x-failover-origin; done

  # 2. Make the primary fail (every answer 503); traffic moves to the secondary at once,
  #    and clients keep getting 200 (503s are retried on the next origin):
  curl -X POST {control}/http5xx

  #    Other faults: reset (connections reset), blackhole (never answers), slow, partial, flap.
  # 3. Recover it; traffic returns after the 10 s hold-down, not before:
  curl -X POST {control}/ok

  # 4. See what the proxy thinks, and why:
  curl -s {proxy}/_failover/status
  curl -s {proxy}/_failover/events

Press Ctrl-C to stop.
"""


async def run_demo(
    build_app: Callable[[Settings], Any],
    port: int = 8080,
    primary_port: int = 9001,
    secondary_port: int = 9002,
) -> None:
    primary = FaultyOrigin("primary", port=primary_port, health_path="/health")
    secondary = FaultyOrigin("secondary", port=secondary_port, health_path="/health")
    await primary.start()
    await secondary.start()
    try:
        config = demo_config(port, primary.port, secondary.port)
        settings = build_settings(config)
        print("Config:\n")
        print(yaml.safe_dump(config, sort_keys=False))
        print(instructions(port, primary.port))
        sys.stdout.flush()
        from .listener import prepare_open_files, uvicorn_options

        prepare_open_files(settings.limits)
        server = uvicorn.Server(uvicorn.Config(**uvicorn_options(settings, build_app(settings))))
        await server.serve()
    finally:
        await primary.stop()
        await secondary.stop()
