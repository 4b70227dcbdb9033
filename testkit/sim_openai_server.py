"""A latency-faithful stand-in for the OpenAI HTTP API, for tests and benchmarks without the internet.

Knobs: time to first chat token (`ttft_ms`) and tokens per second. It speaks the real wire formats
the engines use: Chat Completions streamed as SSE
(`data: {chat.completion.chunk}` ... `data: [DONE]`), /v1/audio/speech streaming raw 24 kHz PCM16,
/v1/audio/transcriptions taking a multipart upload and returning {"text": ...}, and /v1/embeddings
with deterministic hash-based vectors.

Tool calls, when a chat request offers `tools`, come back as OpenAI streams them (a first piece with the
call's `index`, `id`, `type` and name, then the arguments JSON in pieces of `argument_chunk_chars`;
finish_reason "tool_calls"), or whole in `message.tool_calls` when not streamed. What is called:

- `tool_choice` "none": nothing. A named function: that tool. `send_message` offered (Letta's agents): a
  call to it whose `message` argument carries the reply.
- Markers in the newest user message, as a test writes them: `call:NAME` or `call:NAME{"city": "Paris"}`
  calls the offered tool NAME once (with those arguments, else plain values fitting its schema); several
  markers are parallel calls (the first only with `parallel_tool_calls: false`); `loop:NAME` calls it
  again on every round, until `tool_choice` is "none" (for round limits). Markers naming tools not
  offered are ignored.
- `tool_choice` "required" and no marker: the first tool.
- `tool_preamble`, when set, is said in words before the calls.
- When the prompt ends with tool results, the answer is in words: `tool_answer` with the results.

    server = start_sim_openai_server(SimOpenAIConfig(reply="Hello there."))
    client = AsyncOpenAI(api_key="test", base_url=server.base_url)
    ...
    server.stop()

As its own process (for benchmarks):

    python -m testkit.sim_openai_server --port 9100 --ttft-ms 300 --tokens-per-s 50 --reply "Hi there."
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import hashlib
import io
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class SimOpenAIConfig:
    reply: str = "Hello! How can I help you today?"
    ttft_ms: float = 0.0  # delay before the first chat token
    tokens_per_s: float = 1000.0
    transcript: str = "hello world"
    speech_ms_per_char: float = 60.0  # length of the synthesised tone per input character
    speech_chunk_bytes: int = 4801  # odd on purpose: real HTTP chunks ignore sample boundaries
    speech_chunk_delay_ms: float = 0.0
    api_key: str | None = None  # when set, requests must carry "Authorization: Bearer <api_key>"
    tool_preamble: str = ""  # words said before tool calls
    tool_answer: str = "Here is what I found: {results}"  # the answer to tool results ({results}: joined)
    argument_chunk_chars: int = 12  # a call's arguments stream in pieces this long


@dataclass
class SimOpenAIServer:
    base_url: str
    config: SimOpenAIConfig
    requests: list[dict[str, Any]] = field(default_factory=list)  # (path, parsed body) per request
    streams_closed_early: int = 0  # streamed responses whose client went away before the end
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)


def _tokens(text: str) -> list[str]:
    # Word-ish pieces with their leading space, like a BPE tokenizer's deltas.
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def _embedding(text: str, dim: int) -> np.ndarray:
    # Deterministic unit vector seeded by the text's hash: equal texts embed equally, across processes.
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


def _tool_name(tool: dict[str, Any]) -> str:
    return str(tool.get("function", {}).get("name", ""))


def _tool_arguments(tool: dict[str, Any], reply: str) -> dict[str, Any]:
    """Arguments satisfying the tool's JSON schema: the reply in `message`, plain values elsewhere."""
    params = tool.get("function", {}).get("parameters") or {}
    props: dict[str, Any] = params.get("properties") or {}
    args: dict[str, Any] = {}
    for name in [*params.get("required", []), *(["message"] if "message" in props else [])]:
        kind = props.get(name, {}).get("type", "string")
        if name == "message" or kind == "string":
            args[name] = reply if name == "message" else f"Replying to the user: {reply}"
        else:
            args[name] = {"boolean": False, "integer": 0, "number": 0, "array": [], "object": {}}.get(kind)
    return args


