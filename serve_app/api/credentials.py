"""Who a request acts for: server keys, per-user keys and short-lived client secrets.

- A **server key** (`api_keys`) belongs to a trusted backend: it may act for any user it names
  (`?user=` on the WebSocket, `user` in REST bodies) and mint client secrets.
- A **user key** (`user_keys`, `user:key` pairs) acts only as its own user.
- A **client secret** (`ek_…`, minted with `POST /v1/realtime/client_secrets` by a server key) acts only as
  the user it was minted for, opens sessions until it expires (10 s – 2 h), carries an optional session
  configuration, and can be revoked. It is signed (HMAC-SHA256), so every router replica checks it without a
  lookup; revocations live in a shared list (`serve_app.cluster_state`).
- With no server or user keys configured the router is open (local use): anyone may act as any user.

A caller that names no user is `anonymous`, which has no long-term memory. Keys are compared by their
SHA-256 digests in constant time, never logged, and never used as metric labels: `Principal.label` is the
non-secret name for logs and limits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from actors.config import Settings
from actors.memory.journal import user_id_problem

ANONYMOUS = "anonymous"
CLIENT_SECRET_PREFIX = "ek_"
MIN_SECRET_TTL_S = 10
MAX_SECRET_TTL_S = 7200
DEFAULT_SECRET_TTL_S = 600
MAX_SECRET_CHARS = 8192  # it travels in a header or a WebSocket subprotocol


class CredentialError(Exception):
    """A request whose credential does not allow it: 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


def _missing() -> CredentialError:
    return CredentialError(
        401, "invalid_api_key", "invalid or missing API key: send Authorization: Bearer <key>"
    )


class Revocations(Protocol):
    """Revoked client secrets, shared by every router replica."""

    async def revoke(self, secret_id: str, expires_at: float) -> None: ...

    async def is_revoked(self, secret_id: str) -> bool: ...


@dataclass(frozen=True)
class Principal:
    label: str  # non-secret: "open", "server:1a2b3c4d", "user:alice", "secret:<id>"
    bound_user: str | None  # None: may act for any user it names
    may_administer: bool  # mint and revoke secrets, read /metrics
    secret_id: str | None = None
    session: dict[str, Any] | None = None  # the session configuration a client secret carries

    def user_for(self, requested: str | None) -> str:
        """The user this request acts as; 403 when a bound credential names someone else."""
        if self.bound_user is None:
            return requested or ANONYMOUS
        if requested and requested != self.bound_user:
            message = f"this credential acts only as its own user, not as {requested[:40]!r}"
            raise CredentialError(403, "user_mismatch", message, param="user")
        return self.bound_user


def acting_user(principal: Principal, requested: str | None, settings: Settings) -> str:
    """The user a request acts as (`Principal.user_for`); in full-Letta mode it must be named, since
    every reply comes from that user's own Letta agent and `anonymous` would be one agent for everyone."""
    user = principal.user_for(requested)
    if user == ANONYMOUS and settings.llm_engine == "letta":
        message = "full-Letta mode answers from each user's own Letta agent: name the user"
        raise CredentialError(400, "user_required", message, param="user")
    return user


@dataclass(frozen=True)
class ClientSecret:
    value: str
    secret_id: str
    user: str
    expires_at: int
    session: dict[str, Any] | None


