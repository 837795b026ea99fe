"""Configuration: a YAML file plus `FAILOVER_` environment overrides, validated by pydantic.

`load_config(path)` is the one entry point. It raises `ConfigError`, whose `problems` are
lines of the form `origins[1].url: 'ftp://x' is not an http(s) URL`, one per problem.
Nothing here does I/O beyond reading the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "AdminConfig",
    "ConfigError",
    "FailbackConfig",
    "HealthConfig",
    "LimitsConfig",
    "OriginConfig",
    "PassiveConfig",
    "RetryConfig",
    "Settings",
    "StatusSet",
    "TimeoutsConfig",
    "build_settings",
    "default_config_path",
    "load_config",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class ConfigError(Exception):
    """The configuration is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: Any) -> Any:
    """Seconds as a number, or a string such as `500ms`, `2s`, `1.5m`, `1h`."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (seconds, or e.g. '500ms', '2s', '1m')")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration (seconds, or e.g. '500ms', '2s', '1m')")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
OptionalDuration = Annotated[float | None, BeforeValidator(parse_duration), Field(gt=0)]


class StatusSet:
    """A set of HTTP statuses written as ranges and lists, e.g. `"200-299,304"`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.ranges: list[tuple[int, int]] = []
        for part in text.split(","):
            part = part.strip()
            low, sep, high = part.partition("-")
            try:
                first = int(low)
                last = int(high) if sep else first
            except ValueError:
                raise ValueError(
                    f"{text!r} is not a status list (expected e.g. '200-299,304')"
                ) from None
            if not (100 <= first <= last <= 599):
                raise ValueError(f"{part!r} in {text!r} is not a status range within 100-599")
            self.ranges.append((first, last))

        self.codes = frozenset(code for lo, hi in self.ranges for code in range(lo, hi + 1))

    def __contains__(self, status: object) -> bool:
        return type(status) is int and status in self.codes

    def __repr__(self) -> str:
        return f"StatusSet({self.text!r})"


def _status_set(value: Any) -> Any:
    if isinstance(value, StatusSet):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        return StatusSet(value)
    raise ValueError(f"{value!r} is not a status list (expected e.g. '200-299,304')")


Statuses = Annotated[StatusSet, BeforeValidator(_status_set)]


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


class ListenConfig(_Block):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class HealthConfig(_Block):
    path: str = "/"
    method: str = "GET"
    interval: Duration = 2.0
    unhealthy_interval: OptionalDuration = None
    timeout: Duration = 1.0
    healthy_threshold: int = Field(2, ge=1)
    unhealthy_threshold: int = Field(2, ge=1)
    expect_status: Statuses = StatusSet("200-399")
    expect_body: str | None = None
    headers: dict[str, str] = {}
    startup_grace: Duration = 5.0
    enabled: bool = True

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        return value

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if not _TOKEN.match(value):
            raise ValueError(f"{value!r} is not an HTTP method")
        return value.upper()

    @field_validator("expect_body")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value


class HealthOverride(_Block):
    """Per-origin health settings; unset keys fall back to the top-level `health` block."""

    path: str | None = None
    method: str | None = None
    interval: OptionalDuration = None
    unhealthy_interval: OptionalDuration = None
    timeout: OptionalDuration = None
    healthy_threshold: int | None = Field(None, ge=1)
    unhealthy_threshold: int | None = Field(None, ge=1)
    expect_status: Statuses | None = None
    expect_body: str | None = None
    headers: dict[str, str] | None = None
    enabled: bool | None = None


class OriginConfig(_Block):
    name: str
    url: str
    priority: int = Field(0, ge=0)
    weight: int = Field(1, ge=1, le=1000)
    host_header: str | None = None
    preserve_host: bool = False
    health: HealthOverride = HealthOverride()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} may only hold letters, digits, '-' and '_'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{value!r} is not an http(s) URL")
        if not parts.hostname:
            raise ValueError(f"{value!r} has no host")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} may not have a query or fragment")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        return value.rstrip("/")