MARKER = re.compile(r"\b(call|loop):([A-Za-z0-9_-]{1,64})")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _marked_calls(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any] | None]]:
    """The calls the newest user message asks for by marker (see the module docstring): name and
    arguments (None: made to fit the schema). `call:` markers only while that message is unanswered."""
    newest = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if newest is None:
        return []
    text = _text(messages[newest])
    answered = newest < len(messages) - 1
    calls: list[tuple[str, dict[str, Any] | None]] = []
    for match in MARKER.finditer(text):
        if match.group(1) == "call" and answered:
            continue
        arguments = None
        if text.startswith("{", match.end()):
            try:
                value, _ = json.JSONDecoder().raw_decode(text, match.end())
            except json.JSONDecodeError:
                value = None
            arguments = value if isinstance(value, dict) else None
        calls.append((match.group(2), arguments))
    return calls


@dataclass
class _Plan:
    """What the simulated model answers: words (tokens), then calls (name, arguments JSON)."""

    tokens: list[str]
    calls: list[tuple[str, str]]
    finish_reason: str


def _plan(body: dict[str, Any], cfg: SimOpenAIConfig) -> _Plan:
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 10**9)
    messages: list[dict[str, Any]] = body.get("messages") or []
    tools = {_tool_name(t): t for t in body.get("tools") or []}
    choice = body.get("tool_choice")
    picked: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    if tools and choice != "none":
        marked = [(tools[name], args) for name, args in _marked_calls(messages) if name in tools]
        if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}} forces that tool
            forced = choice.get("function", {}).get("name") or choice.get("name")
            picked = [m for m in marked if _tool_name(m[0]) == forced][:1] or (
                [(tools[forced], None)] if forced in tools else []
            )
        elif "send_message" in tools:
            # An agent that talks through send_message replies with it even under "auto".
            picked = [(tools["send_message"], None)]
        elif marked:
            picked = marked
        elif choice == "required":
            picked = [(next(iter(tools.values())), None)]
        if body.get("parallel_tool_calls") is False:
            picked = picked[:1]
    if messages and messages[-1].get("role") == "tool" and not picked:
        trailing: list[str] = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            trailing.append(_text(message))
        words = cfg.tool_answer.format(results="; ".join(reversed(trailing)))
    elif picked and not (len(picked) == 1 and _tool_name(picked[0][0]) == "send_message"):
        words = cfg.tool_preamble
    elif picked:
        words = ""  # send_message carries the reply
    else:
        words = cfg.reply
    all_tokens = _tokens(words) if words else []
    tokens = all_tokens[:max_tokens]
    reply = "".join(_tokens(cfg.reply)[:max_tokens])
    calls = [
        (_tool_name(tool), json.dumps(args if args is not None else _tool_arguments(tool, reply)))
        for tool, args in picked
    ]
    # As OpenAI answers: "length" when max_tokens cut the reply short.
    finish = "tool_calls" if calls else "length" if len(all_tokens) > len(tokens) else "stop"
    return _Plan(tokens, calls, finish)


