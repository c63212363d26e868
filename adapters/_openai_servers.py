"""What an OpenAI-compatible server does beyond the protocol, configured or learned.

Servers that speak the same routes differ where it matters for metering and health:

- vLLM and trtllm-serve state the context length in ``GET /v1/models`` (``max_model_len``)
  and honour ``stream_options.include_usage``.
- llama-cpp-python (``/openapi.json`` titled "llama.cpp Python API") has no ``/health``, sends
  no usage in streams, does not stream an echoed prompt, and by default
  (``interrupt_requests``) ends a running stream with ``[DONE]`` as soon as another request,
  even ``GET /v1/models``, waits for its model: it gets one request at a time, is never sent
  ``/v1/models``, and its health is that it answers HTTP at all.

A trait given in the backend's options wins over what is learned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LLAMA_CPP_TITLE = "llama.cpp Python API"


@dataclass(slots=True)
class ServerTraits:
    """The server's behaviour the adapter adapts to; ``None`` means not known yet."""

    serial: bool | None = None  # a new request aborts the running one: send one at a time
    stream_echo: bool | None = None  # a streamed echo carries the prompt and its logprobs
    max_context: int | None = None  # prompt + completion tokens, as the server states it
    llama_cpp: bool = False

    @classmethod
    def configured(cls, options: Mapping[str, Any]) -> ServerTraits:
        """The traits an operator stated."""

        def flag(name: str) -> bool | None:
            value = options.get(name)
            return None if value is None else bool(value)

        return cls(
            serial=flag("serial"),
            stream_echo=flag("stream_echo"),
        )

    def adopt_openapi(self, document: Any) -> None:
        """Read the server's identity from its ``/openapi.json``."""
        info = document.get("info") if isinstance(document, dict) else None
        title = info.get("title") if isinstance(info, dict) else None
        if isinstance(title, str) and LLAMA_CPP_TITLE in title:
            self.llama_cpp = True
            self.serial = True if self.serial is None else self.serial
            self.stream_echo = False if self.stream_echo is None else self.stream_echo


def model_context(listing: Any, served: Iterable[str]) -> int | None:
    """The smallest ``max_model_len`` among the served models in a ``/v1/models`` answer."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    names = set(served)
    lengths = [
        entry["max_model_len"]
        for entry in data
        if isinstance(entry, dict)
        and entry.get("id") in names
        and isinstance(entry.get("max_model_len"), int)
    ]
    return min(lengths) if lengths else None
