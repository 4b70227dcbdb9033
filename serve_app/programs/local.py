"""The whole agent in one process, without Ray: the router app with in-process stages.

    uvicorn --factory serve_app.programs.local:create_app --port 8100

Same settings (environment variables) and the same protocol as the Serve application; useful for
development and as the no-hop baseline in the benchmarks.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette

from actors.config import load_settings
from actors.engines import create_llm_engine, create_stt_engine, create_tts_engine
from actors.llm.stage import LLMStage
from actors.memory.sink import RecentTurnsSink
from actors.probe import problems
from actors.tools.servers import ServerTools
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app

log = logging.getLogger(__name__)


def create_app() -> Starlette:
    settings = load_settings()
    log.info("voice agent (single process) engines: %s", settings.describe_engines())
    stt, llm, tts = create_stt_engine(settings), create_llm_engine(settings), create_tts_engine(settings)
    return build_router_app(
        RouterDeps(
            settings=settings,
            stt=stt,
            llm=LLMStage(llm),
            tts=TTSStage(tts),
            memory_sink=RecentTurnsSink(),
            warmups=[stt.warmup, llm.warmup, tts.warmup],
            upstreams=lambda: problems({"stt": stt.probe, "llm": llm.probe, "tts": tts.probe}),
            server_tools=ServerTools.from_settings(settings),
        )
    )
