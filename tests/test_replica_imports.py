"""What a replica loads at start: every replica process imports the application module, and on 2 cores
five of them start side by side, so an SDK imported for a feature that is off costs every start.
The `openai` SDK (~0.6 s to import) is for the OpenAI engines only, the `mcp` SDK (~0.5 s) for
configured MCP servers only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
from actors.config import load_settings
from actors.engines import create_llm_engine, create_stt_engine, create_tts_engine
from actors.tools.servers import ServerTools
import serve_app.app  # what `import_path` makes every replica import

settings = load_settings()
makers = (create_stt_engine, create_tts_engine, create_llm_engine)
engines = [type(make(settings)).__name__ for make in makers]
ServerTools.from_settings(settings)
loaded = sorted(name for name in ("openai", "mcp") if name in sys.modules)
print(json.dumps({"engines": engines, "loaded": loaded}))
"""


def test_with_the_offline_engines_and_no_mcp_server_no_replica_imports_the_openai_or_mcp_sdk() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICE_", "OPENAI_"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["engines"] == ["PocketsphinxEngine", "EspeakEngine", "LlamaCppEngine"]
    assert report["loaded"] == []
