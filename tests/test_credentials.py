"""Identity bound to credentials: server keys, per-user keys and client secrets, through every path a
client can take (Realtime WebSocket, REST chat, transcriptions, speech, models, metrics), with the
official `openai` SDK where it speaks the endpoint."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI
from starlette.websockets import WebSocketDisconnect

from actors.config import Settings
from serve_app.api import realtime
from serve_app.api.credentials import CredentialError, Credentials, LocalRevocations
from testkit.fakes import tone, user_text_event
from testkit.harness import KEY, Harness

USER_KEYS = "ada:ada-key,bob@example.com:bob-key"


@pytest.fixture
def api() -> Iterator[Harness]:
    harness = Harness(user_keys=USER_KEYS)
    with harness.http:
        yield harness


def sdk(api: Harness, key: str) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=key, http_client=api.http, max_retries=0)


def mint(api: Harness, user: str | None, **params: Any) -> str:
    extra = {"user": user} if user else None
    return sdk(api, KEY).realtime.client_secrets.create(extra_body=extra, **params).value


def open_realtime(api: Harness, *, key: str | None = None, query: str = "", subprotocols=None):
    # Bytes: a hostile client may send any UTF-8 in the header.
    headers = {"Authorization": f"Bearer {key}".encode()} if key else {}
    return api.http.websocket_connect(f"/v1/realtime{query}", headers=headers, subprotocols=subprotocols)


def refused(api: Harness, **kwargs: Any) -> tuple[dict, WebSocketDisconnect]:
    """A refused WebSocket: the one error event it got, and its close."""
    with open_realtime(api, **kwargs) as ws:
        error = json.loads(ws.receive_text())
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    return error, closed.value


def typed_turn(ws) -> dict:
    ws.send_text(user_text_event("hello"))
    ws.send_text(json.dumps({"type": "response.create"}))
    while (event := json.loads(ws.receive_text()))["type"] != "response.done":
        assert event["type"] != "error", event
    return event["response"]


def wav_bytes() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(tone(500, rate=16_000))
    return out.getvalue()


# ------------------------------------------------------------------------------------- WebSocket


def test_a_user_key_acts_only_as_its_user_on_the_websocket(api: Harness) -> None:
    with open_realtime(api, key="ada-key") as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        assert typed_turn(ws)["status"] == "completed"
    assert api.memory_reads and set(api.memory_reads) == {"ada"}
    assert api.sink.turns[-1].user_id == "ada"

    error, closed = refused(api, key="ada-key", query="?user=bob@example.com")
    assert error["type"] == "error" and error["error"]["code"] == "user_mismatch"
    assert closed.code == 1008 and "own user" in closed.reason
    assert "bob@example.com" not in api.memory_reads


def test_a_server_key_acts_for_the_user_it_names(api: Harness) -> None:
    with open_realtime(api, key=KEY, query="?user=bob@example.com") as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        assert typed_turn(ws)["status"] == "completed"
    assert set(api.memory_reads) == {"bob@example.com"}


def test_no_user_named_means_no_long_term_memory(api: Harness) -> None:
    with open_realtime(api, key=KEY) as ws:
        json.loads(ws.receive_text())
        assert typed_turn(ws)["status"] == "completed"
    assert api.memory_reads == [] and not api.sink.turns  # `anonymous` shares nobody's memory


@pytest.mark.parametrize(
    ("key", "code"),
    [(None, "invalid_api_key"), ("wrong", "invalid_api_key"), ("é", "invalid_api_key")],
)
def test_a_missing_or_wrong_key_is_refused_with_the_reason(api: Harness, key: str | None, code: str) -> None:
    error, closed = refused(api, key=key)
    assert error["error"]["code"] == code
    assert closed.code == 1008 and "API key" in closed.reason


def test_a_malformed_user_id_is_refused_with_the_reason(api: Harness) -> None:
    error, closed = refused(api, key=KEY, query="?user=../etc")
    assert error["error"]["code"] == "invalid_user"
    assert closed.code == 1008 and "user id" in closed.reason


def test_a_client_secret_opens_sessions_as_its_user_with_its_configuration(api: Harness) -> None:
    secret = sdk(api, KEY).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 120},
        session={"type": "realtime", "instructions": "Speak like a pirate.", "output_modalities": ["text"]},
        extra_body={"user": "ada"},
    )
    assert secret.value.startswith("ek_") and secret.session.instructions == "Speak like a pirate."
    # A browser's way: the secret in a subprotocol, next to "realtime".
    offered = ["realtime", f"openai-insecure-api-key.{secret.value}"]
    with open_realtime(api, subprotocols=offered) as ws:
        assert ws.accepted_subprotocol == "realtime"
        created = json.loads(ws.receive_text())
        assert created["session"]["instructions"] == "Speak like a pirate."
        assert created["session"]["output_modalities"] == ["text"]
        assert typed_turn(ws)["status"] == "completed"
    assert set(api.memory_reads) == {"ada"}

    error, closed = refused(api, key=secret.value, query="?user=bob@example.com")
    assert error["error"]["code"] == "user_mismatch" and closed.code == 1008


def test_an_expired_client_secret_opens_nothing_but_its_open_session_goes_on(api: Harness) -> None:
    settings = Settings(api_keys=KEY, user_keys=USER_KEYS)
    issued_long_ago = Credentials.from_settings(settings, LocalRevocations())
    issued_long_ago._clock = lambda: 0.0  # minted at the epoch: long expired
    server = asyncio.run(issued_long_ago.authenticate(KEY))
    expired = issued_long_ago.mint(server, "ada", 60, None).value
    error, closed = refused(api, key=expired)
    assert error["error"]["code"] == "expired_client_secret" and closed.code == 1008
    with pytest.raises(openai.AuthenticationError, match="expired"):
        sdk(api, expired).models.list()


def test_a_revoked_client_secret_is_refused_and_its_open_session_closed(
    api: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(realtime, "REVOCATION_CHECK_S", 0.05)
    secret = mint(api, "ada")
    with open_realtime(api, key=secret) as ws:
        assert json.loads(ws.receive_text())["type"] == "session.created"
        revoked = api.http.post(
            "/v1/realtime/client_secrets/revoke",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"value": secret},
        )
        assert revoked.status_code == 200 and revoked.json() == {"revoked": True}
        error = json.loads(ws.receive_text())
        assert error["error"]["code"] == "revoked_client_secret"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1008
    error, _ = refused(api, key=secret)
    assert error["error"]["code"] == "revoked_client_secret"
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        sdk(api, secret).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_a_forged_client_secret_is_refused(api: Harness) -> None:
    secret = mint(api, "ada")
    payload, _, signature = secret.removeprefix("ek_").partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["u"] = "bob@example.com"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    error, _ = refused(api, key=f"ek_{forged_payload}.{signature}")
    assert error["error"]["code"] == "invalid_api_key"
    assert "bob@example.com" not in api.memory_reads


# ------------------------------------------------------------------------------------------ REST


def test_rest_chat_binds_the_user_to_the_credential(api: Harness) -> None:
    messages = [{"role": "user", "content": "what do you remember?"}]
    ada = sdk(api, "ada-key")
    ada.chat.completions.create(model="m", messages=messages)  # no user named: ada
    ada.chat.completions.create(model="m", messages=messages, user="ada")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ada.chat.completions.create(model="m", messages=messages, user="bob@example.com")
    assert denied.value.body["code"] == "user_mismatch" and denied.value.body["param"] == "user"

    secret = sdk(api, mint(api, "bob@example.com"))
    assert list(secret.chat.completions.create(model="m", messages=messages, stream=True))
    with pytest.raises(openai.PermissionDeniedError):
        secret.chat.completions.create(model="m", messages=messages, user="ada")

    sdk(api, KEY).chat.completions.create(model="m", messages=messages, user="bob@example.com")
    assert api.memory_reads == ["ada", "ada", "bob@example.com", "bob@example.com"]
    assert [t.user_id for t in api.sink.turns][-2:] == ["bob@example.com", "bob@example.com"]


def test_user_credentials_reach_the_stages_but_not_administration(api: Harness) -> None:
    for key in ("ada-key", mint(api, "ada")):
        client = sdk(api, key)
        assert client.models.list().data
        assert client.audio.transcriptions.create(model="m", file=("a.wav", wav_bytes())).text
        assert client.audio.speech.create(model="m", voice="en-us", input="hi").content
        with pytest.raises(openai.PermissionDeniedError):
            client.realtime.client_secrets.create(extra_body={"user": "ada"})
        metrics = api.http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert metrics.status_code == 403 and metrics.json()["error"]["code"] == "permission_denied"
    assert api.http.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert api.http.get("/metrics").status_code == 401
    assert api.http.get("/healthz").status_code == 200  # liveness needs no key


@pytest.mark.parametrize("key", [None, "wrong", "é", "ek_forged.nope"])
def test_rest_refuses_a_bad_credential_with_401(api: Harness, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}".encode()} if key else {}
    response = api.http.get("/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_minting_validates_its_request(api: Harness) -> None:
    server = sdk(api, KEY)
    with pytest.raises(openai.BadRequestError, match="user id"):
        server.realtime.client_secrets.create(extra_body={"user": "../etc"})
    with pytest.raises(openai.BadRequestError):
        server.realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 7201})
    with pytest.raises(openai.BadRequestError, match="max_output_tokens"):
        server.realtime.client_secrets.create(session={"type": "realtime", "max_output_tokens": 0})
    with pytest.raises(openai.BadRequestError, match="'realtime' or 'transcription'"):
        server.realtime.client_secrets.create(session={"type": "speech"})  # type: ignore[arg-type,misc]
    # A transcription session's secret (a browser streaming speech to text) is a secret like any other.
    transcribing = server.realtime.client_secrets.create(session={"type": "transcription"})
    assert transcribing.session is not None and transcribing.session.type == "transcription"
    revoke = api.http.post(
        "/v1/realtime/client_secrets/revoke", headers={"Authorization": f"Bearer {KEY}"}, json={"value": "x"}
    )
    assert revoke.status_code == 400


def test_keys_and_secrets_never_reach_the_log(api: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    secret = mint(api, "ada")
    with open_realtime(api, key=secret) as ws:
        json.loads(ws.receive_text())
        typed_turn(ws)
    refused(api, key="wrong-key-value")
    text = caplog.text
    assert "minted by server:" in text  # the log names credentials by a non-secret label
    for value in (secret, secret.split(".")[1], KEY, "ada-key", "wrong-key-value"):
        assert value not in text


# ------------------------------------------------------------------------------------------ units


def test_user_keys_are_parsed_and_malformed_entries_refused_without_echoing_them() -> None:
    assert Settings(user_keys="ada:k1, bob@example.com:k:2").user_key_map == {
        "k1": "ada",
        "2": "bob@example.com:k",
    }
    with pytest.raises(ValueError, match="entry 2") as bad:
        Settings(user_keys="ada:k1,not a pair")
    assert "not a pair" not in str(bad.value)


async def test_open_mode_lets_anyone_act_as_anyone_but_still_checks_secrets() -> None:
    creds = Credentials.from_settings(Settings(), LocalRevocations())
    anyone = await creds.authenticate(None)
    assert anyone.user_for("ada") == "ada" and anyone.may_administer
    secret = creds.mint(anyone, "ada", 60, None)
    bound = await creds.authenticate(secret.value)
    assert bound.user_for(None) == "ada"
    with pytest.raises(CredentialError) as mismatch:
        bound.user_for("bob")
    assert mismatch.value.status == 403


def test_full_letta_mode_needs_a_named_user_since_each_reply_is_that_users_agent() -> None:
    full_letta = Harness(user_keys=USER_KEYS, llm_engine="letta")
    with full_letta.http:
        error, closed = refused(full_letta, key=KEY)
        assert error["error"]["code"] == "user_required" and closed.code == 1008
        with pytest.raises(openai.BadRequestError, match="name the user"):
            sdk(full_letta, KEY).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        with open_realtime(full_letta, key="ada-key") as ws:  # a user key names its user
            assert json.loads(ws.receive_text())["type"] == "session.created"
