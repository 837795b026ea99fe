"""The operator's commands against a running proxy, through its admin API:
`status`, `events`, `drain`, `enable`, `disable`, `reload`, `drill`.

Exit status: 0 done (a drill: it passed, or with --no-wait it started); 1 the proxy answered
and said no (a reload of an invalid config, or of a proxy that runs without a config file; a
drill that aborted or was refused); 2 it could not be done as asked (a usage mistake, the
proxy unreachable or too slow, a wrong or missing token, a client outside `admin.allow`, an
unknown origin or pool). Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx loads only when one of these commands runs
    from .client import AdminClient

__all__ = ["COMMANDS", "add_commands", "admin_url", "run_command"]

ACTIONS = ("drain", "enable", "disable")
COMMANDS = ("status", "events", *ACTIONS, "reload", "drill")
DEFAULT_PREFIX = "/_failover"
FOLLOW_WAIT = 5.0  # seconds one poll of `events --follow` waits for news (and may hold a stop)
DRILL_POLL = 0.5  # seconds between two looks at a running drill
DRILL_MARGIN = 10.0  # seconds a drill may take past its duration before `drill` stops waiting
EPILOG = (
    "exit status: 0 done; 1 the proxy said no (reload: the new config is invalid, or the "
    "proxy runs without a config file; drill: it aborted or was refused); 2 not done: usage, "
    "proxy unreachable or too slow, wrong or missing token, not in admin.allow, unknown "
    "origin or pool"
)
ACTION_HELP = {
    "drain": "stop sending new requests to ORIGIN (requests in flight finish)",
    "disable": "force ORIGIN down",
    "enable": "hand ORIGIN back to its health checks (clears drain and disable)",
}


def add_commands(commands: Any) -> None:
    """Add the operator's commands to the `failover` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        help="the admin API, e.g. http://127.0.0.1:8080 (a URL without a path gets "
        f"{DEFAULT_PREFIX}; default: listen.host, listen.port and admin.prefix of the config)",
    )
    common.add_argument(
        "--token",
        help="admin.token for drain, enable, disable, reload, drill ($FAILOVER_ADMIN_TOKEN)",
    )
    common.add_argument(
        "--config",
        type=Path,
        help="config file the default --url is read from (default: as for run)",
    )
    common.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)"
    )

    def add(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name,
            parents=[common],
            help=help,
            description=help[:1].upper() + help[1:] + ".",
            epilog=EPILOG,
        )
        return parser

    status = add("status", "show each pool's origins, their state and why")
    status.add_argument("--pool", help="only this pool")
    status.add_argument("--json", action="store_true", help="the status JSON, for scripts")

    events = add("events", "show the latest state changes, oldest first")
    events.add_argument("-f", "--follow", action="store_true", help="then wait for new ones")
    events.add_argument(
        "--limit", type=int, default=20, help="how many past events to show (default 20)"
    )
    events.add_argument("--count", type=int, help="with --follow: exit after this many new events")
    events.add_argument("--pool", help="only this pool's events (and the whole proxy's)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")

    for action in ACTIONS:
        parser = add(action, ACTION_HELP[action])
        parser.add_argument("origin", metavar="ORIGIN")
        parser.add_argument("--by", help="who, recorded with the override (default: $USER)")
        parser.add_argument("--json", action="store_true", help="the answer as JSON")

    reload = add("reload", "ask the running proxy to re-read its config file now")
    reload.add_argument("--json", action="store_true", help="the outcome as JSON")

    drill = add("drill", "drain POOL's preferred origin for a while to prove the others carry it")
    drill.add_argument("pool", metavar="POOL")
    drill.add_argument(
        "--duration", help="how long, e.g. 60s (default: the pool's drills.duration)"
    )
    drill.add_argument(
        "--max-error-rate",
        help="abort above this error rate at the other origins, e.g. 1%% (default: the "
        "pool's drills.max_error_rate)",
    )
    drill.add_argument(
        "--max-p95",
        help="abort above this p95 latency, e.g. 500ms (default: the pool's drills.max_p95)",
    )
    drill.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the drill to end and show its report (default); --no-wait: start it "
        "and show its report as it starts",
    )
    drill.add_argument("--by", help="who, recorded with the drill (default: $USER)")
    drill.add_argument("--json", action="store_true", help="the drill report as JSON")


