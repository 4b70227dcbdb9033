"""One voice conversation: audio in → VAD/endpointing → STT → LLM phrases → TTS → audio out.

`VoiceSession` is the entry point and composes three parts:

- `actors.conversation.input`: resampling, preroll, endpointing and the utterance fed to STT;
- `actors.conversation.turns`: the turn state machine (commit, the pending user turn, barge-in, which
  `actors.conversation.barge_in` judges);
- `actors.conversation.reply`: the reply player (LLM → TTS → paced audio, cancellation, the turn's end).

It knows the three stages only through `actors.conversation.stages` contracts and the wire protocol only
through `actors.conversation.events`, so it runs the same in a unit test with fakes, in one process, or
as the router of a Ray Serve application.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from actors.audio.end_of_turn import EndOfTurnModel, SmartTurnModel
from actors.audio.vad import SpeechDetector
from actors.conversation.events import Emit, new_id
from actors.conversation.input import AudioInput
from actors.conversation.items import ConversationItem, Item
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.reply import ReplyPlayer
from actors.conversation.stages import PhraseLLMClient, SynthesizerClient, TranscriberClient
from actors.conversation.turns import Conversation, TurnStateMachine
from actors.llm.sentence_end import GemmaSentenceEnd, SentenceEndModel
from actors.memory.sink import MemorySink
from actors.tools.toolbox import Toolbox


class VoiceSession:
    """One conversation, whatever carries it (a Realtime WebSocket, a test, a benchmark).

    Feed it client audio (`append_audio`) or typed text (`add_user_text` + `create_response`); it emits
    `actors.conversation.events` through `emit` as the turn goes: speech started and stopped, transcript,
    reply text and audio, `ResponseFinished` with the turn's metrics. Finished turns go to `memory_sink`.
    Call `close()` when the client leaves: it cancels every stage call the session still has running.
    """

    def __init__(
        self,
        *,
        stt: TranscriberClient,
        llm: PhraseLLMClient,
        tts: SynthesizerClient,
        emit: Emit,
        options: SessionOptions,
        limits: SessionLimits | None = None,
        speech_detector: Callable[[], SpeechDetector] | None = None,
        end_of_turn: Callable[[], EndOfTurnModel] = SmartTurnModel,
        sentence_end: Callable[[], SentenceEndModel] = GemmaSentenceEnd,
        memory_sink: MemorySink | None = None,
        memory_context: Callable[[str], Awaitable[str | None]] | None = None,
        user_id: str = "anonymous",
        session_id: str | None = None,
        toolbox: Toolbox | None = None,
    ) -> None:
        self.session_id = session_id or new_id("sess")
        self.user_id = user_id
        self.options = options
        self.limits = limits or SessionLimits()
        self._sink = memory_sink
        self.toolbox = toolbox or Toolbox()  # the server tools its replies may call
        conversation = self.conversation = Conversation()
        self._reply = ReplyPlayer(
            llm=llm,
            tts=tts,
            emit=emit,
            options=options,
            limits=self.limits,
            conversation=conversation,
            session_id=self.session_id,
            user_id=user_id,
            memory_sink=memory_sink,
            memory_context=memory_context,
            on_finished=lambda status, heard_at: self._turns.reply_finished(status, heard_at),
            toolbox=self.toolbox,
        )
        self._turns = TurnStateMachine(
            replies=self._reply,
            emit=emit,
            options=options,
            conversation=conversation,
            input_ms=lambda: self._input.received_ms,
            limits=self.limits,
            speech_ms=lambda: self._input.speech_ms,
        )
        self._input = AudioInput(
            stt=stt,
            emit=emit,
            options=options,
            limits=self.limits,
            speech_detector=speech_detector,
            end_of_turn=end_of_turn,
            sentence_end=sentence_end if self.limits.end_of_turn_words else None,
            agent_said=conversation.last_reply,
            on_speech_started=self._turns.speech_started,
            on_speech_stopped=self._turns.commit,
            on_speech_paused=self._turns.speech_paused,
            on_speech_resumed=self._turns.speech_resumed,
            on_interim_transcript=self._turns.barge_in.interim_transcript,
            on_speech_dropped=self._turns.barge_in.speech_dropped,
        )

    def update_options(self, options: SessionOptions) -> None:
        """Apply a validated `session.update` (sample rates, turn detection, instructions, limits)."""
        self._input.update_options(options)
        self._turns.options = options
        self._reply.options = options
        self.options = options

    @property
    def responding(self) -> bool:
        """A reply is being generated or played."""
        return self._reply.responding

    @property
    def in_turn(self) -> bool:
        """A turn is under way: the user is speaking, their utterance is being transcribed, or the
        reply to it is being generated or played. Between turns a session can move without losing
        anything the user said or was told."""
        return self._input.speech_ms is not None or self._turns.transcribing or self.responding

    async def append_audio(self, pcm16: bytes, received_at: float | None = None) -> None:
        """Accept client audio at the session's input rate (already validated PCM16 mono)."""
        await self._input.append(pcm16, received_at)

    async def commit(self) -> None:
        """Push-to-talk: the audio appended since the last commit is the user's turn."""
        await self._turns.commit_buffer(self._input.take_utterance())

    async def clear_audio(self) -> None:
        """Drop the audio not yet committed (and the utterance being transcribed, and any reply
        prepared for it)."""
        await self._turns.discard_early()
        await self._input.clear()

    async def add_user_text(self, text: str) -> str:
        """A typed user message; the next `create_response` answers it. Returns the item id."""
        return await self._turns.add_user_text(text)

    async def add_tool_output(self, call_id: str, output: str) -> str:
        """The client's output for a call it was asked to make; the next `create_response` hears it.
        Returns the item id (`ItemError` if the conversation has no such call, or it has its output)."""
        return await self._turns.add_tool_output(call_id, output)

    async def add_tool_call(self, call_id: str, name: str, arguments: str) -> str:
        """A call made earlier (a client restoring a conversation); its output may follow. Returns the
        item id (`ItemError` if the conversation has a call with that id already)."""
        return await self._turns.add_tool_call(call_id, name, arguments)

    @property
    def server_tool_names(self) -> frozenset[str]:
        """The tools the server runs for this session (a client tool may not take their names)."""
        return frozenset(definition.name for definition in self.toolbox.definitions())

    async def create_response(self) -> None:
        """Answer the pending user message (or continue the conversation); one response at a time."""
        await self._turns.create_response()

    async def cancel_response(self) -> None:
        """Stop the reply in progress; it ends with `ResponseFinished(status="cancelled")`."""
        await self._turns.cancel_response()

    def item(self, item_id: str) -> Item:
        """A conversation item by id (`ItemError` if there is none)."""
        return self.conversation.get(item_id)

    def delete_item(self, item_id: str) -> None:
        """Remove an item from the conversation: the LLM no longer sees it."""
        self.conversation.delete(item_id)

    def truncate_item(self, item_id: str, audio_end_ms: int) -> ConversationItem:
        """Cut an assistant reply's text to the audio the user heard (its first `audio_end_ms`)."""
        return self.conversation.truncate(item_id, audio_end_ms)

    async def close(self) -> None:
        """The client left: cancel the reply, the transcription and every turn task, end the session."""
        await self._reply.cancel("client_cancelled")
        await self._input.close()
        await self._turns.close()
        if self._sink is not None:
            self._sink.session_ended(self.user_id)


__all__ = ["SessionLimits", "SessionOptions", "VoiceSession", "new_id"]
