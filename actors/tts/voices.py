"""Voices and speaking speed as OpenAI's speech API names them, and what each means for the offline
eSpeak NG engine.

OpenAI's voice names are accepted everywhere a voice is (`/v1/audio/speech`, Realtime `session.update`),
so code written for OpenAI runs unchanged: the OpenAI engine passes them through, and eSpeak speaks each
with a distinct English voice and variant of its own (the table is in the README). The server's
configured voice (`tts_voice`) is accepted too.
"""

from __future__ import annotations

# OpenAI's built-in voices (the `openai` SDK's `SpeechCreateParams` lists them) → eSpeak NG voice
# "<voice file>+<variant>": m* variants are male, f* female; the voice file sets the accent ("en" is
# British English, "en-gb-x-rp" Received Pronunciation). eSpeak ignores a variant on a voice it has to
# find by language ("en-gb+f1" speaks as plain "en-gb"), so these name voice files.
ESPEAK_VOICES: dict[str, str] = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en+m1",
    "coral": "en-us+f2",
    "echo": "en-us+m2",
    "fable": "en-gb-x-rp+m4",
    "nova": "en-us+f3",
    "onyx": "en-us+m8",
    "sage": "en+f1",
    "shimmer": "en-us+f4",
    "verse": "en-gb-scotland+m5",
    "marin": "en-us+f5",
    "cedar": "en-us+m6",
}
OPENAI_VOICES: tuple[str, ...] = tuple(ESPEAK_VOICES)

MIN_SPEED, MAX_SPEED = 0.25, 4.0  # OpenAI's range for `speed`


class VoiceError(ValueError):
    """A voice this server cannot speak with; the message says which it can."""


def check_voice(voice: str, configured: str) -> str:
    """`voice` if this server speaks with it (an OpenAI voice name or the configured voice), else
    VoiceError naming the choices."""
    if voice in ESPEAK_VOICES or voice == configured:
        return voice
    raise VoiceError(
        f"voice {voice[:60]!r} is not available: use one of {', '.join(OPENAI_VOICES)} "
        f"or the server's voice {configured!r}"
    )


def espeak_voice(voice: str) -> str:
    """The eSpeak voice for `voice`: an OpenAI name mapped, anything else (an eSpeak voice) as is."""
    return ESPEAK_VOICES.get(voice, voice)
