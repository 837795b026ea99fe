"""Real TLS for the tests: a test CA (trustme), certificates written to files, and an HTTPS
origin on loopback that answers each request with what it saw of the TLS connection (the
server name asked for, whether the session was resumed, the client certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

from failover.tls import ListenerCerts

UTC = datetime.UTC


def days(n: float) -> datetime.datetime:
    return datetime.datetime.now(UTC) + datetime.timedelta(days=n)


def overwrite(path: str, text: str) -> None:
    Path(path).write_text(text)


@dataclass
class CertFiles:
    name: str
    cert_file: str
    key_file: str
    cert: trustme.LeafCert

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


class TestCA:
    """A certificate authority of the test; `ca_file` is what clients trust."""

    __test__ = False

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        self.ca_file = str(folder / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def issue(
        self,
        name: str,
        *,
        file_name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        common_name: str | None = None,
    ) -> CertFiles:
        """A leaf certificate for `name`, written to <file_name>.crt and .key."""
        cert = self.ca.issue_cert(
            name,
            common_name=common_name or name,
            not_before=not_before or days(-1),
            not_after=not_after or days(90),
        )
        base = self.folder / (file_name or name)
        cert_file, key_file = f"{base}.crt", f"{base}.key"
        scratch = Path(f"{base}.tmp")
        # Each file replaced at once, as certificate renewal tools do.
        for blob, path in ((cert.private_key_pem, key_file), (cert.cert_chain_pems[0], cert_file)):
            blob.write_to_path(str(scratch))
            scratch.replace(path)
        return CertFiles(name, cert_file, key_file, cert)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        return context


@dataclass
class TLSOrigin:
    """An HTTPS origin on 127.0.0.1: every request gets 200 and a JSON body with the server
    name the client asked for, `session_reused`, the client certificate's subject and the
    connection's number. `close` answers with Connection: close (a new connection each time)."""

    certs: list[CertFiles]
    require_client_cert_from: str | None = None  # a CA file
    close: bool = False
    port: int = 0
    connections: int = 0
    names: list[str | None] = field(default_factory=list)
    reused: list[bool] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.require_client_cert_from is not None:
            context = self.certs[0].server_context()
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.require_client_cert_from)
            pick: Any = None
        else:  # several names on one port: the listener's own SNI selection
            store = ListenerCerts([(c.cert_file, c.key_file) for c in self.certs])
            context = store.context
            pick = context.sni_callback
        asked: dict[int, str | None] = {}

        def remember(sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> Any:
            asked[id(sslobj)] = name
            return pick(sslobj, name, ctx) if pick is not None else None

        context.sni_callback = remember
        self._asked = asked
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        number = self.connections
        sslobj = writer.get_extra_info("ssl_object")
        name = self._asked.get(id(sslobj))
        self.names.append(name)
        self.reused.append(bool(sslobj.session_reused))
        peer = sslobj.getpeercert() or {}
        subject = dict(item for rdn in peer.get("subject", ()) for item in rdn)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                body = json.dumps(
                    {
                        "sni": name,
                        "reused": sslobj.session_reused,
                        "connection": number,
                        "client": subject.get("commonName"),
                    }
                ).encode()
                extra = b"Connection: close\r\n" if self.close else b""
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + extra
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, OSError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
