"""The lean upstream client: keep-alive reuse, stale connections, framing, cookies, failures."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from yarl import URL

from adapters._http import ssl_context, tls_verify
from adapters._wire import ConnectFailed, ResponseBroken, WirePool

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

Answer = Callable[[int, bytes], bytes]  # (request number, request head) -> raw response bytes


@dataclass
class RawServer:
    """A bare HTTP/1.1 server on 127.0.0.1 answering with canned bytes."""

    answer: Answer
    close_after_each: bool = False
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.heads.append(head)
                writer.write(self.answer(len(self.heads), head))
                await writer.drain()
                if self.close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@asynccontextmanager
async def serving(
    server: RawServer,
    *,
    server_tls: ssl.SSLContext | None = None,
    client_tls: ssl.SSLContext | None = None,
) -> AsyncIterator[WirePool]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_tls)
    server.port = listener.sockets[0].getsockname()[1]
    pool = pool_for(server.port, client_tls)
    try:
        yield pool
    finally:
        await pool.aclose()
        listener.close()


def pool_for(port: int, tls: ssl.SSLContext | None = None) -> WirePool:
    scheme = "https" if tls is not None else "http"
    return WirePool(
        URL(f"{scheme}://127.0.0.1:{port}"),
        ssl_context=tls,
        limit=8,
        connect_timeout=2.0,
        keepalive_s=30.0,
        headers={"authorization": "Bearer k"},
    )


def fixed(body: bytes, extra: bytes = b"") -> Answer:
    return lambda _, __: (
        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    )


async def post(pool: WirePool) -> tuple[int, bytes]:
    response = await pool.post("/v1/x", b'{"a": 1}', {"content-type": "application/json"})
    body = await response.read()
    response.release()
    return response.status, body


async def test_connections_are_kept_alive_and_reused() -> None:
    server = RawServer(fixed(b"hello"))
    async with serving(server) as pool:
        assert await post(pool) == (200, b"hello")
        assert await post(pool) == (200, b"hello")
    assert server.connections == 1
    assert server.heads[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"authorization: Bearer k" in server.heads[0]
    assert b"content-length: 8" in server.heads[0]


async def test_a_connection_the_upstream_closed_while_idle_is_replaced() -> None:
    server = RawServer(fixed(b"ok"), close_after_each=True)
    async with serving(server) as pool:
        assert await post(pool) == (200, b"ok")
        await asyncio.sleep(0.05)  # the server has closed it by now
        assert await post(pool) == (200, b"ok")
    assert server.connections == 2


async def test_chunked_bodies_arrive_piece_by_piece() -> None:
    def chunked(_: int, __: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"6\r\ndata: \r\n3\r\nhi\n\r\n0\r\n\r\n"
        )

    async with serving(RawServer(chunked)) as pool:
        response = await pool.post("/s", b"{}", {})
        assert response.headers["transfer-encoding"] == "chunked"
        assert await response.content.readany() + await response.read() == b"data: hi\n"
        assert response.content.at_eof()
        response.release()


async def test_a_body_ended_by_closing_the_connection_is_complete() -> None:
    server = RawServer(lambda _, __: b"HTTP/1.0 200 OK\r\n\r\nall of it", close_after_each=True)
    async with serving(server) as pool:
        assert await post(pool) == (200, b"all of it")


async def test_cookies_the_upstream_sets_are_sent_back() -> None:
    server = RawServer(fixed(b"x", b"set-cookie: lb=node-7; Path=/\r\n"))
    async with serving(server) as pool:
        await post(pool)
        await post(pool)
    assert b"cookie" not in server.heads[0].lower()
    assert b"cookie: lb=node-7" in server.heads[1]


async def test_refused_and_unreadable_answers_fail_clearly() -> None:
    server = RawServer(lambda _, __: b"NOT HTTP AT ALL\r\n\r\n")
    async with serving(server) as pool:
        with pytest.raises(ResponseBroken):
            await post(pool)
    with pytest.raises(ConnectFailed):
        await post(pool_for(server.port))  # nothing listens there any more


async def test_a_body_left_unread_closes_the_connection() -> None:
    server = RawServer(fixed(b"0123456789"))
    async with serving(server) as pool:
        response = await pool.post("/x", b"{}", {})
        response.close()  # as when the client went away mid-stream
        assert await post(pool) == (200, b"0123456789")
    assert server.connections == 2


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_is_verified_against_the_configured_ca(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusted = ssl_context(tls_verify(str(cert), insecure=False))
    server = RawServer(fixed(b"secret"))
    async with serving(server, server_tls=server_tls, client_tls=trusted) as pool:
        assert await post(pool) == (200, b"secret")
        system_roots = ssl_context(tls_verify(None, insecure=False))
        with pytest.raises(ConnectFailed):  # they do not know this certificate
            await post(pool_for(server.port, system_roots))
        unchecked = ssl_context(tls_verify(None, insecure=True))
        assert await post(pool_for(server.port, unchecked)) == (200, b"secret")
