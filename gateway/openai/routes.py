"""The OpenAI-compatible routes: parse, call one serving function, answer. Nothing else."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import CurrentPrincipal, State
from gateway.errors import Forbidden, ModelNotFound
from gateway.http import ORJSONResponse, read_body, request_meta
from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, parse_body

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request, principal: CurrentPrincipal, state: State) -> Response:
    """Text completions, streamed or not."""
    body = parse_body(CompletionRequest, await read_body(request, state))
    return await state.serving.completions(principal, body, request_meta(request))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, principal: CurrentPrincipal, state: State) -> Response:
    """Chat completions, streamed or not."""
    body = parse_body(ChatCompletionRequest, await read_body(request, state))
    return await state.serving.chat(principal, body, request_meta(request))


def _model_json(model_id: str, created: int) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "tollgate"}


@router.get("/v1/models")
async def list_models(principal: CurrentPrincipal, state: State) -> ORJSONResponse:
    """The models the caller's key may use."""
    models = [m for m in state.serving.jobs.models if principal.tenant.may_use(m.id)]
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
