"""From a validated body to a ``Job``: the model, its candidates and one request per choice.

Everything a client can get wrong is found here, before admission: unknown or forbidden
model, parameters no candidate can honour, absurd ``max_tokens``, unsupported chat features.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from adapters._tool_text import as_text_turns
from adapters.base import Backend, ChatMessage, GenerationRequest, ToolCall
from gateway.errors import Forbidden, InvalidRequest, ModelNotFound
from gateway.openai.context import ContextFit
from gateway.openai.protocol import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    NamedToolChoice,
    ResponsesNamedChoice,
    ResponsesRequest,
    _Body,
    joined_text,
    parse_model,
)
from gateway.openai.responses import Endpoint, Envelope
from gateway.openai.responses_api import ResponseFrame
from gateway.openai.responses_request import as_named, chat_body
from gateway.openai.templates import TEMPLATES, ChatTemplate
from gateway.routing.policies import Objectives
from gateway.routing.prefixes import BLOCK_CHARS, PromptBlocks
from gateway.routing.router import Needs, Router
from gateway.settings import ModelSettings, Settings
from gateway.tenancy.models import Principal
from gateway.tokenizers import TokenCounter

if TYPE_CHECKING:
    from gateway.openai.serving import RequestMeta, Tally

# OpenAI's documented default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# Role markup a backend's own chat template adds per message (ChatML, Llama 3 and Gemma add
# 4-6 tokens), reserved when the gateway has no template whose text it could count.
CHAT_MARKUP_TOKENS = 8
POLICIES = ("cost", "latency", "balanced")


@dataclass(slots=True)
class Job:
    """A validated request: what to generate, where it may go, and what to reserve."""

    endpoint: Endpoint
    principal: Principal
    model: ModelSettings
    envelope: Envelope
    requests: list[GenerationRequest]  # one per choice; ``model`` is the client-facing id
    prompt_of: list[int]  # choice index -> prompt index
    prompt_counts: list[int]  # prompt tokens per prompt (counted or estimated)
    prompt_bounds: list[int]  # at least what any backend will count, per prompt (reserved)
    echo_texts: list[str]  # per choice: prompt text the gateway echoes ("" for none)
    candidates: list[Backend]
    policy: str
    objectives: Objectives
    max_tokens: int
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool
    wants_logprobs: bool
    client_request_id: str | None
    messages: Sequence[ChatMessage] | None = None
    text_turns: Sequence[ChatMessage] | None = None  # messages with tools as text, for templates
    template: ChatTemplate | None = None
    tally: Tally | None = field(default=None)
    fit: ContextFit | None = None  # the request's size against context windows
    prompt_blocks: PromptBlocks | None = None  # the first prompt's, for prefix-aware routing
    frame: ResponseFrame | None = None  # set for /v1/responses: answered in that shape

    @property
    def model_id(self) -> str:
        """The canonical client-facing model id."""
        return self.model.id

    @property
    def prompt_token_total(self) -> int:
        """Prompt tokens across choices (each choice's generation prefills its prompt)."""
        return sum(self.prompt_counts[g] for g in self.prompt_of)

    @property
    def prompt_bound_total(self) -> int:
        """An upper bound on ``prompt_token_total``: what admission reserves."""
        return sum(self.prompt_bounds[g] for g in self.prompt_of)

    @property
    def max_tokens_total(self) -> int:
        """The most completion tokens the request may produce."""
        return self.max_tokens * len(self.requests)

    @property
    def reserved_tokens(self) -> int:
        """What TPM admission reserves: prompt tokens (bounded) plus ``max_tokens`` per choice."""
        return self.prompt_bound_total + self.max_tokens_total

    @property
    def width(self) -> int:
        """Generations run upstream at once: the tenant's ``max_concurrent`` bounds a request's
        fan-out (prompts x n) as it bounds its requests, so one request cannot multiply it."""
        limit = self.principal.tenant.limits.max_concurrent
        count = len(self.requests)
        return count if limit is None else max(1, min(limit, count))


class JobBuilder:
    """Validates bodies against configuration and the fleet's capabilities."""

    def __init__(self, settings: Settings, router: Router, counter: TokenCounter) -> None:
        self.settings = settings
        self.router = router
        self.counter = counter
        self._models: dict[str, ModelSettings] = {}
        for m in settings.models:
            for name in (m.id, *m.aliases):
                self._models[name] = m

    @property
    def models(self) -> list[ModelSettings]:
        """Configured models, each once."""
        return list(self.settings.models)

    def resolve(self, name: str, principal: Principal) -> ModelSettings:
        """The model behind an id or alias, if the caller may use it."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
            )
        if not (principal.may_use(model.id) or principal.may_use(name)):
            raise Forbidden(f"Your key may not use the model '{name}'.", param="model")
        return model

    # -- completions --------------------------------------------------------------------

    def completion(self, principal: Principal, body: CompletionRequest, meta: RequestMeta) -> Job:
        """A job for ``/v1/completions``."""
        model = self.resolve(body.model, principal)
        extras = body.vendor_extras(self.settings.server.drop_params)
        prompts = body.prompts()
        tokenizer = self.counter.tokenizer(model.id)
        max_tokens = self._max_tokens(body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, model)
        if max_tokens == 0 and not body.echo:
            raise InvalidRequest("max_tokens must be at least 1.", param="max_tokens")
        if body.best_of is not None and body.best_of != body.n:
            raise InvalidRequest("best_of is not supported; use n.", param="best_of")
        limit = self.settings.server.max_generations_per_request
        if len(prompts) * body.n > limit:
            raise InvalidRequest(
                f"{len(prompts)} prompts x n={body.n} asks for {len(prompts) * body.n} "
                f"generations; at most {limit} per request.",
                param="n" if body.n > 1 else "prompt",
            )
        texts: list[str] = []
        token_prompts = False
        for p in prompts:
            if isinstance(p, str):
                texts.append(p)
            elif tokenizer is not None:
                texts.append(tokenizer.decode(p))
            else:
                token_prompts = True
                texts.append("")
        wants_echo_logprobs = body.echo and bool(body.logprobs)
        needs = Needs(
            token_prompts=token_prompts,
            echo=wants_echo_logprobs or (body.echo and token_prompts),
            logprobs=body.logprobs or 0,
            **self._common_needs(body),
            suffix=bool(body.suffix),
        )
        candidates = self._candidates(model, needs)
        counts = [
            len(p) if not isinstance(p, str) else self.counter.count(model.id, p) for p in prompts
        ]
        bounds = [
            len(p) if not isinstance(p, str) else self.counter.bound(model.id, p) for p in prompts
        ]
        exact = [p if isinstance(p, str) else len(p) for p in prompts]
        fit = ContextFit(
            [self.counter.exact(model.id, p) if isinstance(p, str) else p for p in exact],
            max_tokens,
            explicit=body.max_tokens is not None,
            model_limit=model.context_length,
        )
        candidates = fit.candidates(candidates)
        requests, prompt_of, echo = [], [], []
        for group, (p, text) in enumerate(zip(prompts, texts, strict=True)):
            for _ in range(body.n):
                prompt_of.append(group)
                echo.append(text if body.echo and not needs.echo else "")
                requests.append(
                    GenerationRequest(
                        request_id=meta.request_id,
                        model=model.id,
                        max_tokens=max_tokens,
                        prompt=text if isinstance(p, str) or tokenizer is not None else None,
                        prompt_token_ids=None if isinstance(p, str) else p,
                        logprobs=body.logprobs,
                        echo=needs.echo,
                        suffix=body.suffix,
                        **self._sampling(body, extras),
                    )
                )
        job = self._job(
            "completion",
            principal,
            model,
            body,
            meta,
            requests,
            prompt_of,
            (counts, bounds),
            echo,
            candidates,
            max_tokens,
            bool(body.logprobs),
        )
        job.fit = fit
        job.prompt_blocks = self._blocks(candidates, texts[0])
        return job

    # -- chat ---------------------------------------------------------------------------

    def chat(self, principal: Principal, body: ChatCompletionRequest, meta: RequestMeta) -> Job:
        """A job for ``/v1/chat/completions``."""
        model = self.resolve(body.model, principal)
        extras = body.vendor_extras(self.settings.server.drop_params)
        tools = _tools(body)
        response_format = body.response_format.upstream() if body.response_format else None
        messages = [_chat_message(i, m) for i, m in enumerate(body.messages)]
        limit = (
            body.max_completion_tokens
            if body.max_completion_tokens is not None
            else (body.max_tokens)
        )
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = self._max_tokens(limit, self.settings.server.default_max_tokens, model, param)
        if max_tokens == 0:
            raise InvalidRequest(f"{param} must be at least 1.", param=param)
        if body.top_logprobs is not None and not body.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true.", param="logprobs")
        fan_out = self.settings.server.max_generations_per_request
        if body.n > fan_out:
            raise InvalidRequest(
                f"n={body.n} asks for {body.n} generations; at most {fan_out} per request.",
                param="n",
            )
        needs = Needs(
            logprobs=max(1, body.top_logprobs or 0) if body.logprobs else 0,
            **self._common_needs(body),
            tools=tools is not None,
            structured=response_format is not None,
        )
        candidates = self._candidates(model, needs)
        template = TEMPLATES.get(model.chat_template or "")
        if template is None and any(not b.capabilities.chat for b in candidates):
            candidates = [b for b in candidates if b.capabilities.chat]
            if not candidates:
                raise InvalidRequest(
                    f"The model '{model.id}' has no chat template and no backend that "
                    "accepts chat messages.",
                    param="messages",
                )
        choice = _upstream_choice(body.tool_choice) if tools else None
        tooled = tools is not None or _has_tool_turns(messages)
        turns = as_text_turns(messages, tools, choice) if tooled else messages
        rendered = template.render(turns) if template else "\n".join(m.content for m in turns)
        count = self.counter.count(model.id, rendered)
        bound = self.counter.bound(model.id, rendered)
        if template is None:
            bound += CHAT_MARKUP_TOKENS * len(messages)
        fit = ContextFit(
            [self.counter.exact(model.id, rendered)],  # no template: a lower bound, still safe
            max_tokens,
            explicit=limit is not None,
            model_limit=model.context_length,
            param="messages",
        )
        candidates = fit.candidates(candidates)
        top = body.top_logprobs if body.logprobs else None
        requests = [
            GenerationRequest(
                request_id=meta.request_id,
                model=model.id,
                max_tokens=max_tokens,
                messages=messages,
                logprobs=(top or 0) if body.logprobs else None,
                tools=tools,
                tool_choice=choice,
                parallel_tool_calls=body.parallel_tool_calls if tools else None,
                response_format=response_format,
                **self._sampling(body, extras),
            )
            for _ in range(body.n)
        ]
        job = self._job(
            "chat",
            principal,
            model,
            body,
            meta,
            requests,
            [0] * body.n,
            ([count], [bound]),
            [""] * body.n,
            candidates,
            max_tokens,
            body.logprobs,
        )
        job.messages, job.text_turns, job.template, job.fit = messages, turns, template, fit
        job.prompt_blocks = self._blocks(candidates, rendered)
        return job

    # -- responses ----------------------------------------------------------------------

    def response(self, principal: Principal, body: ResponsesRequest, meta: RequestMeta) -> Job:
        """A job for ``/v1/responses``: the chat job of its messages, answered as a Response."""
        chat = parse_model(ChatCompletionRequest, chat_body(body))
        try:
            job = self.chat(principal, chat, meta)
        except InvalidRequest as exc:  # named as the client named it
            raise as_named(exc) from None
        job.frame = ResponseFrame(
            id="resp_" + meta.request_id,
            message_id="msg_" + meta.request_id,
            created_at=job.envelope.created,
            model=job.model_id,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            metadata=dict(body.metadata or {}),
            user=body.user,
            tools=[tool.model_dump(mode="json", exclude_none=True) for tool in body.tools or ()],
            tool_choice=_choice_json(body.tool_choice),
            parallel_tool_calls=body.parallel_tool_calls is not False,
            text_format=_format_json(body),
        )
        return job

    # -- per backend --------------------------------------------------------------------

    def upstream(
        self, job: Job, index: int, backend: Backend
    ) -> tuple[GenerationRequest, Sequence[str]]:
        """The request as ``backend`` should receive it, and the stops the gateway applies."""
        base = job.requests[index]
        caps = backend.capabilities
        stops = job.stops
        changes: dict[str, Any] = {"model": backend.models[job.model_id]}
        if job.messages is not None and not caps.chat:
            assert job.template is not None  # ensured when candidates were chosen
            changes["messages"] = None
            changes["prompt"] = job.template.render(job.text_turns or job.messages)
            stops = (*stops, *job.template.stops)
        fits = caps.max_stop_sequences is None or len(stops) <= caps.max_stop_sequences
        changes["stop"] = stops if caps.stop and fits else ()
        if job.fit is not None:
            changes["max_tokens"] = job.fit.max_tokens_on(
                backend, job.prompt_of[index], base.max_tokens
            )
        return replace(base, **changes), stops

    # -- shared -------------------------------------------------------------------------

    def _job(
        self,
        endpoint: Endpoint,
        principal: Principal,
        model: ModelSettings,
        body: _Body,
        meta: RequestMeta,
        requests: list[GenerationRequest],
        prompt_of: list[int],
        counts: tuple[list[int], list[int]],  # counted (or estimated), and bounded
        echo: list[str],
        candidates: list[Backend],
        max_tokens: int,
        wants_logprobs: bool,
    ) -> Job:
        policy = meta.policy or principal.tenant.limits.policy
        policy = policy or self.settings.routing.default_policy
        if policy not in POLICIES:
            raise InvalidRequest(
                f"Unknown routing policy '{policy}'; use one of {', '.join(POLICIES)}.",
                param="x-tollgate-policy",
            )
        prefix = "cmpl-" if endpoint == "completion" else "chatcmpl-"
        envelope = Envelope(endpoint, prefix + meta.request_id, int(time.time()), model.id)
        return Job(
            endpoint=endpoint,
            principal=principal,
            model=model,
            envelope=envelope,
            requests=requests,
            prompt_of=prompt_of,
            prompt_counts=counts[0],
            prompt_bounds=counts[1],
            echo_texts=echo,
            candidates=candidates,
            policy=policy,
            objectives=self._objectives(meta),
            max_tokens=max_tokens,
            stops=body.stop_list,
            stream=body.stream,
            include_usage=body.stream and body.include_usage,
            wants_logprobs=wants_logprobs,
            client_request_id=meta.client_request_id,
        )

    def _objectives(self, meta: RequestMeta) -> Objectives:
        routing = self.settings.routing
        ttft = meta.objectives.max_ttft_s
        tpot = meta.objectives.max_tpot_s
        if ttft is None and routing.max_ttft_ms is not None:
            ttft = routing.max_ttft_ms / 1000
        if tpot is None and routing.max_tpot_ms is not None:
            tpot = routing.max_tpot_ms / 1000
        return Objectives(ttft, tpot)

    def _max_tokens(
        self, asked: int | None, default: int, model: ModelSettings, param: str = "max_tokens"
    ) -> int:
        limit = self.settings.server.max_tokens_limit
        if model.context_length is not None:
            limit = min(limit, model.context_length)
        if asked is None:
            return min(default, limit)
        if asked > limit:
            raise InvalidRequest(
                f"{param} is too large: {asked}. This model supports at most {limit} "
                "completion tokens.",
                param=param,
            )
        return asked

    def _candidates(self, model: ModelSettings, needs: Needs) -> list[Backend]:
        candidates = self.router.candidates(model.id, needs)
        if not candidates:
            raise ModelNotFound(
                f"The model '{model.id}' is configured but no backend serves it.", param="model"
            )
        return candidates

    def _blocks(self, candidates: Sequence[Backend], text: str) -> PromptBlocks | None:
        """The prompt's blocks for prefix-aware routing: only where there is a choice to make,
        a candidate caches prefixes and the prompt fills a block (else nothing is hashed)."""
        if (
            len(text) < BLOCK_CHARS
            or len(candidates) < 2
            or not self.settings.routing.prefix_blocks
            or not any(b.capabilities.prefix_cache for b in candidates)
        ):
            return None
        return PromptBlocks.of(text)

    @staticmethod
    def _common_needs(body: _Body) -> dict[str, bool]:
        return {
            "seed": body.seed is not None,
            "logit_bias": bool(body.logit_bias),
            "penalties": bool(body.presence_penalty) or bool(body.frequency_penalty),
        }

    @staticmethod
    def _sampling(body: _Body, extras: dict[str, Any]) -> dict[str, Any]:
        return {
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
            "logit_bias": body.logit_bias or None,
            "presence_penalty": body.presence_penalty or None,
            "frequency_penalty": body.frequency_penalty or None,
            "extra": extras,
        }


def _tools(body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools to send upstream, checked against ``tool_choice``; None when the model may
    not call any (none given, or ``tool_choice: "none"``, which then needs no tool support)."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none":
            raise InvalidRequest(
                "tool_choice is only allowed when tools are specified.", param="tool_choice"
            )
        return None
    names = [tool.function.name for tool in body.tools]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise InvalidRequest(
                f"Tool names must be unique; '{name}' is given twice.",
                param=f"tools[{index}].function.name",
            )
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(
            f"tool_choice names the function '{choice.function.name}', which is not in tools.",
            param="tool_choice",
        )
    if choice == "none":
        return None
    return [tool.model_dump(mode="json", exclude_none=True) for tool in body.tools]


def _upstream_choice(choice: str | NamedToolChoice | None) -> str | dict[str, Any]:
    if isinstance(choice, NamedToolChoice):
        return choice.model_dump(mode="json")
    return choice or "auto"


def _choice_json(choice: str | ResponsesNamedChoice | None) -> str | dict[str, Any]:
    if isinstance(choice, ResponsesNamedChoice):
        return choice.model_dump(mode="json")
    return choice or "auto"


def _format_json(body: ResponsesRequest) -> dict[str, Any]:
    format_ = body.text.format if body.text is not None else None
    if format_ is None:
        return {"type": "text"}
    return format_.model_dump(mode="json", by_alias=True, exclude_none=True)


def _has_tool_turns(messages: Sequence[ChatMessage]) -> bool:
    return any(m.tool_calls or m.role == "tool" for m in messages)


def _chat_message(index: int, message: ChatMessageIn) -> ChatMessage:
    """A client's message as one turn: its text joined, with the tool calls it holds."""
    role, content = message.role, message.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = joined_text(content, ("text",), f"messages[{index}].content")
    if role == "tool":
        if not message.tool_call_id:
            raise InvalidRequest(
                "A message with role 'tool' must answer a tool call: tool_call_id is missing.",
                param=f"messages[{index}].tool_call_id",
            )
        return ChatMessage(role, text, tool_call_id=message.tool_call_id)
    if message.tool_calls and role != "assistant":
        raise InvalidRequest(
            "Only assistant messages hold tool_calls.", param=f"messages[{index}].tool_calls"
        )
    calls = tuple(
        ToolCall(call.id, call.function.name, call.function.arguments)
        for call in message.tool_calls or ()
    )
    return ChatMessage(role, text, tool_calls=calls)
