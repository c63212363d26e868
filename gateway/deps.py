"""FastAPI dependencies as type aliases: the app state, the caller, the admin check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from gateway.errors import GatewayError, Unauthenticated
from gateway.state import AppState
from gateway.tenancy.models import Principal


def get_app_state(request: Request) -> AppState:
    """The app's parts (set by ``create_app``)."""
    state: AppState = request.app.state.tollgate
    return state


async def get_state(request: Request) -> AppState:
    """``get_app_state`` as a dependency (async: a sync one would hop to a thread)."""
    return get_app_state(request)


def bearer_token(request: Request) -> str:
    """The secret of ``Authorization: Bearer <secret>``; raises ``Unauthenticated``."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthenticated("Malformed Authorization header; expected 'Bearer <key>'.")
    return secret


State = Annotated[AppState, Depends(get_state)]


async def authenticate(request: Request, state: State) -> Principal:
    """The tenant and key behind the request's bearer key; a refusal is counted (by the
    error the client gets, never by the key)."""
    try:
        principal = await state.store.authenticate(bearer_token(request))
    except GatewayError as exc:
        state.telemetry.auth_failed(exc)
        raise
    request.state.principal = principal
    return principal


async def require_admin(request: Request, state: State) -> None:
    """Only the admin key passes; compared in constant time."""
    if not hmac.compare_digest(bearer_token(request).encode(), state.admin_key.encode()):
        raise Unauthenticated("This endpoint needs the admin key.")


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
AdminOnly = Depends(require_admin)
