"""The OpenAI-compatible routes: parse, call one serving function, answer. Nothing else."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from gateway.deps import CurrentPrincipal, State, authenticate, get_app_state
from gateway.errors import Forbidden, ModelNotFound
from gateway.http import ORJSONResponse, read_body, request_meta, require_json
from gateway.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponsesRequest,
    parse_body,
)

router = APIRouter()


# The generation routes are plain Starlette routes: FastAPI's dependency resolution
# costs more per request than everything else the route does (measured with
# `tollgate bench overhead`), and these are the routes a gateway is judged by.
async def completions(request: Request) -> Response:
    """Text completions, streamed or not."""
    state = get_app_state(request)
    principal = await authenticate(request, state)
    require_json(request)
    body = parse_body(CompletionRequest, await read_body(request, state))
    return await state.serving.completions(principal, body, request_meta(request))


async def chat_completions(request: Request) -> Response:
    """Chat completions, streamed or not."""
    state = get_app_state(request)
    principal = await authenticate(request, state)
    require_json(request)
    body = parse_body(ChatCompletionRequest, await read_body(request, state))
    return await state.serving.chat(principal, body, request_meta(request))


async def responses(request: Request) -> Response:
    """The Responses API, stateless, streamed or not."""
    state = get_app_state(request)
    principal = await authenticate(request, state)
    require_json(request)
    body = parse_body(ResponsesRequest, await read_body(request, state))
    return await state.serving.responses(principal, body, request_meta(request))


class _NamedRoute(Route):
    """A Starlette route that, like FastAPI's, puts itself in ``scope["route"]`` (span names)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


generation_routes = [
    _NamedRoute("/v1/completions", completions, methods=["POST"]),
    _NamedRoute("/v1/chat/completions", chat_completions, methods=["POST"]),
    _NamedRoute("/v1/responses", responses, methods=["POST"]),
]


def _model_json(model_id: str, created: int) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "tollgate"}


@router.get("/v1/models")
async def list_models(principal: CurrentPrincipal, state: State) -> ORJSONResponse:
    """The models the caller's key may use."""
    models = [m for m in state.serving.jobs.models if principal.may_use(m.id)]
    data = [_model_json(m.id, state.started_at) for m in models]
    return ORJSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, principal: CurrentPrincipal, state: State) -> ORJSONResponse:
    """One model, if it exists and the caller may use it (404 otherwise)."""
    try:
        model = state.serving.jobs.resolve(model_id, principal)
    except Forbidden:  # a model the key may not use is not listed, so it is not found
        raise ModelNotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
        ) from None
    return ORJSONResponse(_model_json(model.id, state.started_at))
