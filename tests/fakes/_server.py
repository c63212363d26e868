"""What every fake upstream shares: scripts, cross-thread signals, and a uvicorn thread.

A fake runs its own event loop in a background thread, so the same object serves an
async test (``async with FakeVLLM() as fake``), a sync test, or a gateway running under
uvicorn in another thread. Everything a test touches while it runs (``Signal``, the
recorded requests) is safe to use from any thread and any event loop.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import anyio.to_thread
import orjson
import uvicorn

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
DEFAULT_TOKENS = ("Hello", ",", " world", "!", " How", " are", " you", "?")


class Signal:
    """A one-shot flag: set from any thread, awaited from any event loop, no polling."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def set(self) -> None:
        with self._lock:
            self._flag.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    def is_set(self) -> bool:
        return self._flag.is_set()

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._flag.is_set():
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        await future

    def wait_sync(self, timeout: float) -> bool:
        return self._flag.wait(timeout)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


FailureKind = Literal["status", "error_event", "drop", "malformed", "hang"]


@dataclass
class Failure:
    """An injected upstream failure.

    ``status``: answer ``status`` (with ``headers``, and ``body`` or the protocol's own error
    body) before any token. The others happen after ``after`` tokens: ``error_event`` sends
    the protocol's in-stream error, ``drop`` cuts the connection mid-body, ``malformed``
    sends an unreadable body or event, ``hang`` stalls until the client goes away.
    """

    kind: FailureKind
    status: int = 500
    after: int = 0
    message: str = "injected failure"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    error_type: str | None = None  # protocol-specific class (TGI's `error_type`, gRPC code)


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any  # parsed JSON, or the protobuf message for JetStream, or raw bytes

    @property
    def json(self) -> Any:
        return self.body


@dataclass
class Plan:
    """What a generation will emit: token texts, their ids, and why it ends."""

    texts: list[str]
    ids: list[int]
    reason: Literal["length", "eos", "stop"]
    stop_hit: str | None = None


def prompt_pieces(prompt: str) -> list[str]:
    """The fakes' tokenizer: whitespace-led words, which join back into the prompt."""
    return re.findall(r"\s*\S+", prompt)


class FakeUpstream:
    """Base of the fakes: the script, what was received, and the lifecycle."""

    def __init__(
        self,
        tokens: Sequence[str] = DEFAULT_TOKENS,
        *,
        failure: Failure | None = None,
        api_key: str | None = None,
    ) -> None:
        self.tokens = list(tokens)
        self.failure = failure
        self.api_key = api_key
        self.gates: dict[int, Signal] = {}
        self.requests: list[Recorded] = []
        self.received = Signal()  # a generation request arrived
        self.cancelled = Signal()  # the client went away before the answer ended
        self.completed = Signal()  # a generation answer was sent to its end
        self.healthy = True
        self.host = "127.0.0.1"
        self.port = 0

    # -- scripting ---------------------------------------------------------------------
    def gate(self, index: int) -> Signal:
        """Hold token ``index`` (0-based) back until the returned signal is set."""
        return self.gates.setdefault(index, Signal())

    def plan(
        self,
        max_tokens: int,
        stop: Sequence[str] = (),
        *,
        keep_stop: bool = False,
        text: str | None = None,
    ) -> Plan:
        """Cut the canned tokens (or ``text``, in pieces of ``prompt_pieces``) at
        ``max_tokens`` or the first stop string.

        The token that completes a stop string counts as generated; its text is cut before
        the stop string, or after it when the protocol keeps it (``keep_stop``).
        """
        texts: list[str] = []
        ids: list[int] = []
        so_far = ""
        tokens = self.tokens if text is None else prompt_pieces(text)
        for index, text in enumerate(tokens):
            if len(texts) >= max_tokens:
                return Plan(texts, ids, "length")
            ids.append(100 + index)
            for candidate in stop:
                at = (so_far + text).find(candidate, max(0, len(so_far) - len(candidate) + 1))
                if candidate and at >= 0:
                    end = at + (len(candidate) if keep_stop else 0)
                    texts.append((so_far + text)[len(so_far) : end] if end > len(so_far) else "")
                    return Plan(texts, ids, "stop", candidate)
            texts.append(text)
            so_far += text
        return Plan(texts, ids, "length" if len(texts) >= max_tokens else "eos")

    async def pace(self, index: int) -> None:
        """Wait for the test to release token ``index`` when it holds a gate on it."""
        gate = self.gates.get(index)
        if gate is not None:
            await gate.wait()

    def failure_at(self, index: int) -> Failure | None:
        """The in-stream failure due before token ``index``, if any."""
        failure = self.failure
        if failure is not None and failure.kind != "status" and failure.after == index:
            return failure
        return None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> FakeUpstream:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Any:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)


class _ReadyServer(uvicorn.Server):
    """A uvicorn server that says when it is listening, and which loop it runs on."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class FakeHTTPUpstream(FakeUpstream):
    """A fake HTTP upstream: a bare ASGI app under uvicorn on a free 127.0.0.1 port."""

    _server: _ReadyServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            lifespan="off",
            log_level="error",
            access_log=False,
            loop="asyncio",
            http="h11",
            timeout_graceful_shutdown=1,
        )
        server = _ReadyServer(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-{self.port}", daemon=True
        )
        thread.start()
        if not server.ready.wait(10):
            raise RuntimeError("fake server did not start")
        self._server, self._thread = server, thread

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._server.force_exit = True  # streams held open by a test must not delay the exit
        self._thread.join(10)
        self._server = self._thread = None

    async def _asgi(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = bytearray()
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = bytes(raw)
        request = Recorded(scope["method"], scope["path"], headers, body)
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            await send_json(send, 401, {"error": "missing or wrong bearer token"})
            return
        generation = scope["method"] == "POST"
        if generation:
            self.requests.append(request)
            self.received.set()
        work = asyncio.ensure_future(self.handle(request, send))
        watch = asyncio.ensure_future(_disconnect(receive))
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            watch.cancel()
            work.result()  # an injected `drop` re-raises here, so uvicorn cuts the connection
            if generation:
                self.completed.set()
            return
        work.cancel()
        self.cancelled.set()

    async def handle(self, request: Recorded, send: Send) -> None:
        """Answer one request; subclasses implement their protocol here."""
        raise NotImplementedError


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Dropped(Exception):
    """Raised inside a handler to cut the connection in the middle of a body."""


async def hang_forever() -> None:
    """Stall until the handler is cancelled (the client went away)."""
    await asyncio.Event().wait()


async def send_json(
    send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    await send_bytes(send, status, orjson.dumps(body), "application/json", headers)


async def send_bytes(
    send: Send,
    status: int,
    payload: bytes,
    content_type: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    await start_response(send, status, content_type, headers)
    await send({"type": "http.response.body", "body": payload})


async def start_response(
    send: Send, status: int, content_type: str, headers: Mapping[str, str] | None = None
) -> None:
    pairs = [(b"content-type", content_type.encode())]
    pairs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})


async def send_chunk(send: Send, payload: bytes) -> None:
    await send({"type": "http.response.body", "body": payload, "more_body": True})


async def end_body(send: Send) -> None:
    await send({"type": "http.response.body", "body": b""})


def metrics_text(samples: Sequence[tuple[str, Mapping[str, str], float]]) -> bytes:
    """Prometheus text exposition for ``(name, labels, value)`` samples."""
    lines = []
    for name, labels, value in samples:
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return ("\n".join(lines) + "\n").encode()
