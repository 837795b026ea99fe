"""Configuration: a YAML file plus `FAILOVER_` environment overrides, validated by pydantic.

`load_config(path)` is the one entry point. It raises `ConfigError`, whose `problems` are
lines of the form `origins[1].url: 'ftp://x' is not an http(s) URL`, one per problem.
Nothing here does I/O beyond reading the file (configfile.py, with its bounds), a stat of
`admin.state_file`, and loading the TLS files it names (certificates, keys, CAs; see tls.py).

Every value `check` accepts, `run` can start with: numbers are finite with sane ranges,
durations at most a year, and strings that end up in HTTP heads (methods, paths, header names
and values, Host, Via) hold no control characters. `Settings.warnings()` names what is valid
but unwise (a short admin token); `failover check` prints those lines and `run` logs them.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from .configfile import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    ConfigFileError,
    file_kind,
    load_yaml,
    quote,
)

__all__ = [
    "EVENT_KINDS",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_DURATION",
    "MAX_NODES",
    "MIN_TOKEN_LENGTH",
    "AdminConfig",
    "CertificateConfig",
    "ConfigError",
    "DnsConfig",
    "DrillsConfig",
    "FailbackConfig",
    "HealthConfig",
    "LeastLatencyConfig",
    "LimitsConfig",
    "ListenTLSConfig",
    "OriginConfig",
    "OriginTLSConfig",
    "PagesConfig",
    "ParityConfig",
    "PassiveConfig",
    "PublicConfig",
    "RetryConfig",
    "Settings",
    "StatusSet",
    "TimeoutsConfig",
    "WebhookConfig",
    "build_settings",
    "default_config_path",
    "load_config",
    "parse_duration",
    "parse_nameserver",
    "parse_rate",
    "parse_window",
    "read_yaml",
]

MAX_DURATION = 365 * 86400.0  # a year: every duration is finite and at most this long
MAX_PROBLEMS = 50  # problem lines reported at once
MAX_REGEX = 4096  # characters in health.expect_body
MAX_HEAD_VALUE = 8192  # characters in a URL, probe path or header value sent upstream
MIN_TOKEN_LENGTH = 16  # a shorter admin.token is a warning

_DURATION = re.compile(
    r"\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(ms|s|m|h|d)?\s*", re.ASCII
)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Every pattern below is used with fullmatch: `$` would also accept a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9_-]+)+/?")
_PORT = r"(?::[0-9]{1,5})?"
_HOST = re.compile(r"(?:[A-Za-z0-9._~%!$&'()*+,;=-]+|\[[0-9A-Fa-f:.]+\])" + _PORT)
_VIA = re.compile(r"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+|\[[0-9A-Fa-f:.]+\])" + _PORT)
_LISTEN_HOST = re.compile(r"[A-Za-z0-9._:%-]+")
_VISIBLE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_PATH = re.compile(r"/[\x21-\x7e]*")
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")  # no control characters but tab


class ConfigError(Exception):
    """The configuration is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_NOT_A_DURATION = "is not a duration (seconds, or e.g. '500ms', '2s', '1m')"


