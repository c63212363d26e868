"""``/openapi.json`` as clients meet the API: every route, and every error in OpenAI's envelope.

The generation routes (completions, chat completions, responses) are served by
``RequestContext`` past FastAPI's router (their overhead is what a gateway is judged by), so
FastAPI never sees them; they are described here from the same pydantic models that parse
their bodies, with the fields of a non-streamed answer. FastAPI's 422 answers are described
as the 400 envelope the gateway actually sends.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, ResponsesRequest

_REF = "#/components/schemas/{model}"
_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "OpenAI's error envelope.",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}
_GENERATION_ERRORS = {
    "400": "Invalid request (the param names the field)",
    "401": "Missing or invalid API key",
    "403": "The key may not use this model",
    "404": "No such model",
    "413": "Request body too large",
    "429": "Rate limit or budget reached",
    "502": "The backend answered something unreadable",
    "503": "No backend (or the tenancy store) can serve this now",
    "504": "The backend did not answer in time",
}


# The fields every non-streamed answer of each generation route carries (OpenAI's shapes).
_CHOICES = ["id", "object", "created", "model", "choices", "usage"]
_RESPONSE = ["id", "object", "created_at", "status", "model", "output", "usage"]


def install_openapi(app: FastAPI) -> None:
    """Serve the schema below as ``app.openapi()`` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema of the routed endpoints, plus the generation routes and the envelope."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for operations in schema["paths"].values():
        for operation in operations.values():
            _envelope_errors(operation)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = _ERROR_SCHEMA
    generation = {
        "/v1/completions": _generation(
            "Create a completion", CompletionRequest, _CHOICES, schemas
        ),
        "/v1/chat/completions": _generation(
            "Create a chat completion", ChatCompletionRequest, _CHOICES, schemas
        ),
        "/v1/responses": _generation("Create a response", ResponsesRequest, _RESPONSE, schemas),
    }
    schema["paths"] = {**{path: {"post": op} for path, op in generation.items()}, **schema["paths"]}
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer": []}]
    return schema


def _envelope_errors(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    if responses.pop("422", None) is not None:
        responses["400"] = _error_response("Invalid request (the param names the field)")
    responses.setdefault("401", _error_response("Missing or invalid key"))


def _generation(
    summary: str, model: type[BaseModel], answer: list[str], schemas: dict[str, Any]
) -> dict[str, Any]:
    name = model.__name__
    body = model.model_json_schema(ref_template=_REF)
    schemas.update(body.pop("$defs", {}))
    schemas[name] = body
    ok = {
        "description": "The answer as JSON, or as server-sent events when `stream` is true",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": answer,
                    "properties": {name: {} for name in answer},
                }
            },
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
    errors = {status: _error_response(text) for status, text in _GENERATION_ERRORS.items()}
    return {
        "summary": summary,
        "operationId": summary.lower().replace(" a ", " ").replace(" ", "_"),
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}},
        },
        "responses": {"200": ok, **errors},
    }


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}
