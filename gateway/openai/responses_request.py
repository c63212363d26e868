"""A Responses request (``/v1/responses``) as the chat request it is answered by.

Items become chat messages (a ``function_call`` joins the assistant turn before it as a tool
call, a ``function_call_output`` is a ``tool`` message), flat function tools get chat's
``function`` wrapper, and ``text.format`` becomes ``response_format``.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import InvalidRequest
from gateway.openai.protocol import (
    ChatCompletionRequest,
    ResponsesFunctionCall,
    ResponsesFunctionOutput,
    ResponsesInputMessage,
    ResponsesNamedChoice,
    ResponsesRequest,
    joined_text,
)

# Chat's names of what a Responses request gave under another name.
_RENAMED = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
}
_TOOL_PARAM = re.compile(r"^tools\[(\d+)\]\.function\.")


def chat_body(body: ResponsesRequest) -> dict[str, Any]:
    """The chat request body that answers ``body``; raises ``InvalidRequest`` for what the
    Responses API allows and stateless serving cannot do."""
    if body.previous_response_id is not None:
        raise InvalidRequest(
            "previous_response_id is not supported: Tollgate stores no responses. Send the "
            "earlier turns in input instead.",
            param="previous_response_id",
        )
    extras = dict(body.model_extra or {})
    for key in extras:
        if key in ChatCompletionRequest.model_fields:  # a chat field, not a Responses one
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key)
    chat: dict[str, Any] = {
        **extras,
        "model": body.model,
        "messages": _messages(body),
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": body.stream,
        "user": body.user,
        "parallel_tool_calls": body.parallel_tool_calls,
    }
    if body.tools is not None:
        chat["tools"] = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in body.tools
        ]
    choice = body.tool_choice
    if isinstance(choice, ResponsesNamedChoice):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        chat["tool_choice"] = choice
    if body.text is not None and body.text.format is not None:
        chat["response_format"] = body.text.format.as_chat()
    return chat


def as_named(error: InvalidRequest) -> InvalidRequest:
    """A refusal of the chat request, naming the parameter as the Responses client did."""
    param = error.param or ""
    named = _RENAMED.get(param) or _TOOL_PARAM.sub(r"tools[\1].", param)
    if named == param:
        return error
    return InvalidRequest(error.message.replace(param, named), param=named)


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    if not body.input:
        raise InvalidRequest("input must not be an empty list.", param="input")
    for index, item in enumerate(body.input):
        if isinstance(item, ResponsesInputMessage):
            messages.append({"role": item.role, "content": _text(item.content, index)})
        elif isinstance(item, ResponsesFunctionCall):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}  # fmt: skip
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            assert isinstance(item, ResponsesFunctionOutput)
            messages.append(
                {"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output, index)}
            )
    return messages


def _text(content: str | list[dict[str, Any]], index: int) -> str:
    if isinstance(content, str):
        return content
    return joined_text(content, ("input_text", "output_text"), f"input[{index}].content")
