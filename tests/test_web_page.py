"""The talk page at `/`, in a real browser: Debian's Chromium (headless, Playwright) with a recording as
its microphone, against the agent served in one process (real pocketsphinx and eSpeak; the simulated
OpenAI server stands in for the LLM) with keys required, and one spoken turn on the Ray cluster serving
serve_config.yaml."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from testkit.browser import CHROMIUM, artefacts_dir, chromium, write_wav
from testkit.harness import make_app
from testkit.recordings import librivox, silence, word_error_rate
from testkit.serve_cluster import ROOT, ServeRun, free_port
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium missing: scripts/setup.sh --dev"
)

KEY = "page-test-key"
RATE = 24_000
# Long enough to be still speaking when the user talks over it (eSpeak: ~10 s).
REPLY = (
    "Jane Austen wrote Sense and Sensibility, which was published in eighteen eleven. "
    "It follows the Dashwood sisters, Elinor and Marianne, after their father dies. "
    "Elinor is calm and sensible, while Marianne is romantic and follows her heart. "
    "Both of them find love in the end, though not in the way they first expected."
)
PARTS = ("end of turn", "transcription", "LLM first token", "first phrase", "TTS first audio", "end to end")


def test_page_and_its_files_are_served_without_a_credential() -> None:
    client = make_app(api_keys=KEY)
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in [("app.js", "javascript"), ("capture-worklet.js", "javascript"), ("style.css", "css")]:
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"], name
    assert client.get("/ui/missing.js").status_code == 404
    assert client.get("/v1/models").status_code == 401  # the API still wants the key


def test_page_fetches_nothing_from_elsewhere() -> None:
    web = ROOT / "serve_app" / "web"
    for path in web.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"{path.name} links out"


# ---- the agent in one process ------------------------------------------------------------------------


class LocalAgent:
    """`uvicorn --factory serve_app.programs.local:create_app` in its own process group."""

    def __init__(self, llm_base_url: str, port: int | None = None) -> None:
        self.port = port or free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VOICE_")},
            "OPENAI_API_KEY": "sim",
            "VOICE_STT_ENGINE": "pocketsphinx",
            "VOICE_TTS_ENGINE": "espeak",
            "VOICE_LLM_ENGINE": "openai",
            "VOICE_LLM_BASE_URL": llm_base_url,
            "VOICE_API_KEYS": KEY,
        }
        # Beside the screenshots, where it outlives the test's temporary directory.
        self.log = artefacts_dir() / f"agent-{self.port}.log"
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "--factory", "serve_app.programs.local:create_app"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def llm() -> Iterator[SimOpenAIServer]:
    server = start_sim_openai_server(SimOpenAIConfig(reply=REPLY, ttft_ms=150, tokens_per_s=60))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_agent(llm: SimOpenAIServer) -> Iterator[LocalAgent]:
    agent = LocalAgent(llm.base_url)
    yield agent
    agent.stop()


def microphone(tmp_path: Path, *pieces: bytes) -> Path:
    """A WAV for the fake microphone: a second of lead-in (the page connects meanwhile), then `pieces`."""
    return write_wav(tmp_path / "microphone.wav", silence(1000) + b"".join(pieces), RATE)


def start(page: Page, url: str | None, key: str = KEY, **settings: Any) -> None:
    """Open the page (None: it is open), enter the key, switch the microphone's processing off (the
    recording arrives sample-exact: echo cancellation, noise suppression and auto gain are for real
    rooms), choose the settings, press Start."""
    if url is not None:
        page.goto(url)
        page.fill("#api-key", key)
    if "instructions" in settings:
        page.fill("#instructions", settings["instructions"])
    for box in ("#echo-cancellation", "#noise-suppression", "#auto-gain"):
        page.uncheck(box)
    if "turn_detection" in settings:
        page.select_option("#turn-detection", settings["turn_detection"])
    if settings.get("text_only"):
        page.check("#text-only")
    page.click("#start")


def stats(page: Page) -> dict[str, Any]:
    return page.evaluate("window.voiceAgent.stats()")


def wait_for(page: Page, condition: str, timeout_s: float = 60.0) -> None:
    page.wait_for_function(f"() => ({condition})", timeout=timeout_s * 1000)


def final_texts(page: Page, role: str) -> list[str]:
    return page.locator(f"#log li.{role}:not(.interim) .text").all_inner_texts()


def test_a_spoken_turn(local_agent: LocalAgent, tmp_path: Path) -> None:
    speech, reference = librivox("0920", RATE)
    with chromium(microphone(tmp_path, speech, silence(3000))) as browser:
        page = browser.new_page()
        start(page, local_agent.url)
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected", timeout=20_000)
        # Interim words while the user speaks, then the final transcript.
        interim = "conversation.item.input_audio_transcription.delta"
        wait_for(page, f"(window.voiceAgent.stats().events['{interim}'] || 0) > 0")
        wait_for(page, "window.voiceAgent.stats().turns.length >= 1")
        heard = final_texts(page, "user")
        assert len(heard) == 1 and word_error_rate(reference, heard[0]) <= 0.5, (reference, heard)
        # The reply's text, and its audio played by the page's own audio graph.
        wait_for(page, "document.querySelector('#log li.agent:not(.interim)') !== null")
        assert final_texts(page, "agent")[0].startswith("Jane Austen wrote Sense and Sensibility")
        wait_for(page, "window.voiceAgent.stats().playback.audible > 24000")  # over a second heard
        # The latency bar: every part with its figure in milliseconds.
        rows = page.locator("#latency-bar .part")
        expect(rows).to_have_count(len(PARTS))
        for i, name in enumerate(PARTS):
            assert re.fullmatch(rf"{name}\s*\d+ ms", rows.nth(i).inner_text().replace("\n", " ").strip()), (
                name
            )
        e2e = float(stats(page)["turns"][0]["e2e_latency"])
        assert (
            page.locator('#latency-bar [data-metric="e2e_latency"] .value').inner_text() == f"{round(e2e)} ms"
        )
        wait_for(page, "window.voiceAgent.stats().playback.queued === 0", 30)
        page.screenshot(path=str(artefacts_dir() / "spoken-turn.png"))
        assert page.locator("#notice").is_hidden()


def test_speaking_over_the_reply_stops_it_and_starts_a_new_turn(
    local_agent: LocalAgent, tmp_path: Path
) -> None:
    first, _ = librivox("0880", RATE)
    second, reference = librivox("0920", RATE)
    # The reply starts ~1 s after the first sentence and lasts ~10 s: the second one lands in it.
    with chromium(microphone(tmp_path, first, silence(4000), second, silence(4000))) as browser:
        page = browser.new_page()
        start(page, local_agent.url)
        wait_for(page, "window.voiceAgent.stats().playback.audible > 12000")
        wait_for(page, "window.voiceAgent.stats().bargeIns >= 1")
        stopped_at = stats(page)["playback"]
        assert stopped_at["flushed"] > 0  # queued reply audio dropped by the page itself
        page.wait_for_timeout(300)
        # Nothing more of the first reply plays after the user spoke over it...
        assert stats(page)["playback"]["played"] - stopped_at["played"] < RATE // 10
        # ...the server cancels it, and answers the new turn.
        expect(page.locator("#log li.agent.cut")).to_have_count(1, timeout=20_000)
        wait_for(page, "document.querySelectorAll('#log li.agent:not(.interim)').length >= 2")
        heard = final_texts(page, "user")
        assert len(heard) == 2 and word_error_rate(reference, heard[1]) <= 0.5, heard
        wait_for(page, "window.voiceAgent.stats().turns.length >= 1")
        page.screenshot(path=str(artefacts_dir() / "barge-in.png"))


def test_interrupt_button_with_semantic_turn_detection(local_agent: LocalAgent, tmp_path: Path) -> None:
    speech, _ = librivox("0920", RATE)
    with chromium(microphone(tmp_path, speech, silence(8000))) as browser:
        page = browser.new_page()
        start(page, local_agent.url, turn_detection="semantic_vad")
        wait_for(page, "window.voiceAgent.stats().playback.audible > 12000")
        detection = stats(page)["session"]["audio"]["input"]["turn_detection"]
        assert detection["type"] == "semantic_vad", detection
        page.click("#interrupt")
        stopped_at = stats(page)["playback"]
        expect(page.locator("#log li.agent.cut")).to_have_count(1, timeout=20_000)
        assert page.locator("#log li.agent").get_attribute("data-status") == "cancelled"
        page.wait_for_timeout(300)
        after = stats(page)
        assert after["playback"]["played"] - stopped_at["played"] < RATE // 10
        assert after["playback"]["queued"] == 0 and after["playback"]["flushed"] > 0
        assert after["interrupts"] == 1
        assert page.locator("#notice").is_hidden()  # a cancel the server accepted: no error


def test_push_to_talk(local_agent: LocalAgent, tmp_path: Path) -> None:
    speech, reference = librivox("0920", RATE)
    with chromium(microphone(tmp_path, speech, silence(3000))) as browser:
        page = browser.new_page()
        start(page, local_agent.url, turn_detection="push_to_talk")
        wait_for(page, "window.voiceAgent.stats().events['session.updated'] >= 1", 20)
        button = page.locator("#ptt")
        expect(button).to_be_visible()
        button.hover()
        page.mouse.down()
        # Held while the recording plays: its speech ends ~1 s before its end.
        page.wait_for_timeout(1000 + len(speech) * 1000 // (2 * RATE) + 500)
        page.mouse.up()
        wait_for(page, "document.querySelector('#log li.agent:not(.interim)') !== null")
        heard = final_texts(page, "user")
        assert len(heard) == 1 and word_error_rate(reference, heard[0]) <= 0.5, heard
        assert stats(page)["events"].get("input_audio_buffer.speech_started", 0) == 0  # no server VAD


def test_text_only_replies_with_a_typed_message(local_agent: LocalAgent, llm: SimOpenAIServer) -> None:
    with chromium() as browser:
        page = browser.new_page()
        start(page, local_agent.url, text_only=True, instructions="Answer like a librarian.")
        wait_for(page, "window.voiceAgent.stats().events['session.updated'] >= 1", 20)
        page.fill("#typed-text", "Who wrote Sense and Sensibility?")
        page.press("#typed-text", "Enter")
        wait_for(page, "document.querySelector('#log li.agent:not(.interim)') !== null")
        assert final_texts(page, "user") == ["Who wrote Sense and Sensibility?"]
        assert final_texts(page, "agent")[0].startswith("Jane Austen wrote")
        assert stats(page)["playback"]["played"] == 0
        assert stats(page)["events"].get("response.output_audio.delta", 0) == 0
        # The instructions typed in Settings are the LLM's system prompt.
        system = llm.requests[-1]["body"]["messages"][0]
        assert system["role"] == "system" and "Answer like a librarian." in system["content"]


def test_a_client_secret_handed_over_in_the_fragment(local_agent: LocalAgent) -> None:
    # What a backend gives the page instead of a long-lived key: a secret minted with the server key,
    # in the URL's fragment (never sent to a server), which the page takes off the address at once.
    minted = httpx.post(
        f"{local_agent.url}v1/realtime/client_secrets",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"expires_after": {"anchor": "created_at", "seconds": 60}, "user": "ada"},
    )
    minted.raise_for_status()
    secret = minted.json()["value"]
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{local_agent.url}#client_secret={secret}")
        assert secret not in page.url
        start(page, None)
        wait_for(page, "window.voiceAgent.stats().events['session.updated'] >= 1", 20)
        expect(page.locator("#connection-text")).to_have_text("Connected")


def test_a_refused_microphone_is_explained(local_agent: LocalAgent) -> None:
    with chromium(allow_microphone=False) as browser:
        page = browser.new_page()
        start(page, local_agent.url)
        expect(page.locator("#notice")).to_contain_text("Microphone permission was refused", timeout=20_000)
        expect(page.locator("#start")).to_be_enabled()  # try again after allowing it
        assert not stats(page)["connected"]


def test_a_wrong_key_is_refused_in_plain_words(local_agent: LocalAgent) -> None:
    with chromium() as browser:
        page = browser.new_page()
        start(page, local_agent.url, key="not-the-key")
        notice = page.locator("#notice")
        expect(notice).to_have_text(
            "The server refused the key. Check it in Settings and press Start.", timeout=20_000
        )
        expect(page.locator("#connection-text")).to_have_text("Key refused")
        expect(page.locator("#start")).to_be_enabled()
        assert not stats(page)["connected"]
        # No key at all: the page says one is needed.
        page.fill("#api-key", "")
        page.click("#start")
        expect(notice).to_have_text("This server needs a key. Enter one in Settings and press Start.")
        assert "not-the-key" not in page.url  # never in the address
        page.screenshot(path=str(artefacts_dir() / "wrong-key.png"))


def test_server_errors_reach_the_page(local_agent: LocalAgent) -> None:
    with chromium() as browser:
        page = browser.new_page()
        start(page, local_agent.url)
        wait_for(page, "window.voiceAgent.stats().events['session.updated'] >= 1", 20)
        # Instructions over the server's limit: its `error` event is shown, and the session goes on.
        page.fill("#instructions", "Be brief. " * 500)
        page.click("#apply")
        notice = page.locator("#notice")
        expect(notice).to_contain_text(
            "The server reported a problem: instructions have 5000", timeout=20_000
        )
        page.fill("#instructions", "Be brief.")
        page.click("#apply")
        wait_for(page, "window.voiceAgent.stats().events['session.updated'] >= 2", 20)
        assert stats(page)["connected"]


def test_server_down_then_back(llm: SimOpenAIServer, tmp_path: Path) -> None:
    agent = LocalAgent(llm.base_url)
    try:
        with chromium() as browser:
            page = browser.new_page()
            start(page, agent.url)
            wait_for(page, "window.voiceAgent.stats().connected", 20)
            agent.stop()
            notice = page.locator("#notice")
            expect(notice).to_contain_text("connection to the server was lost", timeout=20_000)
            # The reconnect finds nobody there.
            expect(notice).to_contain_text("Cannot reach the server", timeout=20_000)
            expect(page.locator("#connection")).to_have_attribute(
                "data-state", re.compile("waiting|connecting")
            )
            page.screenshot(path=str(artefacts_dir() / "server-down.png"))
            # Back on the same address: the page reconnects by itself and the conversation goes on.
            agent = LocalAgent(llm.base_url, port=agent.port)
            expect(page.locator("#connection-text")).to_have_text("Connected", timeout=40_000)
            expect(notice).to_be_hidden()
            page.fill("#typed-text", "Are you back?")
            page.press("#typed-text", "Enter")
            wait_for(page, "document.querySelector('#log li.agent:not(.interim)') !== null")
    finally:
        agent.stop()


# ---- the Ray Serve application -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_spoken_turn_on_the_served_cluster(agent: ServeRun, tmp_path: Path) -> None:
    """The page as `serve run serve_config.yaml` serves it (offline engines, no key), one spoken turn."""
    speech, reference = librivox("0920", RATE)
    with chromium(microphone(tmp_path, speech, silence(3000))) as browser:
        page = browser.new_page()
        start(page, f"{agent.base_url}/", key="")
        wait_for(page, "document.querySelector('#log li.agent:not(.interim)') !== null", 120)
        heard = final_texts(page, "user")
        assert len(heard) == 1 and word_error_rate(reference, heard[0]) <= 0.5, heard
        assert final_texts(page, "agent")[0].strip()
        wait_for(page, "window.voiceAgent.stats().playback.audible > 4800", 30)  # reply audio heard
        expect(page.locator("#latency-bar .part")).to_have_count(len(PARTS))
        page.screenshot(path=str(artefacts_dir() / "served-cluster.png"))