class PassiveConfig(_Block):
    enabled: bool = True
    consecutive_failures: int = Field(3, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    window: Duration = 10.0
    min_requests: int = Field(10, ge=1)
    ejection_time: Duration = 30.0
    max_ejection_time: Duration = 300.0
    latency_threshold: OptionalDuration = None
    failure_statuses: Statuses = StatusSet("500-599")

    @model_validator(mode="after")
    def _ejection(self) -> PassiveConfig:
        if self.max_ejection_time < self.ejection_time:
            raise ValueError(
                f"max_ejection_time ({self.max_ejection_time:g}) is shorter than "
                f"ejection_time ({self.ejection_time:g})"
            )
        return self


class FailbackConfig(_Block):
    hold_down: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 30.0
    flap_window: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 60.0
    max_hold_down: Duration = 300.0

    @model_validator(mode="after")
    def _max(self) -> FailbackConfig:
        if self.max_hold_down < self.hold_down:
            raise ValueError(
                f"max_hold_down ({self.max_hold_down:g}) is shorter than "
                f"hold_down ({self.hold_down:g})"
            )
        return self


RetryCondition = Literal["connect-failure", "reset", "timeout"]
RETRY_CONDITIONS: tuple[str, ...] = ("connect-failure", "reset", "timeout")


class RetryConfig(_Block):
    attempts: int = Field(2, ge=1, le=10)
    on: list[RetryCondition | int] = ["connect-failure", "reset", "timeout", 502, 503, 504]
    methods: list[str] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
    max_buffered_body: int = Field(1_048_576, ge=0)
    idempotency_key: bool = False
    budget: float = Field(0.2, ge=0, le=1)
    min_retries_in_flight: int = Field(3, ge=0)
    hedge_after: OptionalDuration = None

    @field_validator("on", mode="before")
    @classmethod
    def _on(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                if not 100 <= item <= 599:
                    raise ValueError(f"{item!r} is not an HTTP status")
            elif item not in RETRY_CONDITIONS:
                raise ValueError(
                    f"{item!r} is not a retry condition (expected one of "
                    f"{', '.join(RETRY_CONDITIONS)} or an HTTP status)"
                )
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _TOKEN.match(item):
                raise ValueError(f"{item!r} is not an HTTP method")
        return [item.upper() for item in value]


class TimeoutsConfig(_Block):
    connect: Duration = 2.0
    first_byte: Duration = 10.0
    idle: Duration = 60.0
    send: Duration = 30.0
    request: OptionalDuration = None


class LimitsConfig(_Block):
    """What one client may send, and how long it may take (see README, Limits and timeouts)."""

    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_headers: int = Field(100, ge=1, le=10_000)
    header_timeout: Duration = 10.0
    idle_timeout: Duration = 60.0
    body_timeout: Duration = 30.0
    max_body_bytes: int | None = Field(None, ge=0)
    max_connections: int = Field(10_000, ge=1)


class AdminConfig(_Block):
    prefix: str = "/_failover"
    token: str | None = None
    allow: list[str] = ["127.0.0.0/8", "::1/128"]
    trust_forwarded: list[str] = []
    state_file: str | None = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        inner = value[1:].rstrip("/").replace("/", "_")
        if not value.startswith("/") or not inner or not _NAME.match(inner):
            raise ValueError(f"{value!r} is not a path prefix such as '/_failover'")
        return value.rstrip("/")

    @field_validator("allow", "trust_forwarded")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network (e.g. '10.0.0.0/8')") from None
        return value


# The upstream HTTP client: failover.h1 (asyncio + httptools). The key stays so that configs
# that name it keep loading.
UpstreamClient = Literal["native"]


class ProxyConfig(_Block):
    origin_header: bool = True
    attempts_header: bool = True
    via: str = "failover"
    max_connections_per_origin: int = Field(1000, ge=1)
    client: UpstreamClient = "native"


class StaleConfig(_Block):
    enabled: bool = False
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    max_object_bytes: int = Field(1024 * 1024, ge=0)
    max_age: Duration = 3600.0


class MetricsConfig(_Block):
    enabled: bool = True


class LogConfig(_Block):
    access: bool = False


class EventsConfig(_Block):
    webhooks: list[str] = []
    history: int = Field(500, ge=1)
    webhook_timeout: Duration = 5.0
    webhook_queue: int = Field(1000, ge=1)

    @field_validator("webhooks")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value


class FleetConfig(_Block):
    redis_url: str
    key_prefix: str = "failover:"
    lease: Duration = 5.0
    publish_interval: Duration = 0.5

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ValueError(f"{value!r} is not a redis:// or rediss:// URL")
        return value


AllDown = Literal["try-all", "503", "stale"]


class Settings(BaseSettings):
    """The whole configuration. Build it with `load_config`, never mutate it."""

    model_config = SettingsConfigDict(
        env_prefix="FAILOVER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
    )

    listen: ListenConfig = ListenConfig()
    origins: list[OriginConfig]
    health: HealthConfig = HealthConfig()
    passive: PassiveConfig = PassiveConfig()
    failback: FailbackConfig = FailbackConfig()
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    limits: LimitsConfig = LimitsConfig()
    admin: AdminConfig = AdminConfig()
    proxy: ProxyConfig = ProxyConfig()
    stale: StaleConfig = StaleConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    events: EventsConfig = EventsConfig()
    fleet: FleetConfig | None = None
    all_down: AllDown = "try-all"
    shutdown_timeout: Duration = 30.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Order is priority: the environment overrides what the file (passed as init) says.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _stale(self) -> Settings:
        if self.all_down == "stale" and not self.stale.enabled:
            raise ValueError("all_down: 'stale' needs stale.enabled: true")
        return self

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[OriginConfig]) -> list[OriginConfig]:
        if not value:
            raise ValueError("at least one origin is required")
        seen: set[str] = set()
        for origin in value:
            if origin.name in seen:
                raise ValueError(f"duplicate origin name {origin.name!r}")
            seen.add(origin.name)
        return value

    def health_for(self, origin: OriginConfig) -> HealthConfig:
        """The origin's effective health settings: its override over the top-level block."""
        override = origin.health.model_dump(exclude_none=True)
        return self.health.model_copy(update=override) if override else self.health


def default_config_path() -> Path:
    """`$FAILOVER_CONFIG`, else `./failover.yaml`, else `config/failover.yaml`."""
    env = os.environ.get("FAILOVER_CONFIG")
    if env:
        return Path(env)
    for candidate in (Path("failover.yaml"), Path("config/failover.yaml")):
        if candidate.exists():
            return candidate
    return Path("failover.yaml")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so a key such as `on` stays the string 'on'."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"))
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; syntax errors name the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of settings, got {type(data).__name__}"])
    return data


