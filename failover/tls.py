"""TLS at both ends: the listener's certificates (chosen by SNI, reloaded from disk) and the
origins' TLS identity (server name, verification, private CA, client certificate, session
resumption, certificate expiry).

Listener: `ListenerCerts` holds one server context per certificate. The context uvicorn
listens with (`ListenerCerts.context`) picks, in its SNI callback, the context of the name the
client asked for (the first certificate when no name matches). A renewed certificate on disk
replaces the per-name contexts in one assignment: handshakes from then on get the new
certificate, connections already open keep theirs.

Origins: `OriginTLS` is an origin's client context and server name. Its context hands each
new connection the last session of the same origin (`session=` of `SSLContext.wrap_bio`,
which asyncio's and uvloop's SSL transports call), so new connections resume instead of doing
a full handshake. `describe` names a failed handshake in one short sentence.

Certificates are read with `certificate_info`, a small DER reader of the two fields the proxy
needs (the expiry and the DNS names): it works with `verify: false` too, where
`getpeercert()` returns nothing.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXPIRY_WARNING",
    "CertificateInfo",
    "ListenerCerts",
    "OriginTLS",
    "RedirectServer",
    "TLSFileError",
    "TLSSettings",
    "certificate_file_info",
    "certificate_info",
    "check_ca",
    "check_pair",
    "describe",
    "expiry_warnings",
    "load_ca",
    "load_chain",
    "load_server_context",
]

logger = logging.getLogger("failover.tls")

EXPIRY_WARNING = 14 * 86400.0  # a certificate expiring sooner than this is reported
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSFileError(Exception):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


# -- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateInfo:
    not_after: float  # seconds since the epoch
    names: tuple[str, ...]  # DNS names of subjectAltName, else the subject's common name


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """The DER element at `at`: (tag, start of its content, end of its content)."""
    tag = data[at]
    length = data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    end = at + length
    if end > len(data):
        raise ValueError("truncated DER element")
    return tag, at, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _tlv(data, start)
        items.append(item)
        start = item[2]
    return items


def _time(data: bytes, tag: int, start: int, end: int) -> float:
    text = data[start:end].decode("ascii").rstrip("Z")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSS
        year = int(text[:2])
        text = f"{year + (1900 if year >= 50 else 2000)}{text[2:]}"
    fields = [int(text[i : i + n]) for i, n in ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2))]
    return float(calendar.timegm((*fields, 0, 0, 0)))


_SAN = bytes.fromhex("551d11")  # 2.5.29.17
_CN = bytes.fromhex("550403")  # 2.5.4.3


def certificate_info(der: bytes) -> CertificateInfo:
    """The expiry and DNS names of a DER certificate (ValueError if it is not one)."""
    try:
        _, start, end = _tlv(der, 0)
        _, start, end = _children(der, start, end)[0]  # tbsCertificate
        fields = _children(der, start, end)
        if fields[0][0] == 0xA0:  # version
            fields = fields[1:]
        validity, subject = fields[3], fields[4]
        tag, vstart, vend = _children(der, validity[1], validity[2])[1]
        not_after = _time(der, tag, vstart, vend)
        names: list[str] = []
        for tag, xstart, _xend in fields[6:]:
            if tag != 0xA3:  # extensions
                continue
            _, sstart, send = _tlv(der, xstart)
            for _, estart, eend in _children(der, sstart, send):
                parts = _children(der, estart, eend)
                if der[parts[0][1] : parts[0][2]] != _SAN:
                    continue
                _, ostart, _oend = parts[-1]
                _, gstart, gend = _tlv(der, ostart)
                for gtag, nstart, nend in _children(der, gstart, gend):
                    if gtag == 0x82:  # dNSName
                        names.append(der[nstart:nend].decode("ascii").lower())
        if not names:
            for _, rstart, rend in _children(der, subject[1], subject[2]):
                for _, astart, aend in _children(der, rstart, rend):
                    oid, value = _children(der, astart, aend)[:2]
                    if der[oid[1] : oid[2]] == _CN:
                        names.append(der[value[1] : value[2]].decode("utf-8").lower())
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a DER certificate: {exc}") from None
    return CertificateInfo(not_after, tuple(names))


def certificate_file_info(cert_file: str) -> CertificateInfo:
    """The first certificate of a PEM file."""
    text = Path(cert_file).read_text("ascii", errors="replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise TLSFileError(f"{cert_file!r} holds no PEM certificate")
    pem = text[text.index(begin) : text.index(end) + len(end)]
    try:
        return certificate_info(ssl.PEM_cert_to_DER_cert(pem))
    except ValueError as exc:
        raise TLSFileError(f"{cert_file!r} holds no valid certificate ({exc})") from None


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise TLSFileError(f"{what} {path!r} cannot be read: {reason}") from None


def load_chain(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load a certificate and its key into `context`, or raise TLSFileError naming the problem
    (a missing file, a file that is not PEM, a key that does not belong to the certificate)."""
    _readable(cert_file, "certificate file")
    _readable(key_file, "key file")
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        reason = f"{exc.reason or exc}".lower().replace("_", " ")
        if "key values mismatch" in reason or "key_values_mismatch" in str(exc).lower():
            raise TLSFileError(
                f"key file {key_file!r} does not match certificate {cert_file!r}"
            ) from None
        raise TLSFileError(
            f"cannot load certificate {cert_file!r} with key {key_file!r}: {reason}"
        ) from None


