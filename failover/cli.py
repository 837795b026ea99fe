"""The `failover` command: run, check, demo, audit (failover/audit.py), and the operator's
commands against a running proxy (status, events, drain, enable, disable, reload, drill; see
failover/control.py).

Fatal errors end here, at the boundary: library code raises, this module prints one line
per problem and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import audit
from .config import ConfigError, Settings, default_config_path, load_config
from .control import COMMANDS, add_commands, run_command
from .logs import setup_logging

__all__ = ["main", "uvicorn_config"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="failover", description="A multi-CDN failover reverse proxy."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument(
        "--config",
        type=Path,
        help="config file (default: $FAILOVER_CONFIG, ./failover.yaml, config/failover.yaml)",
    )
    run.add_argument("--host", help="listen address (overrides listen.host)")
    run.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    run.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info")

    check = commands.add_parser("check", help="validate a config file and exit")
    check.add_argument("path", type=Path)

    demo = commands.add_parser("demo", help="two demo origins behind the proxy, on loopback")
    demo.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    demo.add_argument(
        "--origin-ports",
        type=int,
        nargs=2,
        default=(9001, 9002),
        metavar=("PRIMARY", "SECONDARY"),
        help="default 9001 9002",
    )
    demo.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    add_commands(commands)
    audit.add_command(commands)

    args = parser.parse_args(argv)
    if args.command == "audit":
        return audit.main(args)
    if args.command in COMMANDS:
        return run_command(args)
    if args.command == "check":
        return _check(args.path)
    if args.command == "run":
        return _run(args)
    from .app import App
    from .demo import run_demo

    setup_logging(args.log_level)
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        asyncio.run(run_demo(App, args.port, args.origin_ports[0], args.origin_ports[1]))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"failover demo: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _load(path: Path) -> Settings | None:
    try:
        return load_config(path)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return None


def _check(path: Path) -> int:
    try:
        settings = _load(path)
    except Exception as exc:  # a bug in validation still ends in one line, never a traceback
        print(f"{path}: cannot check: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2
    if settings is None:
        return 2
    for line in [*settings.warnings(), *certificate_warnings(settings)]:
        print(f"warning: {line}", file=sys.stderr)
    if "origins" in settings.model_fields_set:  # the single-pool form
        origins = ", ".join(f"{o.name} (priority {o.priority})" for o in settings.origins)
        print(f"{path}: ok; origins: {origins}")
        return 0
    print(f"{path}: ok; {len(settings.pools)} pools, {len(settings.routes)} routes")
    for name, pool in settings.pools.items():
        origins = ", ".join(f"{o.name} (priority {o.priority})" for o in pool.origins)
        print(f"  pool {name}: {origins}")
    return 0


def certificate_warnings(settings: Settings) -> list[str]:
    """The listener's and the client certificates that expire within 14 days."""
    from .tls import expiry_warnings

    files: list[tuple[str, str]] = []
    if settings.listen.tls is not None:
        for i, cert in enumerate(settings.listen.tls.certificates):
            files.append((f"listen.tls.certificates[{i}]", cert.cert_file))
    for pool_name, pool in settings.pools.items():
        for origin in pool.origins:
            tls = pool.tls_for(origin)
            if tls is not None and tls.client_cert_file is not None:
                where = f"pools.{pool_name}.origins.{origin.name}.tls"
                files.append((where, tls.client_cert_file))
    return expiry_warnings(dict.fromkeys(files), time.time())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else f"{text[:200]}..."


def _run(args: argparse.Namespace) -> int:
    path: Path = args.config or default_config_path()
    if args.host:
        os.environ["FAILOVER_LISTEN__HOST"] = args.host
    if args.port is not None:
        os.environ["FAILOVER_LISTEN__PORT"] = str(args.port)
    settings = _load(path)
    if settings is None:
        return 2
    if settings.fleet is not None:
        problem = _check_redis(settings.fleet.redis_url)
        if problem:
            print(f"fleet.redis_url: {problem}", file=sys.stderr)
            return 2
    if args.workers < 1:
        print(f"--workers: {args.workers} is not a positive number", file=sys.stderr)
        return 2
    import uvicorn

    from .listener import prepare_open_files

    setup_logging(args.log_level)
    for line in [*settings.warnings(), *certificate_warnings(settings)]:
        logging.getLogger("failover").warning("%s", line)
    prepare_open_files(settings.limits)
    # Workers re-read the config through the factory; they find it through the environment.
    os.environ["FAILOVER_CONFIG"] = str(path.resolve())
    if args.workers == 1:
        from .app import App

        app: Any = App(settings, config_path=path)
    else:
        settings = _share_between_workers(settings, path)
        app = "failover.app:create_app"
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully, which
    # would end the process "killed by SIGTERM"; a graceful stop is a success: exit 0.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.run(**uvicorn_config(settings, app, args.log_level, workers=args.workers))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _check_redis(url: str) -> str | None:
    """A wrong password is fatal at start-up; an unreachable Redis is not (the proxy serves
    alone until it answers)."""
    import redis
    from redis.exceptions import AuthenticationError, RedisError, ResponseError

    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        client.ping()
    except (AuthenticationError, ResponseError) as exc:
        return f"Redis refused the credentials: {exc}"
    except (RedisError, OSError):
        return None
    finally:
        client.close()
    return None


def _share_between_workers(settings: Settings, path: Path) -> Settings:
    """Workers are separate processes: metrics go through files that any worker can sum up,
    and overrides through the state file that every worker watches."""
    scratch = Path(tempfile.mkdtemp(prefix="failover-"))
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        (scratch / "metrics").mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    if settings.admin.state_file is None:
        state = scratch / "state.json"
        os.environ["FAILOVER_ADMIN__STATE_FILE"] = str(state)
        logging.getLogger("failover").warning(
            "admin.state_file is not set: overrides reach every worker through %s but do not "
            "survive a restart.",
            state,
        )
        return load_config(path)
    return settings


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def uvicorn_config(
    settings: Settings, app: Any, log_level: str = "info", workers: int = 1
) -> dict[str, Any]:
    """uvicorn's settings for the proxy (see failover.listener.uvicorn_options)."""
    from .listener import uvicorn_options  # uvicorn loads only when the proxy runs

    return uvicorn_options(settings, app, log_level, workers)


if __name__ == "__main__":
    sys.exit(main())
