"""Letta as the memory backend: one agent per user, turns written in batches, core blocks read back.

Each user id maps to its own Letta agent (named `<prefix><user id>`, created on first use with the
configured memory blocks and LLM / embedding endpoints), so no request can reach another user's memory.
A batch of turns is one `agents.messages.create` call whose messages are the turns, each carrying its
turn id as Letta's client-side message id (`otid`): the agent reads the conversation and updates its
memory blocks from it. A batch that may have been sent before (the journal counts sends) is delivered
once: Letta stores a call's messages only when its run ends, so the resend first waits until the agent
has no active run (a call cut off by a crash may still be running), then skips the turns whose ids are
among the agent's recent messages. A first send costs one call.

A remembered fact is one archival-memory passage of the user's agent, tagged with its fact id
(`voice-fact:<id>`), so a resend first looks for the tagged passage. Searches (for the `search_memory`
tool) read the agent's archival memory (`archival-memory/search`, semantic) and its past conversation
(`POST /v1/agents/messages/search`, filtered to the agent). A Letta server without message search
(self-hosted servers answer 400 unless Turbopuffer is set up) is searched instead by matching the query's
words against the agent's most recent user messages (`conversation_window` of them), which hold the
turns this project wrote. Searches make one attempt each, bounded by `search_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import letta_client
from letta_client import AsyncLetta

from actors.config import Settings
from actors.conversation.events import FinishedTurn
from actors.memory.journal import Fact

log = logging.getLogger(__name__)

DEFAULT_BLOCKS = {
    "human": "Nothing is known about this user yet.",
    "persona": "A concise, friendly voice assistant that remembers what users tell it.",
}


@dataclass(frozen=True)
class LettaConfig:
    base_url: str
    api_key: str | None = None
    llm_config: dict[str, Any] = field(default_factory=dict)  # Letta LlmConfig for new agents
    embedding_config: dict[str, Any] = field(default_factory=dict)
    blocks: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BLOCKS))
    agent_prefix: str = "voice-"
    dedupe_window: int = 200  # recent agent messages checked for already-delivered turns
    timeout_s: float = 60.0
    idle_poll_s: float = 0.25  # how often to look whether the agent's active run has ended
    search_timeout_s: float = 3.0  # one search call; a dead Letta fails the search this fast
    conversation_window: int = 500  # recent messages matched when Letta has no message search


def letta_config(settings: Settings) -> LettaConfig:
    """The Letta connection and new-agent settings from the app's settings (letta_base_url must be set)."""
    if not settings.letta_base_url:
        raise ValueError("Letta is not configured: set LETTA_BASE_URL (or the letta_base_url arg)")
    return LettaConfig(
        base_url=settings.letta_base_url,
        api_key=settings.letta_key,
        llm_config=settings.letta_llm_config,
        embedding_config=settings.letta_embedding_config,
    )


class LettaBusyError(Exception):
    """The agent still has a run in progress after the wait; the writer retries the batch later."""


FACT_TAG_PREFIX = "voice-fact:"
MESSAGE_SEARCH_PATH = "/v1/agents/messages/search"

# Words too common to say whether a message is about the query.
# fmt: off
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "did", "do", "does", "for", "from", "have", "how", "i", "is", "it", "me", "my",
    "of", "on", "or", "said", "the", "to", "was", "what", "when", "where", "which", "who", "why", "you",
    "your",
})
# fmt: on


@dataclass(frozen=True)
class MemoryHit:
    """One search result: the text found and when it was written (ISO 8601, as Letta gives it)."""

    text: str
    at: str


def query_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[\w']+", text.lower()) if w not in _STOPWORDS and len(w) > 1}


def word_matches(query: str, candidates: Sequence[MemoryHit], limit: int) -> list[MemoryHit]:
    """The candidates sharing the most words with `query` (ties keep the candidates' order)."""
    wanted = query_words(query)
    scored = [(len(wanted & query_words(hit.text)), i, hit) for i, hit in enumerate(candidates)]
    ranked = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))
    return [hit for _, _, hit in ranked[:limit]]


def render_turn(turn: FinishedTurn) -> str:
    note = " (the user interrupted the reply)" if turn.interrupted else ""
    return f"User said: {turn.user_text}\nAssistant replied{note}: {turn.assistant_text}"