def load_ca(context: ssl.SSLContext, ca_file: str) -> None:
    _readable(ca_file, "CA file")
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError:
        raise TLSFileError(f"CA file {ca_file!r} holds no valid PEM certificate") from None


def check_pair(cert_file: str, key_file: str) -> None:
    """Raise TLSFileError unless the certificate and key load and match (for config checks)."""
    load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert_file, key_file)
    certificate_file_info(cert_file)


def check_ca(ca_file: str) -> None:
    load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca_file)


def expiry_warnings(files: Iterable[tuple[str, str]], now: float) -> list[str]:
    """One line per certificate file (where, path) that expires within EXPIRY_WARNING."""
    lines = []
    for where, path in files:
        try:
            info = certificate_file_info(path)
        except (OSError, TLSFileError):
            continue  # the config check reports unreadable files
        left = info.not_after - now
        if left < EXPIRY_WARNING:
            lines.append(f"{where}: certificate {path!r} {_expiry_text(left)}")
    return lines


def _expiry_text(left: float) -> str:
    if left <= 0:
        return f"expired {_days(-left)} ago"
    return f"expires in {_days(left)}"


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.1f} days" if days < 10 else f"{days:.0f} days"


# -- the listener ---------------------------------------------------------------------------


def load_server_context(
    cert_file: str, key_file: str, min_version: str, alpn: list[str]
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    if alpn:
        context.set_alpn_protocols(alpn)
    load_chain(context, cert_file, key_file)
    return context


class ListenerCerts:
    """The listener's certificates, chosen by SNI, reloaded when their files change.

    `certificates` is a list of (cert_file, key_file); the first is the default."""

    def __init__(
        self,
        certificates: list[tuple[str, str]],
        min_version: str = "1.2",
        alpn: Iterable[str] = (),
    ) -> None:
        self.certificates = list(certificates)
        self.min_version = min_version
        self.alpn = list(alpn)
        self._bytes = self._read()
        self._default, self._by_name, self.infos = self._build()
        # The context the listening socket uses: its SNI callback hands each handshake the
        # context of the name asked for; it carries the default certificate itself too.
        cert_file, key_file = self.certificates[0]
        self.context = load_server_context(cert_file, key_file, min_version, self.alpn)
        self.context.sni_callback = self._pick
        self.stop = asyncio.Event()

    def _read(self) -> list[bytes | None]:
        contents: list[bytes | None] = []
        for cert_file, key_file in self.certificates:
            for path in (cert_file, key_file):
                try:
                    contents.append(Path(path).read_bytes())
                except OSError:
                    contents.append(None)
        return contents

    def _build(
        self,
    ) -> tuple[ssl.SSLContext, dict[str, ssl.SSLContext], list[CertificateInfo]]:
        contexts: list[ssl.SSLContext] = []
        by_name: dict[str, ssl.SSLContext] = {}
        infos: list[CertificateInfo] = []
        for cert_file, key_file in self.certificates:
            context = load_server_context(cert_file, key_file, self.min_version, self.alpn)
            info = certificate_file_info(cert_file)
            contexts.append(context)
            infos.append(info)
            for name in info.names:
                by_name.setdefault(name, context)
        return contexts[0], by_name, infos

    def _pick(self, sslobj: Any, name: str | None, context: ssl.SSLContext) -> None:
        chosen = self._default
        if name:
            name = name.lower()
            found = self._by_name.get(name)
            if found is None and "." in name:
                found = self._by_name.get("*." + name.split(".", 1)[1])
            if found is not None:
                chosen = found
        sslobj.context = chosen

    def status(self, now: float) -> list[dict[str, Any]]:
        return [
            {
                "cert_file": cert_file,
                "names": list(info.names),
                "expires_at": info.not_after,
                "expires_in_days": round((info.not_after - now) / 86400, 2),
            }
            for (cert_file, _), info in zip(self.certificates, self.infos, strict=True)
        ]

    @property
    def files(self) -> list[str]:
        return [path for pair in self.certificates for path in pair]

    def reload(self) -> bool:
        """Re-read the files if their bytes changed; raise TLSFileError (keeping the
        certificates in use) if the new ones cannot be used. Returns whether they changed."""
        contents = self._read()
        if contents == self._bytes:
            return False
        self._bytes = contents
        default, by_name, infos = self._build()
        self._default, self._by_name, self.infos = default, by_name, infos
        return True

    async def watch(
        self, on_reloaded: Callable[[], None], on_failed: Callable[[str], None]
    ) -> None:
        """Watch the certificate files' folders until `stop` is set."""
        from watchfiles import Change, awatch

        folders = {Path(p).parent.resolve() for p in self.files}
        folders = {folder for folder in folders if folder.is_dir()}
        if not folders:
            return
        names = {Path(p).name for p in self.files} | {"..data"}

        def ours(change: Change, path: str) -> bool:
            return Path(path).name in names

        async for _ in awatch(
            *folders,
            watch_filter=ours,
            debounce=100,
            step=20,
            stop_event=self.stop,
            recursive=False,
        ):
            self.check(on_reloaded, on_failed)

    def check(self, on_reloaded: Callable[[], None], on_failed: Callable[[str], None]) -> None:
        try:
            if self.reload():
                on_reloaded()
        except (TLSFileError, OSError) as exc:
            on_failed(str(exc))
        except Exception as exc:  # never let the watcher die silently
            logger.exception("Reloading the listener's certificates failed.")
            on_failed(f"{type(exc).__name__}: {exc}")


# -- origins --------------------------------------------------------------------------------


class _ResumingContext(ssl.SSLContext):
    """A client context that offers each new connection the last session of its origin."""

    _last: ssl.SSLObject | None = None
    _session: ssl.SSLSession | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        last = self._last
        if last is not None:
            # Read now rather than at the handshake: TLS 1.3 tickets come after it.
            with contextlib.suppress(ValueError, AttributeError):
                found = last.session
                if found is not None:
                    self._session = found
        sslobj = super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session or self._session,
        )
        self._last = sslobj
        return sslobj

    def connected(self, sslobj: ssl.SSLObject) -> None:
        """A handshake succeeded: its session is the one to offer next (not one made with
        a context this one replaced: OpenSSL refuses a session of another context)."""
        if sslobj.context is self:
            self._last = sslobj