def run_command(args: argparse.Namespace) -> int:
    from .client import AdminClient, AdminError

    try:
        url = admin_url(args.url, args.config)
        if args.timeout <= 0:
            raise AdminError(f"--timeout: {args.timeout:g} is not a positive number of seconds")
        for option in ("limit", "count"):
            value = getattr(args, option, None)
            if value is not None and value < 0:
                raise AdminError(f"--{option}: {value} is not a whole number of 0 or more")
        token = args.token or os.environ.get("FAILOVER_ADMIN_TOKEN") or None
        with AdminClient(url, token, args.timeout) as client:
            return HANDLERS[args.command](client, args)
    except AdminError as error:
        print(f"failover {args.command}: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # how `events --follow` is meant to end
        return 0


def admin_url(url: str | None, config: Path | None) -> str:
    """The admin API's base URL: `url` (with the default prefix when it has no path), else
    the config's listen address and admin prefix."""
    from .client import AdminError

    if url:
        import httpx

        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise AdminError(f"--url: {url!r} is not an http(s) URL such as http://127.0.0.1:8080")
        if parsed.path in ("", "/"):
            return str(parsed.copy_with(path=DEFAULT_PREFIX, query=None, fragment=None))
        return str(parsed.copy_with(query=None, fragment=None)).rstrip("/")
    from .config import ConfigError, ListenConfig, default_config_path, load_config

    path = config or default_config_path()
    if config is None and not path.exists():
        listen, prefix = ListenConfig(), DEFAULT_PREFIX
    else:
        try:
            settings = load_config(path)
        except ConfigError as error:
            more = len(error.problems) - 1
            raise AdminError(
                f"{error.problems[0]}"
                + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
                + "; pass --url to name the proxy"
            ) from None
        listen, prefix = settings.listen, settings.admin.prefix
    return f"http://{_connectable(listen.host)}:{listen.port}{prefix}"


def _connectable(host: str) -> str:
    """A listen address as a URL host: the wildcard addresses become loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


# -- the commands ---------------------------------------------------------------------------


def _status(client: AdminClient, args: argparse.Namespace) -> int:
    from .client import AdminError

    body = client.status()
    pools: list[dict[str, Any]] = body.get("pools", [])
    if args.pool is not None:
        pools = [pool for pool in pools if pool.get("name") == args.pool]
        if not pools:
            known = ", ".join(str(pool.get("name")) for pool in body.get("pools", []))
            raise AdminError(f"--pool: no pool named {args.pool!r} (known: {known})")
    if args.json:
        print(json.dumps(pools[0] if args.pool is not None else body, indent=2))
        return 0
    for index, pool in enumerate(pools):
        if index:
            print()
        print(_pool_line(pool))
        rows = [_origin_row(origin) for origin in pool.get("origins", [])]
        header = ("ORIGIN", "PRIORITY", "STATE", "FLAGS", "ERRORS", "LATENCY", "REQ/S")
        print(_table([(*header, "FOR", "REASON"), *rows]))
    reload = body.get("last_reload")
    if reload and args.pool is None:
        print()
        line = f"last reload: {reload.get('result')} at {_clock(reload.get('at'))}"
        line += f" ({reload.get('trigger')})"
        if reload.get("errors"):
            line += ": " + "; ".join(str(problem) for problem in reload["errors"])
        print(line)
    return 0


def _pool_line(pool: dict[str, Any]) -> str:
    active = pool.get("active")
    if isinstance(active, list):
        active = ", ".join(active)
    traffic = f"traffic to {active}" if active else "no usable origin"
    ready = "ready" if pool.get("ready") else "NOT READY"
    return f"pool {pool.get('name')}: {ready}, {traffic}"


def _origin_row(origin: dict[str, Any]) -> tuple[str, ...]:
    passive = origin.get("passive") or {}
    latency = passive.get("mean_latency_ms")
    since = origin.get("since_seconds")
    return (
        str(origin.get("name")),
        str(origin.get("priority")),
        str(origin.get("state")),
        ",".join(origin.get("flags") or []) or "-",
        f"{100 * float(passive.get('error_rate') or 0):.1f}%",
        f"{latency:.1f} ms" if isinstance(latency, int | float) else "-",
        f"{float(passive.get('requests_per_second') or 0):g}",
        _duration(since) if isinstance(since, int | float) else "-",
        str(origin.get("reason") or "-"),
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _clock(at: Any) -> str:
    if not isinstance(at, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"


EVENT_HEADER = f"{'TIME':<20}  {'POOL':<12}  {'EVENT':<16}  {'ORIGIN':<12}  {'CHANGE':<26}  REASON"


def _event_line(event: dict[str, Any]) -> str:
    old, new = event.get("old") or "", event.get("new") or ""
    change = f"{old} -> {new}" if old or new else "-"
    return (
        f"{_clock(event.get('time')):<20}  {event.get('pool', '-')!s:<12}  "
        f"{event.get('kind')!s:<16}  {event.get('origin')!s:<12}  {change:<26}  "
        f"{event.get('reason') or '-'}"
    ).rstrip()


def _events(client: AdminClient, args: argparse.Namespace) -> int:
    def shown(event: dict[str, Any]) -> bool:
        return args.pool is None or event.get("pool") in (args.pool, "-")

    def show(event: dict[str, Any]) -> None:
        print(json.dumps(event) if args.json else _event_line(event), flush=True)

    body = client.events(args.limit)
    if not args.json:
        print(EVENT_HEADER, flush=True)
    for event in reversed(body.get("events", [])):
        if shown(event):
            show(event)
    if not args.follow:
        return 0
    # The fleet's history carries no cursor: follow this process's events from now on.
    cursor = int(body["next"]) if "next" in body else int(client.follow(0, 0).get("next", 0))
    seen = 0
    while args.count is None or seen < args.count:
        batch = client.follow(cursor, FOLLOW_WAIT)
        cursor = int(batch.get("next", cursor))
        for event in batch.get("events", []):
            if shown(event) and (args.count is None or seen < args.count):
                show(event)
                seen += 1
    return 0


def _override(client: AdminClient, args: argparse.Namespace) -> int:
    by = args.by or os.environ.get("USER") or None
    body = client.override(args.origin, args.command, by)
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(f"{body.get('origin')}: {body.get('state')} ({args.command} by {body.get('by')})")
    return 0


def _reload(client: AdminClient, args: argparse.Namespace) -> int:
    body = client.reload()
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(f"config reloaded at {_clock(body.get('at'))}")
    return 0


def _drill(client: AdminClient, args: argparse.Namespace) -> int:
    from .client import EXIT_OK, EXIT_REFUSED, AdminError
    from .drills import drill_body

    by = args.by or os.environ.get("USER") or None
    body = drill_body(args.duration, args.max_error_rate, args.max_p95)
    report = client.start_drill(args.pool, body, by)
    drill_id = str(report.get("id"))
    where = f"{client.url}/drills/{drill_id}"
    if args.wait:
        bound = float(report.get("duration") or 0) + DRILL_MARGIN
        deadline = time.monotonic() + bound
        try:
            while report.get("state") == "running":
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AdminError(
                        f"drill {drill_id} of pool {args.pool!r} had not ended after {bound:g} s "
                        f"(its duration and {DRILL_MARGIN:g} s); its report: GET {where}"
                    )
                time.sleep(min(DRILL_POLL, left))
                report = client.drill(drill_id)
        except KeyboardInterrupt:
            raise AdminError(
                f"stopped waiting; drill {drill_id} of pool {args.pool!r} runs on, its "
                f"report: GET {where}"
            ) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_drill_report(report))
        if report.get("state") == "running":
            print(f"running; its report: GET {where}")
    return EXIT_REFUSED if report.get("state") == "aborted" else EXIT_OK


def _drill_report(report: dict[str, Any]) -> str:
    """A drill report as a header and a table of the origins' share of the traffic."""
    reason = report.get("reason")
    thresholds = report.get("thresholds") or {}
    rate, p95 = thresholds.get("max_error_rate"), thresholds.get("max_p95_ms")
    lines = [
        f"drill {report.get('id')} of pool {report.get('pool')}: {report.get('state')}"
        + (f" ({reason})" if reason else ""),
        f"drained {report.get('origin')} for {float(report.get('elapsed') or 0):g} s of "
        f"{float(report.get('duration') or 0):g} s"
        + (
            f"; abort above {100 * float(rate):g}% errors or p95 {float(p95):g} ms"
            if isinstance(rate, int | float) and isinstance(p95, int | float)
            else ""
        ),
    ]

    def ms(value: Any) -> str:
        return f"{value:g} ms" if isinstance(value, int | float) else "-"

    rows: list[tuple[str, ...]] = [("ORIGIN", "REQUESTS", "ERRORS", "ERROR RATE", "P50", "P95")]
    for name, tally in (report.get("origins") or {}).items():
        drained = " (drained)" if name == report.get("origin") else ""
        rows.append(
            (
                f"{name}{drained}",
                str(tally.get("requests", 0)),
                str(tally.get("errors", 0)),
                f"{100 * float(tally.get('error_rate') or 0):.1f}%",
                ms(tally.get("p50_ms")),
                ms(tally.get("p95_ms")),
            )
        )
    lines.append(_table(rows))
    return "\n".join(lines)


HANDLERS: dict[str, Callable[[AdminClient, argparse.Namespace], int]] = {
    "status": _status,
    "events": _events,
    "drain": _override,
    "enable": _override,
    "disable": _override,
    "reload": _reload,
    "drill": _drill,
}
