"""Where a request carries its credential, and how a refused one is answered
(see `serve_app.api.credentials`).

REST: `Authorization: Bearer <key>` → 401/403 in OpenAI's error shape. WebSocket: the same header, or,
for browsers (which cannot set headers on a WebSocket), the subprotocol `openai-insecure-api-key.<key>`
or the `api_key` query parameter. A refused WebSocket is accepted, sent one `error` event that says why,
and closed with code 1008 (policy violation) and the same reason, which a browser can read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from serve_app.api.admission import Refused
from serve_app.api.credentials import CredentialError
from serve_app.api.protocol import ProtocolError, error_event

KEY_SUBPROTOCOL = "openai-insecure-api-key."
POLICY_VIOLATION = 1008
SERVICE_RESTART = 1012  # this server is going away: reconnect
TRY_AGAIN_LATER = 1013
MAX_CLOSE_REASON_BYTES = 123  # the WebSocket protocol's limit


def bearer_token(authorization: str | None, query_key: str | None = None) -> str | None:
    """The key from `Authorization: Bearer <key>`, else the query-string key (browsers' WebSocket)."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return query_key


def websocket_subprotocols(scope: Mapping[str, Any]) -> list[str]:
    return [str(p) for p in scope.get("subprotocols") or []]


def websocket_key(headers: Mapping[str, str], query: Mapping[str, str], offered: list[str]) -> str | None:
    keyed = (p.removeprefix(KEY_SUBPROTOCOL) for p in offered if p.startswith(KEY_SUBPROTOCOL))
    in_subprotocol = next(keyed, None)
    return bearer_token(headers.get("authorization"), in_subprotocol or query.get("api_key"))


def credential_error_response(exc: CredentialError) -> JSONResponse:
    kind = "invalid_request_error" if exc.status in (400, 401) else "permission_error"
    body = {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.code}}
    return JSONResponse(body, status_code=exc.status)


def close_reason(message: str) -> str:
    return message.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


async def refuse_websocket(
    websocket: WebSocket, exc: CredentialError | ProtocolError | Refused, offered: list[str]
) -> None:
    """Accept, say why in one `error` event, close: 1013 when the server is full, else 1008."""
    message = exc.message
    if isinstance(exc, Refused):
        message = f"{message} (retry after {exc.retry_after_s} s)"
    busy = isinstance(exc, Refused) and exc.status == 503
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    await websocket.send_text(json.dumps(error_event(exc.code, message)))
    await websocket.close(code=TRY_AGAIN_LATER if busy else POLICY_VIOLATION, reason=close_reason(message))


def refused_response(exc: Refused) -> JSONResponse:
    body = {"error": {"message": exc.message, "type": "rate_limit_error", "param": None, "code": exc.code}}
    if exc.status == 503:
        body["error"]["type"] = "server_error"
    return JSONResponse(body, status_code=exc.status, headers={"Retry-After": str(exc.retry_after_s)})