@dataclass(frozen=True)
class TLSSettings:
    """What `OriginTLS` needs of an origin's `tls:` block (config.OriginTLSConfig has the
    same fields; this stands in for it where no config is at hand)."""

    server_name: str | None = None
    verify: bool = True
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    min_version: str = "1.2"


def _client_context(settings: Any) -> _ResumingContext:
    """A client context for an origin's `tls:` settings (TLSFileError if a file is unusable)."""
    context = _ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = VERSIONS[settings.min_version]
    if settings.verify:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        if settings.ca_file:
            load_ca(context, settings.ca_file)
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.client_cert_file and settings.client_key_file:
        load_chain(context, settings.client_cert_file, settings.client_key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


_Stamp = tuple[int, int, int] | None  # a file's (mtime_ns, size, inode); None if unreadable


def _stamp(path: str) -> _Stamp:
    try:
        found = os.stat(path)  # follows links: a Kubernetes secret swaps its `..data` link
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size, found.st_ino


class OriginTLS:
    """An origin's TLS identity: its context, the name it is asked for, its certificate.

    `refresh` (called about once a second) rebuilds the context when the CA, client
    certificate or key files changed on disk and have stayed unchanged for one look since (a
    renewal tool that writes the certificate and then the key is not caught in between).
    New connections use the new context; open ones keep theirs."""

    def __init__(self, settings: Any, host: str) -> None:
        self.settings = settings
        self.server_name: str = settings.server_name or host
        self.verify: bool = settings.verify
        ca_file = settings.ca_file if settings.verify else None
        self.files = tuple(
            f for f in (ca_file, settings.client_cert_file, settings.client_key_file) if f
        )
        self._stamps = tuple(_stamp(f) for f in self.files)
        self._pending: tuple[_Stamp, ...] | None = None
        self.context: ssl.SSLContext = _client_context(settings)
        self.certificate: CertificateInfo | None = None
        self.on_certificate: Callable[[CertificateInfo], None] | None = None

    def refresh(self) -> bool:
        """Reload the files if they changed and have settled: True if the context is new.
        Raises TLSFileError if the changed files cannot be used (the old context stays, and
        the same files are not tried again until they change once more)."""
        if not self.files:
            return False
        stamps = tuple(_stamp(f) for f in self.files)
        if stamps == self._stamps:
            self._pending = None
            return False
        if stamps != self._pending:
            self._pending = stamps  # changed since the last look: wait until it settles
            return False
        self._stamps, self._pending = stamps, None
        self.context = _client_context(self.settings)
        return True

    def status(self, now: float) -> dict[str, Any]:
        """For the status page: the name asked for, verification, the certificate's expiry
        (None until a handshake has shown it)."""
        info = self.certificate
        return {
            "server_name": self.server_name,
            "verify": self.verify,
            "cert_expires_at": info.not_after if info else None,
            "cert_expires_in_days": round((info.not_after - now) / 86400, 2) if info else None,
            "cert_names": list(info.names) if info else None,
        }

    def connected(self, sslobj: Any) -> None:
        """A new connection's handshake succeeded (called once per connection)."""
        if sslobj is None:
            return
        assert isinstance(self.context, _ResumingContext)
        self.context.connected(sslobj)
        if sslobj.session_reused and self.certificate is not None:
            return
        der = sslobj.getpeercert(binary_form=True)
        if not der:
            return
        try:
            info = certificate_info(der)
        except ValueError:
            return
        if info != self.certificate:
            self.certificate = info
            if self.on_certificate is not None:
                self.on_certificate(info)


_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_CERT_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED
_CERT_NOT_YET_VALID = 9


_NOT_VALID_FOR = re.compile(r"not valid for '([^']*)'")


def describe(exc: ssl.SSLError) -> str:
    """A failed handshake in a few words: `certificate verify failed: hostname mismatch for
    'x'`, `certificate expired`, `TLS handshake failed: ...`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _HOSTNAME_MISMATCH:
            found = _NOT_VALID_FOR.search(str(exc.verify_message))
            name = found.group(1) if found else "the server name"
            return f"certificate verify failed: hostname mismatch for {name!r}"
        if code == _CERT_EXPIRED:
            return "certificate expired"
        if code == _CERT_NOT_YET_VALID:
            return "certificate not yet valid"
        message = str(exc.verify_message or exc.reason or exc).rstrip(".")
        return f"certificate verify failed: {message}"
    reason = exc.reason or ""
    if reason:
        return f"TLS handshake failed: {reason.lower().replace('_', ' ')}"
    return f"TLS handshake failed: {exc}"


# -- plain HTTP to HTTPS --------------------------------------------------------------------

_MAX_REDIRECT_HEAD = 8192


class RedirectServer:
    """A plain-HTTP listener that answers every request with a 308 to the same URL on the
    HTTPS port (`listen.redirect_http_port`). Bounded: an 8 KiB head read within 10 s."""

    def __init__(self, host: str, port: int, https_port: int, head_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.https_port = https_port
        self.head_timeout = head_timeout
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_MAX_REDIRECT_HEAD, reuse_port=True
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def location(self, host: str, target: str) -> str:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not name or not re.fullmatch(r"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]", name):
            name = self.host
        port = "" if self.https_port == 443 else f":{self.https_port}"
        if not target.startswith("/"):
            target = "/"
        return f"https://{name}{port}{target}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.head_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            target = parts[1] if len(parts) == 3 else "/"
            host = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "host":
                    host = value.strip()
            location = self.location(host, target)
            if any(c in location for c in "\r\n"):
                location = self.location("", "/")
            writer.write(
                b"HTTP/1.1 308 Permanent Redirect\r\nLocation: "
                + location.encode("latin-1")
                + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
