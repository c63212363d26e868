"""Request models of the OpenAI surface; responses are built as plain dicts in serving.

Bodies are parsed with ``model_validate_json`` (one pass, in Rust) and every validation
failure becomes an ``InvalidRequest`` naming the offending field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import InvalidRequest

INT32_MAX = 2**31 - 1
INT64 = (-(2**63), 2**63 - 1)  # what every backend's seed and counts fit in
TokenIds = list[Annotated[int, Field(ge=0, le=INT32_MAX)]]  # no vocabulary is larger
BodyT = TypeVar("BodyT", bound=BaseModel)
# vLLM-style sampling extras a client may send (e.g. the OpenAI SDK's ``extra_body``);
# passed to backends untouched. Anything else unknown is a 400.
VENDOR_EXTRAS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "stop_token_ids",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "include_stop_str_in_output",
    }
)
# OpenAI fields that steer how OpenAI's own service runs a request (tier, storage, caching,
# effort of reasoning models) rather than what a model answers: accepted and dropped, as
# LiteLLM's ``drop_params`` does, so apps written for api.openai.com move behind Tollgate
# unchanged. ``server.drop_params`` names more ("*": every unknown field).
DROPPED_HINTS = frozenset(
    {
        "service_tier",
        "store",
        "metadata",
        "reasoning_effort",
        "reasoning",  # the Responses API's form of it: {"effort": ...}
        "verbosity",
        "prediction",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "modalities",
    }
)
# OpenAI fields that would change the answer and no backend here honours: always refused.
ANSWER_CHANGING = {
    "audio": "Audio output is not supported; only text is.",
    "web_search_options": "Web search is not supported.",
    "functions": "Legacy function calling is not supported; use tools.",
    "function_call": "Legacy function calling is not supported; use tool_choice.",
}


class _Body(BaseModel):
    """Common fields; unknown keys are collected and checked against ``VENDOR_EXTRAS``."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1])
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @property
    def stop_list(self) -> tuple[str, ...]:
        """``stop`` as a tuple (a single string is one stop sequence)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def vendor_extras(self, dropped: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Unknown fields that are vendor extras, to pass on to backends.

        OpenAI's service hints (``DROPPED_HINTS``) and the names in ``dropped`` are accepted
        and left out; a field that would change the answer, or that nobody named, is a 400.
        """
        extras = self.model_extra or {}
        passed: dict[str, Any] = {}
        for key, value in extras.items():
            if key in ANSWER_CHANGING and value is not None:
                raise InvalidRequest(ANSWER_CHANGING[key], param=key)
            if key == "modalities" and value not in (None, ["text"]):
                raise InvalidRequest("Only the 'text' output modality is supported.", param=key)
            if key in VENDOR_EXTRAS:
                if not _representable(value):
                    raise InvalidRequest(
                        f"'{key}' must hold finite numbers that fit in 64 bits.", param=key
                    )
                passed[key] = value
            elif not (key in DROPPED_HINTS or key in dropped or "*" in dropped):
                raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key)
        return passed


def _representable(value: Any) -> bool:
    """Whether a pass-through value is one every backend can read (finite, 64-bit integers)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_representable(v) for v in value)
    if isinstance(value, dict):
        return all(_representable(v) for v in value.values())
    return False


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` is meaningful."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    include_usage: bool = False
    include_obfuscation: bool = False  # OpenAI pads deltas against side channels; nothing to pad


class CompletionRequest(_Body):
    """``POST /v1/completions``."""

    prompt: str | list[str] | TokenIds | list[TokenIds] = ""
    max_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=128)

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts, each text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequest("prompt must not be an empty list", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TextPart(BaseModel):
    """A text content part."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["text"]
    text: str


FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionCallIn(BaseModel):
    """The function an assistant turn called, and the JSON text of its arguments.

    Fields the SDKs' own accumulators add when a client sends their answer back
    (``index``, ``parsed_arguments``) are ignored here and in ``ToolCallIn``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    arguments: str


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant turn, as the client sends it back."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    """A chat message as clients send it."""

    model_config = ConfigDict(extra="allow", frozen=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(BaseModel):
    """A function the model may call: ``parameters`` is a JSON Schema of its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(BaseModel):
    """An entry of ``tools``: only functions are tools here."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    """``{"name": ...}`` of a named ``tool_choice``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the one function to call."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema an answer must match."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: free text, any JSON object, or JSON matching a schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with, and only with, type 'json_schema'")
        return self

    def upstream(self) -> dict[str, Any] | None:
        """The format as backends receive it (None for free text)."""
        if self.type == "text":
            return None
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    max_completion_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class ResponsesInputMessage(BaseModel):
    """A message item of a Responses ``input`` list; its content is text or text parts."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]


class ResponsesFunctionCall(BaseModel):
    """A ``function_call`` item: a call the model made earlier, sent back as history."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str
    arguments: str