def parse_duration(value: Any) -> Any:
    """Seconds as a number, or a string such as `500ms`, `2s`, `1.5m`, `1h`; finite, at most
    a year (negative and zero are left to the field's own bound)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} {_NOT_A_DURATION}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(f"{quote(value)} {_NOT_A_DURATION}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf if value > 0 else -math.inf
    else:
        return value
    if math.isnan(seconds):
        raise ValueError(f"{quote(value)} {_NOT_A_DURATION}")
    if seconds > MAX_DURATION:
        raise ValueError(f"{quote(value)} is longer than a year (the most a duration may be)")
    return seconds  # -inf is left to the model, which asks for a finite number


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
OptionalDuration = Duration | None
ZeroDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


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
                    f"{quote(text)} is not a status list (expected e.g. '200-299,304')"
                ) from None
            if not (100 <= first <= last <= 599):
                raise ValueError(
                    f"{quote(part)} in {quote(text)} is not a status range within 100-599"
                )
            self.ranges.append((first, last))
        # Merge overlapping ranges first: the text may list thousands, the codes are few.
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(set(self.ranges)):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self.codes = frozenset(code for lo, hi in merged for code in range(lo, hi + 1))

    def __contains__(self, status: object) -> bool:
        return type(status) is int and status in self.codes

    def __repr__(self) -> str:
        return f"StatusSet({self.text!r})"


def _status_set(value: Any) -> Any:
    if isinstance(value, StatusSet):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() < 32:
        value = str(value)
    if isinstance(value, str):
        return StatusSet(value)
    raise ValueError(f"{quote(value)} is not a status list (expected e.g. '200-299,304')")


Statuses = Annotated[StatusSet, BeforeValidator(_status_set)]


# --- strings that end up in HTTP heads ---------------------------------------------------------


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{quote(value)} may only hold letters, digits, '-' and '_'")
    return value


def _check_method(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{quote(value)} is not an HTTP method")
    return value.upper()


def _too_long(value: str) -> None:
    if len(value) > MAX_HEAD_VALUE:
        raise ValueError(f"{quote(value)} is longer than {MAX_HEAD_VALUE} characters")


def _check_probe_path(value: str) -> str:
    _too_long(value)
    if not value.startswith("/"):
        raise ValueError(f"{quote(value)} must start with '/'")
    if not _PATH.fullmatch(value):
        raise ValueError(
            f"{quote(value)} is not a request path (printable ASCII without spaces; "
            "percent-encode the rest)"
        )
    return value


def _check_regex(value: str) -> str:
    if len(value) > MAX_REGEX:
        raise ValueError(f"{quote(value)} is longer than {MAX_REGEX} characters")
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:  # the last two: a{9999999999}, ((((...
        raise ValueError(f"{quote(value)} is not a regular expression: {exc}") from None
    return value


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    for name, field in value.items():
        _too_long(name)
        _too_long(field)
        if not _TOKEN.fullmatch(name):
            raise ValueError(
                f"{quote(name)} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
            )
        if not _FIELD_VALUE.fullmatch(field):
            raise ValueError(
                f"the value of {quote(name)}, {quote(field)}, holds a control character"
            )
    return value


def _check_host_header(value: str) -> str:
    _too_long(value)
    if value and not _HOST.fullmatch(value):
        raise ValueError(f"{quote(value)} is not a Host header value (host[:port])")
    return value


def _check_http_url(value: str) -> str:
    _too_long(value)
    if not _VISIBLE.fullmatch(value):
        raise ValueError(
            f"{quote(value)} is not an http(s) URL (printable ASCII without spaces: "
            "percent-encode the path, write the host in punycode)"
        )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # a bad port, or a bracketed host that is not an IPv6 address
        raise ValueError(f"{quote(value)} has an invalid host or port") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{quote(value)} is not an http(s) URL")
    if not parts.hostname:
        raise ValueError(f"{quote(value)} has no host")
    if port == 0:
        raise ValueError(f"{quote(value)} has an invalid port")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Method = Annotated[str, AfterValidator(_check_method)]
ProbePath = Annotated[str, AfterValidator(_check_probe_path)]
Regex = Annotated[str, AfterValidator(_check_regex)]
Headers = Annotated[dict[str, str], AfterValidator(_check_headers)]


class _Block(BaseModel):
    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, frozen=True, allow_inf_nan=False
    )


TLSVersion = Literal["1.2", "1.3"]
_SERVER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _tls_problem(check: Any, *args: str) -> None:
    """Run a check of failover.tls; its TLSFileError becomes the field's error."""
    from .tls import TLSFileError  # ssl loads only when TLS is configured

    try:
        check(*args)
    except TLSFileError as exc:
        raise ValueError(str(exc)) from None


class CertificateConfig(_Block):
    cert_file: str
    key_file: str

    @model_validator(mode="after")
    def _pair(self) -> CertificateConfig:
        from .tls import check_pair

        _tls_problem(check_pair, self.cert_file, self.key_file)
        return self


class ListenTLSConfig(_Block):
    """HTTPS on the listener: certificates chosen by SNI (the first is the default)."""

    certificates: list[CertificateConfig]
    min_version: TLSVersion = "1.2"
    alpn: list[str] = []

    @field_validator("certificates")
    @classmethod
    def _some(cls, value: list[CertificateConfig]) -> list[CertificateConfig]:
        if not value:
            raise ValueError("at least one certificate ({cert_file, key_file}) is required")
        return value

    @field_validator("alpn")
    @classmethod
    def _alpn(cls, value: list[str]) -> list[str]:
        for protocol in value:
            if protocol != "http/1.1":
                raise ValueError(
                    f"{quote(protocol)} is not supported: the listener speaks HTTP/1.1 only "
                    "(alpn: ['http/1.1'] or leave it out)"
                )
        return value


class OriginTLSConfig(_Block):
    """TLS to an origin (per origin, or per pool as the default of its https origins)."""

    server_name: str | None = None  # SNI and the name the certificate must carry
    verify: bool = True
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    min_version: TLSVersion = "1.2"

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _SERVER_NAME.fullmatch(value)):
            raise ValueError(f"{quote(value)} is not a host name")
        return value

    @model_validator(mode="after")
    def _files(self) -> OriginTLSConfig:
        from .tls import check_ca, check_pair

        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together: give both")
        if self.ca_file is not None:
            _tls_problem(check_ca, self.ca_file)
        if self.client_cert_file is not None and self.client_key_file is not None:
            _tls_problem(check_pair, self.client_cert_file, self.client_key_file)
        return self


class ListenConfig(_Block):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tls: ListenTLSConfig | None = None
    # A plain-HTTP port that answers every request with a redirect to HTTPS.
    redirect_http_port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _redirect(self) -> ListenConfig:
        if self.redirect_http_port is not None and self.tls is None:
            raise ValueError("redirect_http_port needs tls (it redirects to HTTPS)")
        if self.redirect_http_port is not None and self.redirect_http_port == self.port:
            raise ValueError(
                f"redirect_http_port {self.redirect_http_port} is the HTTPS port itself"
            )
        return self

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _LISTEN_HOST.fullmatch(value):
            raise ValueError(f"{quote(value)} is not a host name or IP address")
        return value


class HealthConfig(_Block):
    path: ProbePath = "/"
    method: Method = "GET"
    interval: Duration = 2.0
    unhealthy_interval: OptionalDuration = None
    timeout: Duration = 1.0
    healthy_threshold: int = Field(2, ge=1, le=1000)
    unhealthy_threshold: int = Field(2, ge=1, le=1000)
    expect_status: Statuses = StatusSet("200-399")
    expect_body: Regex | None = None
    headers: Headers = {}
    startup_grace: Duration = 5.0
    enabled: bool = True


