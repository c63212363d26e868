"""A budget under a crowd: concurrent requests overshoot it by at most one request.

The fake upstream counts a prompt's tokens as its words (``"a a a"`` is three), twice what the
gateway's ~4-bytes-a-token estimate makes of it: admission must reserve a bound, not that.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from gateway.tenancy.models import Limits
from tests.fakes._server import Recorded, Send, Signal
from tests.fakes.vllm import FakeVLLM
from tests.gateway.openai.conftest import FleetFactory, Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]
CLIENTS = 30
USD_PER_TOKEN = 1e-6  # the test meter's flat price, prompt and completion alike
BUDGET = 0.003


class Crowd(FakeVLLM):
    """Holds every generation until each client's request has arrived or been refused."""

    def __init__(self, clients: int) -> None:
        super().__init__()
        self.clients = clients
        self._lock = threading.Lock()
        self._seen = 0
        self.everyone_in = Signal()

    def seen(self) -> None:
        with self._lock:
            self._seen += 1
            if self._seen == self.clients:
                self.everyone_in.set()

    async def handle(self, request: Recorded, send: Send) -> None:
        if request.method == "POST":
            self.seen()
            await self.everyone_in.wait()
        await super().handle(request, send)


@pytest.mark.parametrize(
    ("path", "body", "worst_tokens"),
    [
        # 300 one-letter words: 300 tokens upstream, 600 bytes, an estimate of 150.
        ("/v1/completions", {"prompt": "a " * 300, "max_tokens": 4}, 300 + 4),
        # 100 one-letter messages: 4 tokens each upstream (a word and the role markup).
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "a"}] * 100, "max_tokens": 4}, 400 + 4),
    ],
)  # fmt: skip
def test_concurrent_clients_overshoot_a_budget_by_at_most_one_request(
    fleet: FleetFactory, path: str, body: dict[str, Any], worst_tokens: int
) -> None:
    with Crowd(CLIENTS) as upstream:
        models = [{"id": "test-model"}]  # no chat template: the backend applies its own
        with fleet([Upstream("vllm", upstream)], Limits(monthly_budget_usd=BUDGET),
                   models=models) as gw:  # fmt: skip

            async def client(http: httpx.AsyncClient) -> int:
                response = await http.post(
                    gw.url + path,
                    json={"model": "test-model", **body},
                    headers={"authorization": f"Bearer {gw.key}"},
                )
                if response.status_code == 429:
                    upstream.seen()
                return response.status_code

            async def crowd() -> list[int]:
                limits = httpx.Limits(max_connections=CLIENTS)
                async with httpx.AsyncClient(timeout=20, limits=limits) as http:
                    return await asyncio.gather(*(client(http) for _ in range(CLIENTS)))

            statuses = asyncio.run(crowd())
        billed = gw.ledger()
    assert set(statuses) == {200, 429} and statuses.count(200) > 1
    assert billed.cost_usd <= BUDGET + worst_tokens * USD_PER_TOKEN
