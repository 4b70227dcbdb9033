"""Debian's Chromium driven by Playwright, with a WAV file as its microphone, for the talk page's tests.

Playwright drives the system's `chromium` (installed by `scripts/setup.sh --dev`); it never downloads
a browser. Chromium's fake capture device plays the file once (`%noloop`: silence after it ends) and
grants the microphone without a prompt; autoplay is allowed so reply audio renders headless.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import wave
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent


def write_wav(path: Path, pcm16: bytes, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16)
    return path


@contextlib.contextmanager
def chromium(microphone_wav: Path | None = None, allow_microphone: bool = True) -> Iterator[BrowserContext]:
    """A headless Chromium (fresh profile) whose microphone plays `microphone_wav` once, or Chromium's
    beep without one; with `allow_microphone` false, the user refuses the permission."""
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    ]
    # Grant the microphone as a user would at the prompt, or refuse it.
    flags.append("--use-fake-ui-for-media-stream" if allow_microphone else "--deny-permission-prompts")
    if microphone_wav is not None:
        flags.append(f"--use-file-for-fake-audio-capture={microphone_wav}%noloop")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        context = browser.new_context(viewport={"width": 1200, "height": 820})
        try:
            yield context
        finally:
            leave_evidence(context)
            browser.close()


def leave_evidence(context: BrowserContext) -> None:
    """Each page as it was at the end (screenshot, and the page's counters as JSON), named after the
    running test: what to look at when a test fails."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "browser").split("::")[-1].split(" ")[0]
    for i, page in enumerate(context.pages):
        stem = artefacts_dir() / f"{test}-end{i or ''}"
        try:
            page.screenshot(path=f"{stem}.png")
            counters = page.evaluate("() => window.voiceAgent ? window.voiceAgent.stats() : null")
            Path(f"{stem}.json").write_text(json.dumps(counters, indent=1))
        except Exception as exc:  # a crashed page: nothing to keep
            Path(f"{stem}.txt").write_text(repr(exc))


def artefacts_dir() -> Path:
    """Where browser tests leave screenshots: `VOICE_TEST_ARTEFACTS`, else `test-artefacts/` here."""
    path = Path(os.environ.get("VOICE_TEST_ARTEFACTS", ROOT / "test-artefacts")) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path