class HealthOverride(_Block):
    """Per-origin health settings; unset keys fall back to the top-level `health` block.
    Each key is checked exactly as in the top-level block."""

    path: ProbePath | None = None
    method: Method | None = None
    interval: OptionalDuration = None
    unhealthy_interval: OptionalDuration = None
    timeout: OptionalDuration = None
    healthy_threshold: int | None = Field(None, ge=1, le=1000)
    unhealthy_threshold: int | None = Field(None, ge=1, le=1000)
    expect_status: Statuses | None = None
    expect_body: Regex | None = None
    headers: Headers | None = None
    enabled: bool | None = None


class OriginConfig(_Block):
    name: Name
    url: str
    priority: int = Field(0, ge=0, le=1000)
    weight: int = Field(1, ge=1, le=1000)
    host_header: str | None = None
    preserve_host: bool = False
    health: HealthOverride = HealthOverride()
    tls: OriginTLSConfig | None = None

    @model_validator(mode="after")
    def _tls(self) -> OriginConfig:
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError(f"tls: is set but the url {quote(self.url)} is not https")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        _check_http_url(value)
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            raise ValueError(f"{quote(value)} may not have a query or fragment")
        return value.rstrip("/")

    @field_validator("host_header")
    @classmethod
    def _host_header(cls, value: str | None) -> str | None:
        return None if value is None else _check_host_header(value)


class PassiveConfig(_Block):
    enabled: bool = True
    consecutive_failures: int = Field(3, ge=1, le=1000)
    error_rate: float = Field(0.5, gt=0, le=1)
    window: Duration = 10.0
    min_requests: int = Field(10, ge=1, le=1_000_000)
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


def _share(value: Any) -> Any:
    """A share of traffic: a number from 0 to 1, or a percentage such as `'10%'`."""
    number = value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            number = None
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float)
        or not 0 <= number <= 1  # NaN fails this too
    ):
        raise ValueError(f"{quote(value)} is not a share from 0 to 1 (e.g. 0.1 or '10%')")
    return float(number)


Share = Annotated[float, BeforeValidator(_share)]


class FailbackConfig(_Block):
    hold_down: ZeroDuration = 30.0
    flap_window: ZeroDuration = 60.0
    max_hold_down: Duration = 300.0
    # Gradual failback: a recovered better tier takes `ramp_start` of the traffic once its
    # hold-down has passed, rising linearly to all of it over `ramp` (0: all at once).
    ramp: ZeroDuration = 0.0
    ramp_start: Share = 0.1

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
    methods: list[Method] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
    max_buffered_body: int = Field(1_048_576, ge=0, le=1 << 30)
    idempotency_key: bool = False
    budget: float = Field(0.2, ge=0, le=1)
    min_retries_in_flight: int = Field(3, ge=0, le=1_000_000)
    hedge_after: OptionalDuration = None

    @field_validator("on", mode="before")
    @classmethod
    def _on(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                if not 100 <= item <= 599:
                    raise ValueError(f"{quote(item)} is not an HTTP status")
            elif item not in RETRY_CONDITIONS:
                raise ValueError(
                    f"{quote(item)} is not a retry condition (expected one of "
                    f"{', '.join(RETRY_CONDITIONS)} or an HTTP status)"
                )
        return value


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
    max_body_bytes: int | None = Field(None, ge=0, le=1 << 40)
    max_connections: int = Field(10_000, ge=1, le=1_000_000)


_EMPTY_TOKEN = (
    "empty; set a secret of at least 16 characters or leave it unset to turn admin mutations off"
)


class AdminConfig(_Block):
    prefix: str = "/_failover"
    token: str | None = None
    allow: list[str] = ["127.0.0.0/8", "::1/128"]
    trust_forwarded: list[str] = []
    state_file: str | None = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value):
            raise ValueError(f"{quote(value)} is not a path prefix such as '/_failover'")
        return value.rstrip("/")

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        # Never quote the token: error lines end up in logs.
        if value is None:
            return None
        if not value.strip():
            raise ValueError(_EMPTY_TOKEN)
        if not _VISIBLE.fullmatch(value):
            raise ValueError(
                "may only hold printable ASCII without spaces (clients send it in an "
                "Authorization header)"
            )
        return value

    @field_validator("allow", "trust_forwarded")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{quote(item)} is not an IP network (e.g. '10.0.0.0/8')"
                ) from None
        return value

    @field_validator("state_file")
    @classmethod
    def _state_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or "\x00" in value:
            raise ValueError(f"{quote(value)} is not a file path")
        try:
            mode = os.stat(value).st_mode
        except (OSError, ValueError):
            return value  # not there yet: the first override creates it
        kind = file_kind(mode)
        if kind is not None:
            raise ValueError(f"{quote(value)} is not a regular file ({kind})")
        return value


# The upstream HTTP client: failover.h1 (asyncio + httptools). The key stays so that configs
# that name it keep loading.
UpstreamClient = Literal["native"]


class ProxyConfig(_Block):
    origin_header: bool = True
    attempts_header: bool = True
    rewrite_location: bool = True
    via: str = "failover"
    max_connections_per_origin: int = Field(1000, ge=1, le=1_000_000)
    client: UpstreamClient = "native"

    @field_validator("via")
    @classmethod
    def _via(cls, value: str) -> str:
        _too_long(value)
        if not _VIA.fullmatch(value):
            raise ValueError(
                f"{quote(value)} is not a Via pseudonym (a token such as 'failover', "
                "or host[:port])"
            )
        return value


