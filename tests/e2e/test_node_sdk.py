"""The official OpenAI Node SDK (npm ``openai``, pinned in ``clients/node``) against a live
gateway in front of the fake vLLM: what a Node application sees."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.clients.node_sdk import node_sdk_version, run_scenario
from tests.e2e.clients.stack import (
    FINAL_ANSWER,
    FULL_TEXT,
    MODEL,
    TOOL_OUTPUT,
    UPSTREAM_MODEL,
    WEATHER_REQUIRED,
    VLLMStack,
    report,
    vllm_stack,
    weather_arguments,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[VLLMStack]:
    node_sdk_version()  # fail at once, not once per test, when the SDK is missing
    with vllm_stack() as running:
        yield running


def test_chat(stack: VLLMStack) -> None:
    out = run_scenario("chat", stack)
    assert (out["object"], out["model"], out["role"]) == ("chat.completion", MODEL, "assistant")
    assert out["content"] == FULL_TEXT
    assert out["finish_reason"] == "stop"
    usage = out["usage"]
    assert usage["completion_tokens"] == 8 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    sent = stack.fake.requests[-1].json
    assert sent["model"] == UPSTREAM_MODEL
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


def test_chat_stream_with_usage(stack: VLLMStack) -> None:
    out = run_scenario("chat_stream", stack)
    assert out["first_role"] == "assistant"
    assert out["content"] == FULL_TEXT
    assert out["finish_reasons"] == ["stop"]
    assert out["last_choices"] == 0 and out["usage_only_in_last"]  # the include_usage chunk
    assert out["usage"]["completion_tokens"] == 8
    assert out["usage"]["total_tokens"] == (
        out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    )


def test_completion(stack: VLLMStack) -> None:
    out = run_scenario("completion", stack)
    assert out["object"] == "text_completion"
    assert out["text"] == "Hello, world!"
    assert out["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 4


def test_models(stack: VLLMStack) -> None:
    out = run_scenario("models", stack)
    assert out["ids"] == [MODEL]
    assert (out["retrieved"], out["object"]) == (MODEL, "model")


def test_errors_are_the_sdk_classes(stack: VLLMStack) -> None:
    out = run_scenario("errors", stack)
    for case in ("unknown_model", "unknown_model_streamed", "unknown_model_card"):
        error = out[case]
        assert error is not None, f"{case}: no error raised"
        assert (error["class"], error["isNotFound"], error["status"]) == (
            "NotFoundError",
            True,
            404,
        ), case
        assert error["type"] == "invalid_request_error", case
        assert error["requestID"], case  # the SDK read the gateway's x-request-id
    assert out["unknown_model"]["code"] == "model_not_found"
    assert out["unknown_model_streamed"]["code"] == "model_not_found"
    bad = out["bad_temperature"]
    assert (bad["class"], bad["status"], bad["param"]) == ("BadRequestError", 400, "temperature")
    auth = out["bad_key"]
    assert (auth["class"], auth["status"], auth["code"]) == (
        "AuthenticationError",
        401,
        "invalid_api_key",
    )


def test_responses(stack: VLLMStack) -> None:
    out = run_scenario("responses", stack)
    assert out["id"].startswith("resp_") and out["object"] == "response"
    assert out["status"] == "completed"
    assert out["output_text"] == FULL_TEXT
    assert out["output_types"] == ["message"]
    usage = out["usage"]
    assert usage["output_tokens"] == 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    sent = stack.fake.requests[-1].json
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]


def test_responses_stream(stack: VLLMStack) -> None:
    out = run_scenario("responses_stream", stack)
    types = out["types"]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.output_text.delta" in types  # tokens that arrive together may share one
    assert out["sequence"] == list(range(len(types)))
    assert "".join(out["deltas"]) == out["completed_text"] == FULL_TEXT
    assert out["completed_usage"]["output_tokens"] == 8
    assert out["same_id"]
    assert "".join(out["helper_deltas"]) == out["helper_text"] == FULL_TEXT
    assert out["helper_status"] == "completed"


def test_tool_round_trip(stack: VLLMStack) -> None:
    out = run_scenario("tools", stack)
    assert out["finish_reason"] == "tool_calls"
    [call] = out["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert weather_arguments(call).items() >= WEATHER_REQUIRED.items()
    assert (out["final"], out["final_finish_reason"]) == (FINAL_ANSWER, "stop")
    history = stack.fake.requests[-1].json["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert history[1]["tool_calls"][0]["id"] == history[2]["tool_call_id"] == call["id"]
    assert history[2]["content"] == TOOL_OUTPUT


def test_tool_round_trip_streamed(stack: VLLMStack) -> None:
    out = run_scenario("tools_stream", stack)
    assert out["finish_reason"] == "tool_calls"
    [call] = out["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"]
    assert weather_arguments(call).items() >= WEATHER_REQUIRED.items()
    # The call's id, type and name come first; what follows (fragments the upstream sent
    # apart, or none when they arrived together) adds only argument text.
    head, *rest = out["deltas"]
    assert (head["index"], head["id"], head["type"]) == (0, call["id"], "function")
    assert head["function"]["name"] == "get_weather"
    assert all(d["index"] == 0 and set(d) == {"index", "function"} for d in rest)
    assert all(set(d["function"]) == {"arguments"} for d in rest)
    joined = "".join(d.get("function", {}).get("arguments", "") for d in out["deltas"])
    assert joined == call["function"]["arguments"]
    assert out["usage"] is not None and out["usage"]["completion_tokens"] > 0
    assert (out["final"], out["final_finish_reason"]) == (FINAL_ANSWER, "stop")


def test_tool_runner_helper(stack: VLLMStack) -> None:
    out = run_scenario("tools_runner", stack)
    [args] = out["calls"]  # the SDK parsed the arguments and ran the function once
    assert args.items() >= WEATHER_REQUIRED.items()
    assert out["final"] == FINAL_ANSWER
    assert out["roles"] == ["user", "assistant", "tool", "assistant"]


def test_json_schema_answer(stack: VLLMStack) -> None:
    out = run_scenario("json_schema", stack)
    value = report(out["content"])
    assert value["city"] == "x" and value["wind"] == {"speed": 1}
    assert out["finish_reason"] == "stop"
    assert out["json_object"] == "{}"
    sent = stack.fake.requests[-2].json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