class LettaMemory:
    def __init__(self, config: LettaConfig, client: AsyncLetta | None = None) -> None:
        self.config = config
        self.client = client or AsyncLetta(
            base_url=config.base_url, api_key=config.api_key or "unused", timeout=config.timeout_s
        )
        self._agents: dict[str, str] = {}
        self._agent_locks: dict[str, asyncio.Lock] = {}
        self.message_calls = 0  # agents.messages.create calls made
        self.message_search = True  # False once the server said it has no message search

    async def agent_id(self, user_id: str) -> str:
        """The user's own agent, created on first use."""
        if user_id in self._agents:
            return self._agents[user_id]
        async with self._agent_locks.setdefault(user_id, asyncio.Lock()):
            if user_id not in self._agents:
                name = f"{self.config.agent_prefix}{user_id}"
                found = await self.client.agents.list(name=name, limit=1)
                agents = list(getattr(found, "items", found))
                if agents:
                    self._agents[user_id] = agents[0].id
                else:
                    agent = await self.client.agents.create(
                        name=name,
                        memory_blocks=[{"label": k, "value": v} for k, v in self.config.blocks.items()],
                        llm_config=self.config.llm_config,  # type: ignore[arg-type]
                        embedding_config=self.config.embedding_config,  # type: ignore[arg-type]
                        tags=[f"voice-user:{user_id}"],
                    )
                    log.info("created Letta agent %s for user %s", agent.id, user_id)
                    self._agents[user_id] = agent.id
        return self._agents[user_id]

    async def write_turns(
        self, user_id: str, turns: Sequence[FinishedTurn], maybe_delivered: bool = True
    ) -> None:
        agent = await self.agent_id(user_id)
        todo = list(turns)
        if maybe_delivered:  # two extra reads, only on a resend
            await self._wait_until_idle(agent)
            delivered = await self._delivered(agent)
            todo = [t for t in turns if t.turn_id not in delivered]
        if not todo:
            return
        self.message_calls += 1
        await self.client.agents.messages.create(
            agent,
            messages=[{"role": "user", "content": render_turn(t), "otid": t.turn_id} for t in todo],
        )

    async def _wait_until_idle(self, agent: str) -> None:
        deadline = asyncio.get_running_loop().time() + self.config.timeout_s
        while True:
            runs = await self.client.runs.list(agent_id=agent, active=True, limit=1)
            if not list(getattr(runs, "items", runs)):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise LettaBusyError(f"agent {agent} still has a run in progress")
            await asyncio.sleep(self.config.idle_poll_s)

    async def _delivered(self, agent: str) -> set[str]:
        """Turn ids among the agent's recent user messages."""
        recent = await self.client.agents.messages.list(agent, limit=self.config.dedupe_window, order="desc")
        return {m.otid for m in recent.items if m.message_type == "user_message" and m.otid}

    async def read_memory(self, user_id: str) -> str:
        """The agent's core memory blocks as prompt text ("label: value" lines)."""
        agent = await self.agent_id(user_id)
        blocks = await self.client.agents.blocks.list(agent_id=agent)
        items = list(getattr(blocks, "items", blocks))
        return "\n".join(f"{b.label}: {b.value}" for b in items if b.value)

    async def write_fact(self, fact: Fact, maybe_delivered: bool = True) -> None:
        """Insert the fact into the user's archival memory, unless a resend finds it already there."""
        agent = await self.agent_id(fact.user_id)
        tag = f"{FACT_TAG_PREFIX}{fact.fact_id}"
        if maybe_delivered:
            found = await self.client.agents.passages.list(agent, search=fact.text, limit=50)
            if any(tag in (p.tags or []) for p in found):
                return
        await self.client.agents.passages.create(agent, text=fact.text, tags=[tag])

    def _search_client(self) -> AsyncLetta:
        """The client for searches: one attempt, bounded by `search_timeout_s`."""
        return self.client.with_options(max_retries=0, timeout=self.config.search_timeout_s)

    async def search_archival(self, user_id: str, query: str, limit: int) -> list[MemoryHit]:
        """The user's archival memory passages nearest in meaning to `query`."""
        agent = await self.agent_id(user_id)
        client = self._search_client()
        found = await client.agents.passages.search(agent, query=query, top_k=limit)
        return [MemoryHit(r.content, r.timestamp) for r in found.results]

    async def search_conversation(self, user_id: str, query: str, limit: int) -> list[MemoryHit]:
        """The user's past conversation (their turns as written to the agent) matching `query`."""
        agent = await self.agent_id(user_id)
        client = self._search_client()
        if self.message_search:
            try:
                found = await client.post(
                    MESSAGE_SEARCH_PATH, body=message_search_body(query, agent, limit), cast_to=object
                )
            except letta_client.APIStatusError as exc:
                if exc.status_code >= 500 and exc.status_code != 501:
                    raise  # the server is in trouble, not without the feature
                log.info("Letta has no message search (%s): matching recent messages instead", exc)
                self.message_search = False
            else:
                return message_search_hits(found, agent)
        recent = await client.agents.messages.list(
            agent,
            limit=self.config.conversation_window,
            order="desc",
            include_return_message_types=["user_message"],
        )
        candidates = [
            MemoryHit(m.content, m.date.isoformat())
            for m in recent.items
            if m.message_type == "user_message" and isinstance(m.content, str)
        ]
        return word_matches(query, candidates, limit)

    async def server_problem(self, timeout_s: float) -> str | None:
        """None when the Letta server answers its health route within `timeout_s` (one attempt), else
        what is wrong."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.client.with_options(max_retries=0).health()
        except letta_client.APIStatusError as exc:
            log.warning("Letta at %s answers HTTP %d", self.config.base_url, exc.status_code)
            return f"the Letta server answers HTTP {exc.status_code}"
        except Exception as exc:
            log.warning("Letta at %s unreachable: %r", self.config.base_url, exc)
            return "the Letta server is unreachable"
        return None

    async def close(self) -> None:
        await self.client.close()


def message_search_body(query: str, agent: str, limit: int) -> dict[str, Any]:
    """A `MessageSearchRequest` for the user messages of one agent."""
    return {"query": query, "agent_id": agent, "roles": ["user"], "limit": limit}


def message_search_hits(found: object, agent: str) -> list[MemoryHit]:
    """Results of `POST /v1/agents/messages/search` (a list of `MessageSearchResult`), keeping only the
    agent's own messages: the filter is Letta's, the check is ours."""
    hits = []
    for result in found if isinstance(found, list) else []:
        message = result.get("message") or {}
        if message.get("agent_id") != agent:
            continue
        hits.append(MemoryHit(str(result.get("embedded_text", "")), str(message.get("created_at", ""))))
    return hits