class StaleConfig(_Block):
    enabled: bool = False
    max_bytes: int = Field(64 * 1024 * 1024, ge=0, le=1 << 40)
    max_object_bytes: int = Field(1024 * 1024, ge=0, le=1 << 40)
    max_age: Duration = 3600.0


class WebSocketConfig(_Block):
    """WebSocket connections passed through (see README, WebSocket and streaming)."""

    idle_timeout: Duration = 600.0  # no frame either way for this long: closed with 1001
    max_message_bytes: int | None = Field(64 * 1024 * 1024, ge=1, le=1 << 40)  # 1009 past it
    drain_timeout: ZeroDuration = 30.0  # after an origin is drained: its sockets close (1012)


class MetricsConfig(_Block):
    enabled: bool = True


class LogConfig(_Block):
    access: bool = False


# The kinds of event a webhook may ask for (`events.webhooks[].events`).
EVENT_KINDS: tuple[str, ...] = (
    "origin-down",
    "origin-up",
    "ejected",
    "restored",
    "override",
    "traffic-moved",
    "config-reloaded",
    "dns-changed",
    "dns-stale",
    "dns-failed",
    "dns-nxdomain",
    "dns-recovered",
    "drill-started",
    "drill-passed",
    "drill-aborted",
    "drill-skipped",
    "ramp-start",
    "ramp-end",
    "diverged",
    "converged",
)
WebhookFormat = Literal["json", "slack", "pagerduty"]
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


class WebhookConfig(_Block):
    """One receiver: where, in which format, for which kinds of event (all when empty)."""

    url: str | None = None
    format: WebhookFormat = "json"
    events: list[str] = []
    routing_key: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        for kind in value:
            if kind not in EVENT_KINDS:
                raise ValueError(
                    f"{quote(kind)} is not a kind of event (expected some of "
                    f"{', '.join(EVENT_KINDS)})"
                )
        return value

    @field_validator("routing_key")
    @classmethod
    def _routing_key(cls, value: str | None) -> str | None:
        # Never quote the key: error lines end up in logs.
        if value is not None and not _VISIBLE.fullmatch(value):
            raise ValueError("may only hold printable ASCII without spaces")
        return value

    @model_validator(mode="after")
    def _complete(self) -> WebhookConfig:
        if self.format == "pagerduty":
            if self.routing_key is None:
                raise ValueError(
                    "format 'pagerduty' needs routing_key (the integration key of a "
                    "PagerDuty service)"
                )
            if self.url is None:
                object.__setattr__(self, "url", PAGERDUTY_URL)
        elif self.url is None:
            raise ValueError(f"format {quote(self.format)} needs url")
        return self


def _webhooks(value: Any) -> Any:
    """Plain URL strings keep working: each is `{url: ..., format: json}`."""
    if not isinstance(value, list):
        return value
    items: list[Any] = []
    for item in value:
        if isinstance(item, str):
            _check_http_url(item)
            item = {"url": item}
        items.append(item)
    return items


class EventsConfig(_Block):
    webhooks: Annotated[list[WebhookConfig], BeforeValidator(_webhooks)] = []
    history: int = Field(500, ge=1, le=1_000_000)
    webhook_timeout: Duration = 5.0
    webhook_queue: int = Field(1000, ge=1, le=1_000_000)


MAX_PAGE_BYTES = 256 * 1024  # pages.unavailable


def _check_page(value: str | None) -> str | None:
    """The maintenance page must exist, be a regular file, small, and UTF-8."""
    if value is None:
        return None
    if not value or "\x00" in value:
        raise ValueError(f"{quote(value, 300)} is not a file path")
    try:
        mode = os.stat(value).st_mode
    except OSError as exc:
        raise ValueError(f"{quote(value, 300)} cannot be read: {exc.strerror}") from None
    kind = file_kind(mode)
    if kind is not None:
        raise ValueError(f"{quote(value, 300)} is not a regular file ({kind})")
    try:
        with open(value, "rb") as file:
            data = file.read(MAX_PAGE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{quote(value, 300)} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_PAGE_BYTES:
        raise ValueError(f"{quote(value, 300)} is larger than {MAX_PAGE_BYTES} bytes")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{quote(value, 300)} is not UTF-8 text: {exc.reason}") from None
    return value


class PagesConfig(_Block):
    """`unavailable`: an HTML file served for the proxy's own 502, 503 and 504 answers."""

    unavailable: Annotated[str | None, AfterValidator(_check_page)] = None


class PublicConfig(_Block):
    """The public status feed: status.json and incidents.atom under `prefix`, for anyone."""

    enabled: bool = True
    prefix: str = "/_status"
    show_origins: bool = False
    title: str = "Service status"
    history: int = Field(100, ge=1, le=10_000)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value):
            raise ValueError(f"{quote(value)} is not a path prefix such as '/_status'")
        return value.rstrip("/")

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        if not value.strip() or len(value) > 200 or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"{quote(value)} is not a title (1-200 characters, one line)")
        return value


