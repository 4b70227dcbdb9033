"""A voice session's settings: what the client may change (`SessionOptions`) and the server's limits
(`SessionLimits`), shared by the session's parts (input, turns, reply)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.audio.vad import VadConfig
from actors.llm.base import ToolChoice, ToolSpec

FILLER_PHRASES = ("One moment.", "Let me check.", "Just a second.", "Still on it.")


@dataclass
class SessionOptions:
    """What a client may change with `session.update`."""

    instructions: str
    input_sample_rate: int = 24_000
    output_sample_rate: int = 24_000
    turn_detection: VadConfig | None = field(default_factory=VadConfig)  # None: the client commits
    max_tokens: int = 120
    temperature: float = 0.7
    output_audio: bool = True  # False: text-only replies, no TTS
    voice: str | None = None  # an OpenAI voice name or the configured one; None: the configured one
    speed: float = 1.0  # of the reply's speech
    # A transcription session (OpenAI's session type "transcription"): turns are transcribed, never
    # answered.
    transcription_only: bool = False
    transcription_model: str = ""  # what transcribes (echoed to the client; the STT stage decides)
    tools: tuple[ToolSpec, ...] = ()  # the client's tools (it runs them), offered with the server's
    tool_choice: ToolChoice = "auto"  # chat-completions shape


@dataclass(frozen=True)
class SessionLimits:
    """What the server allows one session: chunk sizes, buffers, history, and its guards on stage calls."""

    stt_chunk_ms: int | None = None  # None: by whether the STT gives interim results
    audio_lead_ms: int = 500
    # User speech over a reply pauses its audio at once, but cancels the reply only once it has lasted
    # this long and (as far as the STT has heard) has this many words; shorter speech, or fewer
    # words once it ends (a cough, a door, "mm-hmm"), lets the reply play on where it paused.
    barge_in_min_speech_ms: int = 500  # bench.turn_taking: fewest false barge-ins, none missed
    barge_in_min_words: int = 2
    history_turns: int = 8
    max_utterance_s: float = 120.0  # one user turn's audio: the end of a turn with VAD, a full buffer without
    # The session's guard on stage calls, on top of the provider's own timeout (`stt_timeout_s` for a
    # transcript, `tts_timeout_s` for the next audio chunk): a stage replica that died or hangs fails
    # the turn within seconds instead of leaving the user in silence.
    stage_timeout_s: float = 3.0
    stt_timeout_s: float = 10.0
    tts_timeout_s: float = 5.0
    apology: str = "Sorry, I'm having trouble answering right now."  # spoken when a reply fails
    # Start the LLM at each pause in the user's speech, before the turn is confirmed, and keep the
    # reply unheard until it is (a pause the user talks on from costs one wasted LLM call).
    preemptive_generation: bool = True
    # With semantic turn detection, a pause that sounds finished ends the turn only if the words before
    # it can end a sentence (`actors.llm.sentence_end`).
    end_of_turn_words: bool = True
    # Tools in a reply: at most this many rounds of calls per turn (the next round is asked to answer
    # without tools); a server call still running after `tool_filler_delay_ms` gets a filler phrase
    # spoken (none when the model said words before the call), and up to `tool_filler_max` in all,
    # `tool_filler_repeat_ms` apart.
    tool_max_rounds: int = 3
    tool_filler_delay_ms: int = 400
    tool_filler_repeat_ms: int = 1500
    tool_filler_max: int = 2
    tool_filler_phrases: tuple[str, ...] = FILLER_PHRASES