class ResponsesFunctionOutput(BaseModel):
    """A ``function_call_output`` item: what the call ``call_id`` returned."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]


def _item_kind(item: Any) -> str:
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", None)
    return kind if kind in _ITEM_KINDS else "message"  # the message model names a bad type


_ITEM_KINDS = ("message", "function_call", "function_call_output")
ResponsesInputItem = Annotated[
    Annotated[ResponsesInputMessage, Tag("message")]
    | Annotated[ResponsesFunctionCall, Tag("function_call")]
    | Annotated[ResponsesFunctionOutput, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class ResponsesTool(BaseModel):
    """A function tool in the Responses shape (flat: no ``function`` wrapper)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesNamedChoice(BaseModel):
    """``tool_choice`` naming the one function to call (Responses shape)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["function"]
    name: str


class ResponsesFormat(BaseModel):
    """``text.format``: free text, any JSON object, or JSON matching a named schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: FunctionName | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _named_schema(self) -> ResponsesFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a json_schema format needs a name and a schema")
        return self

    def as_chat(self) -> dict[str, Any] | None:
        """The same format as chat's ``response_format`` (None for free text)."""
        if self.type != "json_schema":
            return None if self.type == "text" else {"type": self.type}
        spec = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"type"})
        return {"type": "json_schema", "json_schema": spec}


class ResponsesText(BaseModel):
    """``text``: the output's format and verbosity."""

    model_config = ConfigDict(extra="allow", frozen=True)
    format: ResponsesFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``, stateless: answered on the chat path, nothing is stored.

    Unknown keys are checked as chat's are (vendor extras pass, OpenAI's service hints are
    dropped, anything else is a 400 naming it).
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    model: str = Field(min_length=1)
    input: list[ResponsesInputItem] | str
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    user: str | None = None
    text: ResponsesText | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ResponsesNamedChoice | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None


_Body.model_rebuild()
CompletionRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
ResponsesRequest.model_rebuild()


_BRANCHES = frozenset(
    {"str", "list[str]", "list[int]", "list[list[int]]", *_ITEM_KINDS,
     "NamedToolChoice", "ResponsesNamedChoice"}
)  # fmt: skip


def _param(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as OpenAI's ``param`` (``messages[0].content``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _BRANCHES or "[" in part:
            continue  # union-branch names and tags, not fields
        else:
            out += f".{part}" if out else part
    return out


def parse_body(model: type[BodyT], raw: bytes) -> BodyT:
    """Validate a JSON body; every failure is an ``InvalidRequest`` naming the field."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


def parse_model(model: type[BodyT], data: dict[str, Any]) -> BodyT:
    """Validate an already-parsed body, failing as ``parse_body`` does."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidRequest:
    """A validation failure as the ``InvalidRequest`` naming its first field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "literal_error" and isinstance(first.get("input"), dict):
        # A dict given where a string or an object may go: the object branch's error
        # says what is wrong with it, the string branch's only that it is not a string.
        first = max(errors, key=lambda e: (e["loc"][:1] == first["loc"][:1], len(e["loc"])))
    if first["type"] in ("json_invalid", "json_type"):
        return InvalidRequest(f"We could not parse the JSON body of your request: {first['msg']}.")
    param = _param(tuple(first["loc"]))
    if first["type"] == "model_type" and not param:
        return InvalidRequest("The request body must be a JSON object.")
    message = f"Invalid value for '{param}': {first['msg']}." if param else first["msg"]
    return InvalidRequest(message, param=param or None)


def joined_text(parts: list[dict[str, Any]], kinds: tuple[str, ...], param: str) -> str:
    """The text of content parts of the given ``kinds``, joined; any other part is a 400."""
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type")
        if kind not in kinds or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"Content parts of type '{kind}' are not supported; only text is.",
                param=f"{param}[{j}].type",
            )
        texts.append(part["text"])
    return "".join(texts)