def parse_nameserver(value: str) -> tuple[str, int]:
    """A `dns.nameservers` entry ("IP", "IP:PORT", "[IPv6]:PORT") as (ip, port)."""
    text, port = value.strip(), 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{quote(value)} is not a nameserver (IP or IP:PORT)")
            port = int(rest[1:])
        text = host
    elif text.count(":") == 1:
        text, _, number = text.partition(":")
        if not number.isdigit():
            raise ValueError(f"{quote(value)} is not a nameserver (IP or IP:PORT)")
        port = int(number)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{quote(value)} is not a nameserver: expected an IP address or IP:PORT "
            "(a nameserver is given by address, not by name)"
        ) from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{quote(value)} has a port outside 1-65535")
    return str(address), port


class DnsConfig(_Block):
    """How the proxy resolves origin host names (see README, DNS)."""

    nameservers: list[str] = []  # empty: the system's (/etc/resolv.conf)
    min_ttl: Duration = 5.0
    max_ttl: Duration = 300.0
    stale_ttl: ZeroDuration = 3600.0
    timeout: Duration = 2.0  # one lookup (A and AAAA together), retries included

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_nameserver(item)
        return value

    @model_validator(mode="after")
    def _ttls(self) -> DnsConfig:
        if self.max_ttl < self.min_ttl:
            raise ValueError(
                f"max_ttl ({self.max_ttl:g} s) is shorter than min_ttl ({self.min_ttl:g} s)"
            )
        return self


class FleetConfig(_Block):
    redis_url: str
    key_prefix: str = "failover:"
    # Leases are set in whole milliseconds.
    lease: Annotated[float, BeforeValidator(parse_duration), Field(ge=0.001)] = 5.0
    publish_interval: Duration = 0.5

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ValueError(f"{quote(value)} is not a redis:// or rediss:// URL")
        from redis.connection import parse_url  # only when a fleet is configured

        try:
            parse_url(value)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{quote(value)} is not a redis:// or rediss:// URL: {exc}") from None
        return value


AllDown = Literal["try-all", "503", "stale", "page"]


_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")
_NOT_A_RATE = "is not a rate (a share from 0 to 1, or a percentage such as '1%')"


def parse_rate(value: Any) -> Any:
    """A share from 0 to 1, given as a number or as a percentage string such as `1%`."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} {_NOT_A_RATE}")
    if isinstance(value, str):
        text = value.strip()
        try:
            rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"{quote(value)} {_NOT_A_RATE}") from None
        if not 0 <= rate <= 1:  # also NaN
            raise ValueError(f"{quote(value)} {_NOT_A_RATE}")
        return rate
    return value


Rate = Annotated[float, BeforeValidator(parse_rate), Field(ge=0, le=1)]


def parse_window(value: str) -> tuple[int, int]:
    """`HH:MM-HH:MM` (UTC) as (start, end) minutes of the day; end before start crosses
    midnight."""
    match = _WINDOW.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{quote(value)} is not a time window (expected e.g. '02:00-04:00')")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"{quote(value)} is an empty time window (start and end are equal)")
    return start, end


def _check_window(value: str | None) -> str | None:
    if value is not None:
        parse_window(value)
    return value


class DrillsConfig(_Block):
    """Failover drills (see failover.drills): the schedule and the default thresholds."""

    every: OptionalDuration = None  # no schedule unless set
    window: Annotated[str | None, AfterValidator(_check_window)] = None  # UTC, e.g. 02:00-04:00
    duration: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=3600)] = 60.0
    max_error_rate: Rate = 0.01
    max_p95: Duration = 0.5
    min_requests: int = Field(20, ge=1, le=1_000_000)  # in the judged window, before judging
    max_untested: Duration = 30 * 86400.0


def _check_canary(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"{quote(value)} is not a path (expected one starting with '/')")
    return value


class ParityConfig(_Block):
    """Continuous parity (see failover.parity): each canary path is fetched from every origin
    and from `reference` every `interval`; an origin that answers otherwise is `diverged`."""

    canaries: list[Annotated[str, AfterValidator(_check_canary)]]
    reference: str
    interval: Duration = 30.0
    timeout: Duration = 5.0  # per fetch
    max_body: int = Field(8 * 1024 * 1024, ge=1, le=1 << 30)  # larger: "too large to compare"

    @field_validator("canaries")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one canary path is required")
        return value


Balance = Literal["weighted", "least-latency", "least-request"]


class LeastLatencyConfig(_Block):
    """`balance: least-latency`: how the time to first byte is averaged, and the share of a
    tier's traffic each origin keeps however slow it is (so its figure stays fresh)."""

    decay: Duration = 10.0  # the time constant of the moving average
    min_share: Annotated[float, BeforeValidator(_share), Field(le=0.5)] = 0.05


class AuditConfig(_Block):
    """`failover audit`: the paths fetched from every origin of a pool and compared (status,
    content type, length, SHA-256), and how long one fetch may take."""

    canaries: list[ProbePath] = []
    timeout: Duration = 10.0


class PoolProxyConfig(_Block):
    """The keys of the `proxy` block that a pool may set for itself."""

    origin_header: bool = True
    attempts_header: bool = True
    rewrite_location: bool = True


# Blocks of the top level that each pool inherits and may override key by key.
POOL_BLOCKS = (
    "health",
    "passive",
    "failback",
    "retry",
    "timeouts",
    "stale",
    "proxy",
    "drills",
    "least_latency",
    "tls",
    "audit",
)