def _digest(key: str) -> bytes:
    # Header values arrive as latin-1 text; any string hashes, so odd bytes are a 401, never a crash.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Credentials:
    """Checks presented keys and client secrets, mints and revokes secrets (see the module docstring)."""

    def __init__(
        self,
        *,
        server_keys: frozenset[str],
        user_keys: dict[str, str],
        signing_key: bytes,
        revocations: Revocations,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._server = [(d, f"server:{d.hex()[:8]}") for d in map(_digest, server_keys)]
        self._users = [(_digest(k), user) for k, user in user_keys.items()]
        self._signing_key = signing_key
        self.revocations = revocations
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, revocations: Revocations) -> Credentials:
        if settings.client_secret_signing_key is not None:
            signing = settings.client_secret_signing_key.get_secret_value().encode()
        else:
            # Every replica derives the same key from the same server keys.
            material = "\n".join(sorted(settings.bearer_keys)).encode()
            signing = hashlib.sha256(b"voice-agent client secrets\n" + material).digest()
        return cls(
            server_keys=settings.bearer_keys,
            user_keys=settings.user_key_map,
            signing_key=signing,
            revocations=revocations,
        )

    @property
    def open(self) -> bool:
        return not self._server and not self._users

    async def authenticate(self, presented: str | None) -> Principal:
        """The principal behind a presented key or client secret; CredentialError(401) otherwise."""
        if presented and presented.startswith(CLIENT_SECRET_PREFIX):
            return await self._client_secret(presented)
        if presented:
            digest = _digest(presented)
            # Compare against every key so the time taken says nothing about which matched.
            server = [label for d, label in self._server if hmac.compare_digest(d, digest)]
            users = [user for d, user in self._users if hmac.compare_digest(d, digest)]
            if server:
                return Principal(server[0], None, may_administer=True)
            if users:
                return Principal(f"user:{users[0]}", users[0], may_administer=False)
        if self.open:
            return Principal("open", None, may_administer=True)
        raise _missing()

    def mint(
        self, principal: Principal, user: str, ttl_s: int, session: dict[str, Any] | None
    ) -> ClientSecret:
        if not principal.may_administer:
            raise CredentialError(403, "permission_denied", "only a server key may mint client secrets")
        if (problem := user_id_problem(user)) is not None:
            raise CredentialError(400, "invalid_user", problem)
        secret_id = uuid.uuid4().hex
        expires_at = int(self._clock()) + ttl_s
        claims: dict[str, Any] = {"id": secret_id, "u": user, "exp": expires_at}
        if session:
            claims["s"] = session
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        value = f"{CLIENT_SECRET_PREFIX}{payload}.{self._sign(payload)}"
        if len(value) > MAX_SECRET_CHARS:
            raise CredentialError(400, "session_too_large", "the session configuration is too large")
        return ClientSecret(value, secret_id, user, expires_at, session)

    async def revoke(self, principal: Principal, value: str) -> None:
        """Revoke a client secret: no new session or request with it; open sessions are closed."""
        if not principal.may_administer:
            raise CredentialError(403, "permission_denied", "only a server key may revoke client secrets")
        try:
            claims = self._verified_claims(value)
        except CredentialError as exc:
            raise CredentialError(
                400, "invalid_value", "not a client secret of this service", "value"
            ) from exc
        await self.revocations.revoke(claims["id"], float(claims["exp"]))

    async def still_valid(self, principal: Principal) -> bool:
        """False once the client secret behind an open session has been revoked (expiry does not end it)."""
        return principal.secret_id is None or not await self.revocations.is_revoked(principal.secret_id)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._signing_key, payload.encode(), hashlib.sha256).digest())

    def _verified_claims(self, value: str) -> dict[str, Any]:
        payload, _, signature = value.removeprefix(CLIENT_SECRET_PREFIX).partition(".")
        if len(value) > MAX_SECRET_CHARS or not hmac.compare_digest(
            self._sign(payload).encode(), signature.encode("utf-8", "surrogatepass")
        ):
            raise CredentialError(401, "invalid_api_key", "invalid client secret")
        claims: dict[str, Any] = json.loads(_unb64(payload))
        return claims

    async def _client_secret(self, value: str) -> Principal:
        claims = self._verified_claims(value)
        if claims["exp"] <= self._clock():
            raise CredentialError(
                401, "expired_client_secret", "the client secret has expired: mint a new one"
            )
        if await self.revocations.is_revoked(claims["id"]):
            raise CredentialError(401, "revoked_client_secret", "the client secret has been revoked")
        return Principal(
            f"secret:{claims['id'][:12]}",
            claims["u"],
            may_administer=False,
            secret_id=claims["id"],
            session=claims.get("s"),
        )


class LocalRevocations:
    """Revocations held in this process: the single-process app, and the state of the shared actor."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._until: dict[str, float] = {}  # secret id → its expiry; forgotten after it
        self._clock = clock

    async def revoke(self, secret_id: str, expires_at: float) -> None:
        self.add(secret_id, expires_at)

    async def is_revoked(self, secret_id: str) -> bool:
        return secret_id in self._until

    def add(self, secret_id: str, expires_at: float) -> None:
        now = self._clock()
        for stale in [s for s, until in self._until.items() if until <= now]:
            del self._until[stale]
        if expires_at > now:
            self._until[secret_id] = expires_at

    def snapshot(self) -> dict[str, float]:
        return dict(self._until)