def build_settings(data: dict[str, Any]) -> Settings:
    """Validate a mapping (plus the environment) into Settings, or raise ConfigError."""
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        # The duplicate check runs only once every origin is valid; say it now as well, so
        # that one round of fixes is enough.
        for problem in _duplicate_names(data):
            if problem not in problems:
                problems.append(problem)
        raise ConfigError(problems) from None


def _duplicate_names(data: dict[str, Any]) -> list[str]:
    origins = data.get("origins")
    if not isinstance(origins, list):
        return []
    names: list[str] = [
        o["name"] for o in origins if isinstance(o, dict) and isinstance(o.get("name"), str)
    ]
    repeated = sorted({name for name in names if names.count(name) > 1})
    return [f"origins: duplicate origin name {name!r}" for name in repeated]


def load_config(path: str | Path) -> Settings:
    """Read, merge with the environment and validate; raise ConfigError listing every problem."""
    return build_settings(read_yaml(Path(path)))


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(("function-", "lax-", "json-")) or "[" in part:
            continue  # pydantic's internal validator names, not keys the user wrote
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def _describe(error: Any) -> str:
    loc = _location(tuple(error["loc"]))
    kind = error["type"]
    message: str = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "extra_forbidden":
        message = "unknown key (check its spelling against the config reference)"
    elif kind == "missing":
        message = "is required"
    else:
        message = f"{message}, got {error['input']!r}"
    return f"{loc}: {message}"