class PoolConfig(_Block):
    """One pool: its origins and its policies, the top-level blocks with the pool's own keys
    laid over them (`Settings` does the laying over)."""

    origins: list[OriginConfig]
    health: HealthConfig = HealthConfig()
    passive: PassiveConfig = PassiveConfig()
    failback: FailbackConfig = FailbackConfig()
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    stale: StaleConfig = StaleConfig()
    proxy: PoolProxyConfig = PoolProxyConfig()
    drills: DrillsConfig = DrillsConfig()
    tls: OriginTLSConfig = OriginTLSConfig()
    all_down: AllDown = "try-all"
    balance: Balance = "weighted"
    least_latency: LeastLatencyConfig = LeastLatencyConfig()
    audit: AuditConfig = AuditConfig()
    parity: ParityConfig | None = None

    @model_validator(mode="after")
    def _stale(self) -> PoolConfig:
        if self.all_down == "stale" and not self.stale.enabled:
            raise ValueError("all_down: 'stale' needs stale.enabled: true")
        _check_reference(self.parity, self.origins)
        return self

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[OriginConfig]) -> list[OriginConfig]:
        if not value:
            raise ValueError("at least one origin is required")
        return value

    def health_for(self, origin: OriginConfig) -> HealthConfig:
        """The origin's effective health settings: its override over the pool's block."""
        override = origin.health.model_dump(exclude_none=True)
        return self.health.model_copy(update=override) if override else self.health

    def tls_for(self, origin: OriginConfig) -> OriginTLSConfig | None:
        """An https origin's TLS settings: its own `tls` keys over the pool's; None for http."""
        if not origin.url.startswith("https://"):
            return None
        if origin.tls is None:
            return self.tls
        own = origin.tls.model_dump(exclude_unset=True)
        return self.tls.model_copy(update=own) if own else self.tls


def _check_reference(parity: ParityConfig | None, origins: list[OriginConfig]) -> None:
    if parity is None:
        return
    names = [o.name for o in origins]
    if parity.reference not in names:
        raise ValueError(
            f"parity.reference: {quote(parity.reference)} is not an origin of the pool "
            f"(expected one of {', '.join(names)})"
        )
    if len(names) < 2:
        raise ValueError("parity: needs an origin besides the reference to compare with it")


class RouteConfig(_Block):
    """Requests whose Host and path match go to `pool` (see failover.router for the rules)."""

    pool: str
    host: str | None = None
    path: str | None = None
    strip_prefix: bool = False
    host_header: str | None = None


DEFAULT_POOL = "default"


class Settings(BaseSettings):
    """The whole configuration. Build it with `load_config`, never mutate it."""

    model_config = SettingsConfigDict(
        env_prefix="FAILOVER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
        allow_inf_nan=False,
    )

    listen: ListenConfig = ListenConfig()
    # Either `origins` (one pool, named "default", with a catch-all route) or `pools`.
    origins: list[OriginConfig] = []
    pools: dict[str, PoolConfig] = {}
    routes: list[RouteConfig] = []
    health: HealthConfig = HealthConfig()
    passive: PassiveConfig = PassiveConfig()
    failback: FailbackConfig = FailbackConfig()
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    limits: LimitsConfig = LimitsConfig()
    admin: AdminConfig = AdminConfig()
    proxy: ProxyConfig = ProxyConfig()
    stale: StaleConfig = StaleConfig()
    tls: OriginTLSConfig = OriginTLSConfig()  # the default of every pool's https origins
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    events: EventsConfig = EventsConfig()
    pages: PagesConfig = PagesConfig()
    public: PublicConfig = PublicConfig()
    drills: DrillsConfig = DrillsConfig()
    fleet: FleetConfig | None = None
    dns: DnsConfig = DnsConfig()
    all_down: AllDown = "try-all"
    websocket: WebSocketConfig = WebSocketConfig()
    balance: Balance = "weighted"
    least_latency: LeastLatencyConfig = LeastLatencyConfig()
    audit: AuditConfig = AuditConfig()
    parity: ParityConfig | None = None  # the single-pool form's; with pools, set per pool
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

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        """Each pool takes the top-level blocks and lays its own keys over them."""
        if not isinstance(data, dict) or not isinstance(data.get("pools"), dict):
            return data
        pools: dict[Any, Any] = {}
        for name, pool in data["pools"].items():
            if isinstance(pool, dict):
                pool = dict(pool)
                for block in POOL_BLOCKS:
                    top, own = data.get(block), pool.get(block, {})
                    if isinstance(top, BaseModel):
                        top = top.model_dump(exclude_unset=True)
                    if isinstance(top, dict) and isinstance(own, dict):
                        if block == "proxy":
                            top = {
                                k: v for k, v in top.items() if k in PoolProxyConfig.model_fields
                            }
                        pool[block] = {**top, **own}
                for key in ("all_down", "balance"):
                    if key in data:
                        pool.setdefault(key, data[key])
            pools[name] = pool
        return {**data, "pools": pools}

    @model_validator(mode="after")
    def _one_form(self) -> Settings:
        if self.all_down == "stale" and not self.stale.enabled:
            raise ValueError("all_down: 'stale' needs stale.enabled: true")
        if self.pages.unavailable is None:
            pages = [name for name, pool in self.pools.items() if pool.all_down == "page"]
            if self.all_down == "page" or pages:
                where = f" (pools {', '.join(pages)})" if pages else ""
                raise ValueError(f"all_down: 'page'{where} needs pages.unavailable (an HTML file)")
        if self.public.enabled:
            public, admin = self.public.prefix, self.admin.prefix
            for inner, outer, inner_key, outer_key in (
                (public, admin, "public.prefix", "admin.prefix"),
                (admin, public, "admin.prefix", "public.prefix"),
            ):
                if inner == outer or inner.startswith(outer + "/"):
                    raise ValueError(
                        f"public.prefix: {quote(public)} collides with admin.prefix "
                        f"{quote(admin)} ({inner_key} lies within {outer_key}); choose a "
                        "path outside it, such as '/_status'"
                    )
        single = "origins" in self.model_fields_set
        if single and self.pools:
            raise ValueError("origins: give origins (one pool) or pools (several), not both")
        if not single and not self.pools:
            raise ValueError("origins: is required (or pools, for several sites)")
        if self.parity is not None and not single:
            raise ValueError("parity: set it in each pool (pools.NAME.parity), not at the top")
        if single:
            if not self.origins:
                raise ValueError("origins: at least one origin is required")
            _check_reference(self.parity, self.origins)
            if self.routes:
                raise ValueError("routes: need pools (with origins alone, all goes to them)")
            # The single-pool form: one pool named "default" and a catch-all route.
            default = PoolConfig.model_construct(
                origins=self.origins,
                health=self.health,
                passive=self.passive,
                failback=self.failback,
                retry=self.retry,
                timeouts=self.timeouts,
                stale=self.stale,
                tls=self.tls,
                proxy=PoolProxyConfig(
                    origin_header=self.proxy.origin_header,
                    attempts_header=self.proxy.attempts_header,
                    rewrite_location=self.proxy.rewrite_location,
                ),
                drills=self.drills,
                all_down=self.all_down,
                balance=self.balance,
                least_latency=self.least_latency,
                audit=self.audit,
                parity=self.parity,
            )
            object.__setattr__(self, "pools", {DEFAULT_POOL: default})
            object.__setattr__(self, "routes", [RouteConfig(pool=DEFAULT_POOL)])
        elif not self.routes and len(self.pools) == 1:
            object.__setattr__(self, "routes", [RouteConfig(pool=next(iter(self.pools)))])
        return self

    def all_origins(self) -> list[tuple[str, OriginConfig]]:
        """Every origin of every pool, with its pool's name, in config order."""
        return [(name, o) for name, pool in self.pools.items() for o in pool.origins]

    def warnings(self) -> list[str]:
        """What is valid but unwise, one line each (`check` prints them, `run` logs them)."""
        lines: list[str] = []
        token = self.admin.token
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            lines.append(
                f"admin.token: {len(token)} characters is short for a secret; use at least "
                f"{MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 16`)"
            )
        return lines


