"""Scripts through a connection redis-py found torn down under a write (redis/redis-py#4287)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.tenancy.redis_client import UNREACHABLE, Script

pytestmark = pytest.mark.anyio

# A write on a torn-down transport, raised where redis-py raises it (the file name is what
# tells it from an AttributeError of our own).
_namespace: dict[str, Any] = {}
exec(  # a fixed snippet, compiled under redis-py's file name
    compile("def write():\n    None.writelines([])\n", "/site/redis/asyncio/connection.py", "exec"),
    _namespace,
)


class Client:
    """Fails the first ``failures`` commands as ``fail`` does, then answers "OK"."""

    def __init__(self, failures: int, fail: Any) -> None:
        self.failures, self.fail, self.calls = failures, fail, 0

    async def execute_command(self, *args: Any) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            self.fail()
        return "OK"


def _our_bug() -> None:
    raise AttributeError("'NoneType' object has no attribute 'tenant'")


async def test_a_torn_transport_is_retried_once() -> None:
    client = Client(1, _namespace["write"])
    assert await Script(client, "return 1")(keys=["k"], args=[]) == "OK"  # type: ignore[arg-type]
    assert client.calls == 2


async def test_torn_twice_is_a_connection_error_the_store_treats_as_unreachable() -> None:
    client = Client(2, _namespace["write"])
    with pytest.raises(RedisConnectionError) as raised:
        await Script(client, "return 1")(keys=["k"], args=[])  # type: ignore[arg-type]
    assert isinstance(raised.value, UNREACHABLE)
    assert client.calls == 2


async def test_an_attribute_error_of_our_own_is_not_retried() -> None:
    client = Client(1, _our_bug)
    with pytest.raises(AttributeError, match="tenant"):
        await Script(client, "return 1")(keys=["k"], args=[])  # type: ignore[arg-type]
    assert client.calls == 1
