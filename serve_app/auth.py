"""Bearer-key checks shared by the WebSocket and REST endpoints."""

from __future__ import annotations

import hmac


def bearer_token(authorization: str | None, query_key: str | None = None) -> str | None:
    """The key from `Authorization: Bearer <key>`, else the query-string key (browsers' WebSocket)."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return query_key


def authorized(keys: frozenset[str], presented: str | None) -> bool:
    """True when no keys are configured (local use) or `presented` is one of them (constant time)."""
    if not keys:
        return True
    return presented is not None and any(hmac.compare_digest(presented, k) for k in keys)
