"""Full-Letta mode (USE_HYBRID_STREAMING=false) as a user runs it: a spoken question through the real
offline STT and TTS on Ray Serve, answered by the user's own Letta agent streaming its reply."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.config import Settings
from actors.memory.letta import LettaConfig, LettaMemory
from testkit.realtime_client import client_for, collect_turn, stream_audio
from testkit.recordings import espeak_speech, silence
from testkit.serve_cluster import ServeRun
from tests.letta_fixtures import SIM_REPLY, LettaEnv

pytestmark = pytest.mark.slow


def test_the_switch_is_an_env_var_or_an_arg(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().resolved().llm_engine != "letta"
    assert Settings(use_hybrid_streaming=False).resolved().llm_engine == "letta"
    monkeypatch.setenv("USE_HYBRID_STREAMING", "false")
    resolved = Settings().resolved()
    assert (resolved.llm_engine, resolved.llm_model) == ("letta", "letta-agent")


@pytest.fixture(scope="module")
def full_letta_agent(letta_env: LettaEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeRun]:
    workdir = tmp_path_factory.mktemp("full-letta")
    run = ServeRun(
        workdir,
        args={
            "stt_engine": "pocketsphinx",
            "tts_engine": "espeak",
            **letta_env.serve_args(workdir / "journal.db"),
        },
        env={"USE_HYBRID_STREAMING": "false"},
    )
    try:
        run.wait_ready()
        yield run
    finally:
        run.stop()


async def test_a_spoken_turn_is_answered_by_the_users_letta_agent(
    full_letta_agent: ServeRun, letta_env: LettaEnv
) -> None:
    since = len(letta_env.sim.requests)
    async with client_for(full_letta_agent).realtime.connect(
        model="voice-agent", extra_query={"user": "fay"}
    ) as conn:
        await stream_audio(
            conn, silence(300) + espeak_speech("What is the capital of France?") + silence(900)
        )
        turn = await collect_turn(conn)
    assert turn.done.response.status == "completed"
    assert turn.transcript and turn.reply == SIM_REPLY and len(turn.audio) > 24_000  # > 0.5 s
    # The reply came through Letta: its agent prompt went to the LLM, the exchange is in Fay's agent
    # once (the agent keeps the conversation; no memory write doubles it).
    assert any(
        "<base_instructions>" in str(r["body"]["messages"][0]["content"])
        for r in letta_env.sim.requests[since:]
    )
    letta = LettaMemory(LettaConfig(base_url=letta_env.base_url))
    listed = await letta.client.agents.messages.list(await letta.agent_id("fay"), limit=50, order="asc")
    said = [(m.message_type, str(m.content)) for m in listed.items if m.message_type != "system_message"]
    assert said == [("user_message", turn.transcript), ("assistant_message", SIM_REPLY)]
    await letta.close()
