"""FastAPI dependencies of the routes: the shared `Gateway`, API-key checks, concurrency slots."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.errors import APIError
from server.gateway import Gateway

_bearer = HTTPBearer(auto_error=False, description="An API key, when the server requires one.")


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(gateway)]


async def authenticate(
    gw: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    keys = gw.config.api_keys
    if not keys:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not any(hmac.compare_digest(given, key.encode()) for key in keys):
        raise APIError(
            401,
            "a valid API key is required (Authorization: Bearer <key>)",
            code="invalid_api_key",
            error_type="invalid_request_error",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def concurrency_slot(gw: GatewayDep) -> AsyncIterator[None]:
    """Held until the response is fully sent (streams included); refuses when all are taken."""
    limits = gw.config.limits
    if gw.active >= limits.max_concurrent_requests:
        raise APIError(
            429,
            f"the server is at its limit of {limits.max_concurrent_requests} concurrent "
            f"requests; retry after {limits.retry_after_s} s",
            code="too_many_concurrent_requests",
            headers={"Retry-After": str(limits.retry_after_s)},
        )
    gw.active += 1
    try:
        yield
    finally:
        gw.active -= 1


#: What every generation endpoint requires: a key (when configured) and a free slot.
GUARDED = [Depends(authenticate), Depends(concurrency_slot, scope="request")]
