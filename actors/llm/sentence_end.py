"""Whether the user's words so far can end a sentence, judged by a small language model.

The audio end-of-turn model (`actors.audio.end_of_turn`) hears how speech ends, and a reader who pauses
with a falling voice after "rather" or "more" sounds finished to it. The words tell otherwise: a clause
cannot end on "to", "the", "and", "have been". A language model knows this without a word list: the
probability that the next token after the user's words is a sentence end (".", "?", "!" or a line
break) is near 0 after such words (≤ 0.04 on the recordings' sentences cut mid-clause) and well above it
where a sentence can end (0.1–0.7, stranded prepositions in questions such as "who did you go with"
included).

Whether a turn can end also depends on what it answers: "a large coffee" or "my daughter" alone read as
fragments (0.01–0.05), but after the agent's "What can I get you today?" or "Who is the appointment for?"
they are whole answers (0.14–0.54 on a set of such pairs), while "i would like a" stays near 0. So the
agent's last words, when there are any, go before the user's, in the same turn format.

The model is the offline LLM's Gemma 3 270M (a base model, so its next-token probabilities are those of
plain text), run by llama.cpp on one thread: ~50–100 ms per call on this project's 2-core machines,
once per pause, in a worker thread. Its weights are memory-mapped, so processes on one node share them.
"""

from __future__ import annotations

import atexit
import functools
import threading
from typing import Any, Protocol

import numpy as np

SENTENCE_ENDS = (".", "?", "!", "\n")
PROMPT = "User: "  # the offline LLM's own turn format: the words read as something a user said
AGENT = "Assistant: "
MAX_WORDS = 60  # the end of a long turn is what decides; older words only cost time
MAX_AGENT_WORDS = 30  # the end of the agent's reply (its question, usually) is what the user answers
TRAILING_PUNCTUATION = ".,;:!?…\"' "


class SentenceEndModel(Protocol):
    def probability_sentence_ends(self, words: str, answering: str = "") -> float:
        """Probability (0–1) that a sentence ends right after `words`, said in reply to the agent's
        `answering` (empty: nothing said before)."""
        ...


class GemmaSentenceEnd:
    """The probability of a sentence end after the user's words, from the packaged Gemma 3 270M
    (or the GGUF at `model_path`). Thread-safe: calls are serialised (one KV cache)."""

    def __init__(self, model_path: str | None = None) -> None:
        self._llm = _load(model_path)
        self._end_tokens = sorted(
            {self._llm.tokenize(end.encode(), add_bos=False, special=False)[0] for end in SENTENCE_ENDS}
        )

    def probability_sentence_ends(self, words: str, answering: str = "") -> float:
        # A transcript's own final punctuation is the STT's guess at the same question: left out.
        text = " ".join(words.split()[-MAX_WORDS:]).rstrip(TRAILING_PUNCTUATION)
        if not text:
            return 0.0
        # One line each: a newline inside a turn would read as the turn's end.
        agent = " ".join(answering.split()[-MAX_AGENT_WORDS:])
        prompt = (AGENT + agent + "\n" if agent else "") + PROMPT + text
        tokens = self._llm.tokenize(prompt.encode(), add_bos=True)
        with _LOCK:
            logits = self._last_logits(tokens)
        probabilities = np.exp(logits - logits.max())
        return float(probabilities[self._end_tokens].sum() / probabilities.sum())

    def _last_logits(self, tokens: list[int]) -> Any:
        """The next-token logits after `tokens`, reusing the KV cache of the common prefix with the
        previous call (the same turn's words grow from pause to pause)."""
        import llama_cpp

        llm = self._llm
        cached = llm.n_tokens
        common = 0
        while common < min(cached, len(tokens) - 1) and llm.input_ids[common] == tokens[common]:
            common += 1
        llm.n_tokens = common  # `eval` drops the cache after this point
        llm.eval(tokens[common:])
        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


_LOCK = threading.Lock()  # one KV cache per loaded model, one model per process in practice


@functools.cache
def _load(model_path: str | None) -> Any:
    """One model per process and path."""
    import llama_cpp

    from actors.llm.llamacpp_engine import default_model_path

    llm = llama_cpp.Llama(
        model_path=model_path or default_model_path(),
        n_ctx=256,
        n_threads=1,  # the session's other work needs the other core more
        logits_all=False,
        verbose=False,
    )
    # Freed before the interpreter tears llama_cpp down (its own finaliser fails after that).
    atexit.register(llm.close)
    return llm
