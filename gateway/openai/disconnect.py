"""Stop work nobody will read: a non-streamed answer is cancelled when its client leaves.

A streamed answer notices the client leaving as it writes (``EventStream``); a non-streamed
one writes nothing until the end, so without a watch its upstream generations would run to
completion for a closed socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.types import Receive

from gateway.errors import ClientDisconnected

T = TypeVar("T")
ClientLeft = Callable[[], Awaitable[None]]


def disconnect_of(receive: Receive) -> ClientLeft:
    """What waits for ``http.disconnect`` on a request whose body has been read."""

    async def left() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return left


async def unless_client_leaves(work: Awaitable[T], left: ClientLeft | None) -> T:
    """``await work``; if the client leaves first, cancel it and raise ``ClientDisconnected``.

    The watch cancels the task running ``work`` (one task per request, not two): ``work``
    unwinds as for any cancellation, closing its upstream streams, and the cancellation is
    absorbed here.
    """
    if left is None:
        return await work
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        try:
            await left()
        except Exception:  # a server that cannot tell: keep working, as without a watch
            return
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientDisconnected("The client closed the connection.") from None
    finally:
        watcher.cancel()
