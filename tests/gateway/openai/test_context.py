"""Context windows: what fits which backend, what is refused, what a default is cut to."""

from __future__ import annotations

import pytest

from adapters.base import Capabilities
from gateway.errors import ContextLengthExceeded, error_body
from gateway.openai.context import ContextFit
from tests.gateway.doubles import ScriptedBackend

pytestmark = pytest.mark.timeout(10)


def backend(name: str, context: int | None = None, prompt: int | None = None) -> ScriptedBackend:
    return ScriptedBackend(name, capabilities=Capabilities(max_context=context, max_prompt=prompt))


def test_a_prompt_and_completion_past_every_window_is_openais_400() -> None:
    fit = ContextFit([41], 16, explicit=True, param="messages")
    with pytest.raises(ContextLengthExceeded) as caught:
        fit.candidates([backend("a", 32), backend("b", 48)])
    body = error_body(caught.value)["error"]
    assert (body["code"], body["param"], body["type"]) == (
        "context_length_exceeded",
        "messages",
        "invalid_request_error",
    )
    assert body["message"] == (
        "This model's maximum context length is 48 tokens. However, you requested 57 tokens "
        "(41 in the messages, 16 in the completion). Please reduce the length of the messages "
        "or completion."
    )


def test_only_the_backends_the_request_fits_remain() -> None:
    small, large, unknown = backend("small", 32), backend("large", 4096), backend("unknown")
    fit = ContextFit([41], 16, explicit=True)
    assert fit.candidates([small, large, unknown]) == [large, unknown]


def test_a_prompt_limit_apart_from_the_context_is_kept() -> None:
    fit = ContextFit([9], 4, explicit=True)
    with pytest.raises(ContextLengthExceeded, match="at most 8 tokens of input"):
        fit.candidates([backend("tgi", prompt=8)])


def test_a_default_completion_is_cut_to_the_room_left_not_refused() -> None:
    fit = ContextFit([20, 28], 256, explicit=False)
    js = backend("js", 32)
    assert fit.candidates([js]) == [js]
    assert (fit.max_tokens_on(js, 0, 256), fit.max_tokens_on(js, 1, 256)) == (12, 4)
    asked = ContextFit([20], 8, explicit=True)
    assert asked.max_tokens_on(js, 0, 8) == 8


def test_the_models_context_length_bounds_every_backend() -> None:
    fit = ContextFit([30], 8, explicit=True, model_limit=32)
    with pytest.raises(ContextLengthExceeded):
        fit.candidates([backend("a", 4096)])


def test_an_estimated_prompt_never_refuses() -> None:
    fit = ContextFit([None], 16, explicit=True)
    a = backend("a", 8)
    assert fit.candidates([a]) == [a]