def _usage(body: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    prompt_tokens = len(json.dumps(body.get("messages", []))) // 4
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """Form fields as str, files as (filename, bytes); stdlib only (no python-multipart)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        filename = part.get_filename()
        fields[str(name)] = (filename, payload) if filename else payload.decode()
    return fields


def _build_app(state: SimOpenAIServer) -> Starlette:
    cfg = state.config

    def unauthorized(request: Request) -> Response | None:
        if cfg.api_key is None or request.headers.get("authorization") == f"Bearer {cfg.api_key}":
            return None
        return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")

    async def chat_completions(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        body = await request.json()
        state.requests.append({"path": "/v1/chat/completions", "body": body})
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body.get("model", "gpt-4o-mini")
        plan = _plan(body, cfg)
        tokens = plan.tokens
        call_ids = [f"call_{uuid.uuid4().hex[:24]}" for _ in plan.calls]
        if not body.get("stream"):
            await asyncio.sleep(cfg.ttft_ms / 1000)
            message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
            if plan.calls:
                message["content"] = message["content"] or None
                message["tool_calls"] = [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
                    for call_id, (name, arguments) in zip(call_ids, plan.calls, strict=True)
                ]
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason}],
                    "usage": _usage(body, len(tokens)),
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data)}\n\n"

        def usage_chunk() -> str:
            # Sent only when asked for, as OpenAI does: a last chunk with no choices.
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(body, len(tokens)),
            }
            return f"data: {json.dumps(data)}\n\n"

        def pieces() -> list[dict[str, Any]]:
            words: list[dict[str, Any]] = [{"content": token} for token in tokens]
            # Each call's arguments stream in fragments after a first delta naming it, as OpenAI sends them.
            calls: list[dict[str, Any]] = []
            size = max(1, cfg.argument_chunk_chars)
            for index, (call_id, (name, arguments)) in enumerate(zip(call_ids, plan.calls, strict=True)):
                head = {"index": index, "id": call_id, "type": "function"}
                calls.append({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
                calls += [
                    {"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + size]}}]}
                    for i in range(0, len(arguments), size)
                ]
            return words + calls

        async def events() -> AsyncIterator[str]:
            finished = False
            try:
                first: dict[str, Any] = {
                    "role": "assistant",
                    "content": "" if tokens or not plan.calls else None,
                }
                yield chunk(first)
                await asyncio.sleep(cfg.ttft_ms / 1000)
                for i, delta in enumerate(pieces()):
                    if i:
                        await asyncio.sleep(1 / cfg.tokens_per_s)
                    yield chunk(delta)
                yield chunk({}, plan.finish_reason)
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield usage_chunk()
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                if not finished:
                    state.streams_closed_early += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        body = await request.json()
        state.requests.append({"path": "/v1/embeddings", "body": body})
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "'input' must be a string or a list of strings", "invalid_request_error")
        dim = int(body.get("dimensions") or 1536)
        data = []
        for i, text in enumerate(texts):
            vec = _embedding(text, dim)
            # The OpenAI SDK asks for base64 (little-endian float32) unless told otherwise.
            if body.get("encoding_format") == "base64":
                value: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode()
            else:
                value = vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        n_tokens = sum(len(t.split()) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "text-embedding-3-small"),
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            }
        )

    async def speech(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        body = await request.json()
        state.requests.append({"path": "/v1/audio/speech", "body": body})
        if body.get("response_format") != "pcm":
            return _error(400, "this fake only produces response_format='pcm'", "invalid_request_error")
        seconds = len(body["input"]) * cfg.speech_ms_per_char / 1000
        t = np.arange(int(24_000 * seconds)) / 24_000
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()

        async def audio() -> AsyncIterator[bytes]:
            finished = False
            try:
                for start in range(0, len(pcm), cfg.speech_chunk_bytes):
                    await asyncio.sleep(cfg.speech_chunk_delay_ms / 1000)
                    yield pcm[start : start + cfg.speech_chunk_bytes]
                finished = True
            finally:
                if not finished:
                    state.streams_closed_early += 1

        return StreamingResponse(audio(), media_type="audio/pcm")

    async def transcriptions(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        form = _parse_multipart(request.headers["content-type"], await request.body())
        filename, data = form["file"]
        info = sf.info(io.BytesIO(data))
        state.requests.append(
            {
                "path": "/v1/audio/transcriptions",
                "body": {k: v for k, v in form.items() if k != "file"},
                "file": {
                    "filename": filename,
                    "format": info.format,
                    "subtype": info.subtype,
                    "samplerate": info.samplerate,
                    "channels": info.channels,
                    "frames": info.frames,
                },
            }
        )
        if info.frames < info.samplerate // 10:
            return _error(400, "Audio file is too short.", "invalid_request_error", "audio_too_short")
        return JSONResponse({"text": cfg.transcript})

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": "sim-llm", "object": "model", "created": 0, "owned_by": "bench"}],
            }
        )

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/audio/speech", speech, methods=["POST"]),
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        ]
    )


def start_sim_openai_server(config: SimOpenAIConfig | None = None) -> SimOpenAIServer:
    """Serve the simulated API on a free 127.0.0.1 port from a background thread; returns once ready."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    state = SimOpenAIServer(base_url=f"http://127.0.0.1:{port}/v1", config=config or SimOpenAIConfig())
    server = uvicorn.Server(uvicorn.Config(_build_app(state), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("simulated OpenAI server failed to start")
        time.sleep(0.01)
    state._server, state._thread = server, thread
    return state


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Simulated OpenAI-compatible server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=300.0)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--reply", default=SimOpenAIConfig.reply)
    parser.add_argument("--tool-preamble", default="", help="words said before tool calls")
    args = parser.parse_args()
    state = SimOpenAIServer(
        base_url=f"http://127.0.0.1:{args.port}/v1",
        config=SimOpenAIConfig(
            reply=args.reply,
            ttft_ms=args.ttft_ms,
            tokens_per_s=args.tokens_per_s,
            tool_preamble=args.tool_preamble,
        ),
    )
    uvicorn.run(_build_app(state), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
