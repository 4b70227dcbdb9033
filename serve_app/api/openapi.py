"""The OpenAPI 3.1 document of the REST API, built from the same pydantic models the handlers use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from serve_app.api.rest_models import (
    TRANSCRIPTION_FORM_SCHEMA,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ClientSecret,
    ClientSecretRequest,
    ClientSecretRevoked,
    ClientSecretRevokeRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechRequest,
    Transcription,
    TranscriptionVerbose,
)

_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (ChatCompletionRequest, "validation"),
    (SpeechRequest, "validation"),
    (ChatCompletion, "serialization"),
    (ChatCompletionChunk, "serialization"),
    (ModelList, "serialization"),
    (ModelCard, "serialization"),
    (Transcription, "serialization"),
    (TranscriptionVerbose, "serialization"),
    (ErrorResponse, "serialization"),
    (SpeechAudioDelta, "serialization"),
    (SpeechAudioDone, "serialization"),
    (ClientSecretRequest, "validation"),
    (ClientSecret, "serialization"),
    (ClientSecretRevokeRequest, "validation"),
    (ClientSecretRevoked, "serialization"),
]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


_COMMON_ERRORS = {
    "400": _error("Bad request: malformed JSON, a wrong type or value, an unsupported option"),
    "401": _error("Missing, wrong, expired or revoked API key or client secret"),
    "403": _error("The credential may not do this: act as another user, mint secrets, read metrics"),
    "413": _error("Request body larger than the configured limit"),
    "500": _error("An unexpected server failure; the details are logged, not returned"),
    "502": _error("A stage (STT, LLM or TTS engine) failed"),
}


def _sse_events(data: str) -> dict[str, Any]:
    """A text/event-stream body: one schema per server-sent event, as SSE tooling reads it."""
    return {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": {"type": "string", "description": data}},
        }
    }


def _json_body(ref: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def openapi_document() -> dict[str, Any]:
    refs, defs = models_json_schema(_MODELS, ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        return dict(refs[(model, mode)])

    def ok(content: dict[str, Any], description: str = "OK") -> dict[str, Any]:
        return {"200": {"description": description, "content": content}, **_COMMON_ERRORS}

    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Voice agent: OpenAI-compatible REST API",
            "version": "1.0.0",
            "description": "A subset of OpenAI's REST API on the voice agent's stages. Errors use OpenAI's "
            "shape. Unknown request fields are ignored; unsupported ones get a 400 that says so.",
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "summary": "Chat completion, streamed (SSE) or not; the `user`'s memory is in the prompt",
                    "requestBody": _json_body(ref(ChatCompletionRequest, "validation")),
                    "responses": ok(
                        {
                            "application/json": {"schema": ref(ChatCompletion)},
                            "text/event-stream": _sse_events(
                                "A ChatCompletionChunk as JSON (or an ErrorResponse if a stage fails "
                                "mid-stream), then [DONE]"
                            ),
                        }
                    ),
                }
            },
            "/v1/audio/transcriptions": {
                "post": {
                    "operationId": "createTranscription",
                    "summary": "Transcribe an uploaded recording with the STT stage",
                    "requestBody": {
                        "required": True,
                        "content": {"multipart/form-data": {"schema": TRANSCRIPTION_FORM_SCHEMA}},
                    },
                    "responses": ok(
                        {
                            "application/json": {
                                "schema": {"anyOf": [ref(Transcription), ref(TranscriptionVerbose)]}
                            },
                            "text/plain": {"schema": {"type": "string"}},
                        }
                    ),
                }
            },
            "/v1/audio/speech": {
                "post": {
                    "operationId": "createSpeech",
                    "summary": "Speech from text, streamed while it is synthesised (24 kHz mono PCM16)",
                    "requestBody": _json_body(ref(SpeechRequest, "validation")),
                    "responses": ok(
                        {
                            "audio/wav": binary,
                            "audio/pcm": binary,
                            "text/event-stream": _sse_events(
                                "With stream_format sse: SpeechAudioDelta events as JSON, then one "
                                "SpeechAudioDone (or an ErrorResponse if the stage fails mid-stream)"
                            ),
                        }
                    ),
                }
            },
            "/v1/realtime/client_secrets": {
                "post": {
                    "operationId": "createRealtimeClientSecret",
                    "summary": "A short-lived secret bound to one user, for browsers and phones (server key)",
                    "requestBody": _json_body(ref(ClientSecretRequest, "validation")),
                    "responses": ok({"application/json": {"schema": ref(ClientSecret)}}),
                }
            },
            "/v1/realtime/client_secrets/revoke": {
                "post": {
                    "operationId": "revokeRealtimeClientSecret",
                    "summary": "Revoke a client secret: no new use, and its open sessions are closed",
                    "requestBody": _json_body(ref(ClientSecretRevokeRequest, "validation")),
                    "responses": ok({"application/json": {"schema": ref(ClientSecretRevoked)}}),
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The models the LLM, STT and TTS stages serve",
                    "responses": ok({"application/json": {"schema": ref(ModelList)}}),
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "summary": "One model",
                    "parameters": [
                        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        **ok({"application/json": {"schema": ref(ModelCard)}}),
                        "404": _error("No such model"),
                    },
                }
            },
        },
    }
