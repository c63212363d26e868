"""Function calling for text-only models: tools written into the prompt, calls read back.

A backend that has no tool parser of its own but can constrain its output (the embedded
engine) offers tools this way. The gateway turns the conversation into plain turns with
``as_text_turns`` before its chat template renders them: the tools are described in the
system turn, an assistant's earlier calls become the JSON it wrote, and a tool's result
becomes a user turn. The model then answers with one JSON object ``{"name": ..., "arguments":
{...}}``, held to ``call_schema`` by constrained decoding, which ``read_call`` parses back.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from adapters.base import ChatMessage, ToolCall


def chosen_function(tool_choice: str | Mapping[str, Any] | None) -> str | None:
    """The function ``tool_choice`` names, or None for "auto"/"required"."""
    if isinstance(tool_choice, Mapping):
        return str(tool_choice["function"]["name"])
    return None


def call_schema(
    tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any] | None
) -> dict[str, Any]:
    """The JSON Schema of one call to any of ``tools`` (or to the one ``tool_choice`` names)."""
    named = chosen_function(tool_choice)
    options = []
    for tool in tools:
        function = tool["function"]
        if named is not None and function["name"] != named:
            continue
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": function["name"]},
                    "arguments": _declared_only(function.get("parameters") or {"type": "object"}),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


def _declared_only(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """A function's parameters with no arguments beyond those it declares, unless its schema
    says otherwise: a function takes what it names, and a small model held only to "any
    object" invents keys until its tokens run out."""
    if parameters.get("properties") and "additionalProperties" not in parameters:
        return {**parameters, "additionalProperties": False}
    return parameters


def tool_instructions(
    tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any] | None
) -> str:
    """What the system turn tells the model about the tools it may call."""
    lines = ["You can call these functions:"]
    for tool in tools:
        function = tool["function"]
        described = {"name": function["name"], "parameters": function.get("parameters") or {}}
        if function.get("description"):
            described["description"] = function["description"]
        lines.append(orjson.dumps(described).decode())
    lines.append(
        'To call a function, answer with only a JSON object: {"name": <function name>, '
        '"arguments": <its arguments>}.'
    )
    named = chosen_function(tool_choice)
    if named is not None:
        lines.append(f"Call the function {named} now.")
    elif tool_choice == "required":
        lines.append("Call one of the functions now.")
    else:
        lines.append("If no function helps, answer the user in plain text instead.")
    return "\n".join(lines)


def as_text_turns(
    messages: Sequence[ChatMessage],
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
) -> list[ChatMessage]:
    """The conversation as plain system/user/assistant turns a chat template can render."""
    names = {call.id: call.name for m in messages for call in m.tool_calls}
    turns: list[ChatMessage] = []
    if tools:
        turns.append(ChatMessage("system", tool_instructions(tools, tool_choice)))
    for message in messages:
        if message.tool_calls:
            calls = "\n".join(call_text(call) for call in message.tool_calls)
            content = f"{message.content}\n{calls}" if message.content else calls
            turns.append(ChatMessage("assistant", content))
        elif message.role == "tool":
            name = names.get(message.tool_call_id or "", "the function")
            turns.append(ChatMessage("user", f"Result of {name}: {message.content}"))
        else:
            turns.append(ChatMessage(message.role, message.content))
    return turns


def call_text(call: ToolCall) -> str:
    """A call as the model writes it."""
    try:
        arguments = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        arguments = call.arguments  # a client's malformed history: shown as it was
    return orjson.dumps({"name": call.name, "arguments": arguments}).decode()


def read_call(text: str) -> ToolCall | None:
    """The call a model's answer holds, or None when it is not a whole call."""
    try:
        found = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(found, dict) or not isinstance(found.get("name"), str):
        return None
    arguments = orjson.dumps(found.get("arguments", {})).decode()
    return ToolCall(id=new_call_id(), name=found["name"], arguments=arguments)


def new_call_id() -> str:
    """A call id shaped like OpenAI's."""
    return "call_" + secrets.token_hex(12)