def default_config_path() -> Path:
    """`$FAILOVER_CONFIG`, else `./failover.yaml`, else `config/failover.yaml`."""
    env = os.environ.get("FAILOVER_CONFIG")
    if env:
        return Path(env)
    for candidate in (Path("failover.yaml"), Path("config/failover.yaml")):
        if candidate.exists():
            return candidate
    return Path("failover.yaml")


def read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping (see configfile.py for the bounds); problems name the
    file, and the line and column where there is one."""
    try:
        data = load_yaml(path)
    except ConfigFileError as exc:
        raise ConfigError([str(exc)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of settings, got {type(data).__name__}"])
    pages = data.get("pages")
    if isinstance(pages, dict) and isinstance(pages.get("unavailable"), str):
        page = pages["unavailable"]
        if page and "\x00" not in page and not os.path.isabs(page):
            # A page named in the file is found next to the file, wherever the proxy runs.
            data = {**data, "pages": {**pages, "unavailable": str(path.parent / page)}}
    return data


# --- validating --------------------------------------------------------------------------------

_UNKNOWN_KEY = "unknown key (check its spelling against the config reference)"


def build_settings(data: dict[str, Any]) -> Settings:
    """Validate a mapping (plus the environment) into Settings, or raise ConfigError."""
    problems: list[str] = []
    keys: dict[str, Any] = {}
    for key, value in data.items():
        # Keys starting with '_' would reach pydantic-settings' own options (`_cli_parse_args`,
        # `_secrets_dir`, ...): they are unknown keys like any other.
        if isinstance(key, str) and not key.startswith("_"):
            keys[key] = value
        else:
            problems.append(f"{_key(key)}: {_UNKNOWN_KEY}")
    undescribed = 0
    try:
        settings = Settings(**keys)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # Describing costs more than validating: describe no more lines than are shown.
        problems += [_describe(error) for error in errors[:MAX_PROBLEMS]]
        undescribed = max(0, len(errors) - MAX_PROBLEMS)
        # The checks of the whole config run only once every part is valid; say what can
        # be said now as well, so that one round of fixes is enough.
        problems += _duplicate_names(data)
        problems += _raw_route_problems(data)
    except (SettingsError, RecursionError) as exc:
        # An environment variable for a list or mapping that does not parse as JSON.
        problems += _environment_problems() or [f"environment: {quote(str(exc), 200)}"]
    else:
        problems += _pool_problems(settings, data)
        if not problems:
            return settings
    raise ConfigError(_bounded(problems, undescribed))


def _pool_problems(settings: Settings, data: dict[str, Any]) -> list[str]:
    """What only the whole config shows: pool names, origin names across pools, routes."""
    from .router import check_routes, routes_from  # pure; imported here to keep config first

    problems: list[str] = []
    if "pools" in data:
        for name in settings.pools:
            if not _NAME.fullmatch(name) or len(name) > 60:
                problems.append(
                    f"pools: {quote(name)} is not a pool name (letters, digits, '-' and '_')"
                )
    owners: dict[str, str] = {}
    for pool, origin in settings.all_origins():
        if origin.name in owners:
            where = "origins" if "origins" in settings.model_fields_set else "pools"
            also = "" if where == "origins" else f" (pools {owners[origin.name]} and {pool})"
            problem = f"{where}: duplicate origin name {quote(origin.name)}{also}"
            if problem not in problems:
                problems.append(problem)
        else:
            owners[origin.name] = pool
    routes = routes_from(settings.routes)
    problems += check_routes(routes, settings.pools)
    if settings.public.enabled and "routes" in data:
        public = settings.public.prefix
        for i, route in enumerate(settings.routes):
            path = (route.path or "").rstrip("/")
            if path == public or path.startswith(public + "/"):
                problems.append(
                    f"routes[{i}].path: {quote(route.path)} lies within public.prefix "
                    f"{quote(public)}, which the proxy answers itself; move the feed "
                    "(public.prefix) or turn it off (public.enabled: false)"
                )
    return problems


def _bounded(problems: list[str], more: int) -> list[str]:
    """Each line once, at most MAX_PROBLEMS of them, then how many more there are."""
    unique = list(dict.fromkeys(problems))
    more += max(0, len(unique) - MAX_PROBLEMS)
    unique = unique[:MAX_PROBLEMS]
    return [*unique, f"... and {more} more problems"] if more else unique


def _environment_problems() -> list[str]:
    """Name each FAILOVER_ variable that pydantic-settings cannot decode, trying them one at a
    time (their exact rules for what must be JSON are pydantic-settings' own)."""
    source = EnvSettingsSource(Settings)
    originals = {name.lower(): name for name in os.environ}
    problems: list[str] = []
    for name, value in dict(source.env_vars).items():
        if not name.lower().startswith("failover_") or value is None:
            continue
        source.env_vars = {name: value}
        try:
            source()
        except (SettingsError, RecursionError, ValueError):
            shown = originals.get(name, name.upper())
            try:
                json.loads(value)
            except RecursionError:
                problems.append(f"{shown}: JSON nested too deeply")
                continue
            except ValueError:
                pass
            problems.append(
                f"{shown}: {quote(value)} is not JSON (a list or mapping is expected here)"
            )
    return problems


def _duplicate_names(data: dict[str, Any]) -> list[str]:
    """Origin names given twice, in the single-pool form or across pools."""
    lists: list[tuple[str, Any]] = [("-", data.get("origins"))]
    pools = data.get("pools")
    if isinstance(pools, dict):
        lists += [
            (str(name), pool.get("origins"))
            for name, pool in pools.items()
            if isinstance(pool, dict)
        ]
    owners: dict[str, list[str]] = {}
    for pool, origins in lists:
        if isinstance(origins, list):
            for o in origins:
                if isinstance(o, dict) and isinstance(o.get("name"), str):
                    owners.setdefault(o["name"], []).append(pool)
    problems = []
    for name, where in sorted(owners.items()):
        if len(where) > 1:
            if where[0] == "-":
                problems.append(f"origins: duplicate origin name {quote(name)}")
            else:
                pools_named = " and ".join(dict.fromkeys(where))
                problems.append(f"pools: duplicate origin name {quote(name)} (pools {pools_named})")
    return problems


def _raw_route_problems(data: dict[str, Any]) -> list[str]:
    """The route checks, on routes that are well-formed even though the config is not."""
    from .router import Route, check_routes

    routes, pools = data.get("routes"), data.get("pools")
    if not isinstance(routes, list) or not isinstance(pools, dict):
        return []
    fields = ("pool", "host", "path", "strip_prefix", "host_header")
    parsed: list[Route] = []
    for route in routes:
        if not (isinstance(route, dict) and isinstance(route.get("pool"), str)) or any(
            not isinstance(route.get(key), str | None) for key in ("host", "path", "host_header")
        ):
            return []  # pydantic names it; the indexes would no longer line up
        try:
            parsed.append(Route(**{k: v for k, v in route.items() if k in fields}))
        except TypeError:
            return []
    return check_routes(parsed, [str(name) for name in pools])


def load_config(path: str | Path) -> Settings:
    """Read, merge with the environment and validate; raise ConfigError listing every problem."""
    return build_settings(read_yaml(Path(path)))


def _key(part: Any) -> str:
    """A key as written in a problem line: bare if it looks like a key, else quoted."""
    if isinstance(part, str) and _NAME.fullmatch(part) and len(part) <= 60:
        return part
    return quote(part)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(("function-", "lax-", "json-")) or "[" in part:
            continue  # pydantic's internal validator names, not keys the user wrote
        elif _NAME.fullmatch(part) and len(part) <= 60:
            text += f".{part}" if text else part
        else:
            text += f"[{quote(part)}]"
    return text or "(top level)"


_SECRETS = ("admin.token",)


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
    elif loc not in _SECRETS:
        message = f"{message}, got {quote(error['input'])}"
    if loc == "(top level)" and _KEYED.match(message):
        return message  # a check of the whole config that names its key itself
    return f"{loc}: {' '.join(message.splitlines())}"


_KEYED = re.compile(r"(?:origins|pools|routes|all_down|public\.prefix): ")
