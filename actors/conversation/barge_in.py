"""Barge-in: does user speech over a reply interrupt it, or is it a cough?

Speech that starts while a reply is playing pauses the reply's audio at once (`speech_started`), so
the agent never talks over the user. The speech is a real interruption once it has lasted
`barge_in_min_speech_ms` and has at least `barge_in_min_words` words. While it is being spoken its
length is what the VAD has heard voiced (a silence at its end may be the end of the turn: a click
followed by the silence window is not long speech), and once it ended, its start to its end.
Interim transcripts can prove it while the user is still speaking (`interim_transcript`); the final
transcript does otherwise (`transcribed`). A real interruption cancels the reply, and the turn it
becomes is answered as usual. Anything else — speech that ends too short, a transcript with too few
words or none (a cough, a door, "mm-hmm"), an utterance dropped before it was committed — lets the
reply resume where it paused, and is no turn to answer. While several utterances over one reply are
undecided (a cough, then a question), the reply stays paused until none is.

With semantic turn detection, whose turns can take seconds to end, a sound too short to interrupt holds
the reply no longer than server VAD would: once it has been quiet for the silence window
(`speech_paused` says how much longer that is), the reply plays on while its turn is still undecided,
and pauses again if the speech goes on (`speech_resumed`). Sooner would talk into the user's pause
between "Stop." and what follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from actors.conversation.metrics import clock
from actors.conversation.options import SessionLimits
from actors.tasks import cancel_and_wait


@dataclass
class _Speech:
    """One utterance spoken over a reply."""

    began: float  # clock time the speech began
    words: int = 0  # in its latest interim transcript
    item_id: str | None = None  # its utterance, once committed
    real: bool | None = None  # a real interruption; None while undecided
    quiet: bool = False  # paused too short to interrupt: it no longer holds the reply


class BargeIn:
    """Judges the speech over a reply and pauses, resumes or cancels the reply accordingly."""

    def __init__(
        self,
        *,
        pause: Callable[[], None],
        resume: Callable[[], None],
        cancel: Callable[[], Awaitable[None]],
        limits: SessionLimits,
        speech_ms: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._pause = pause
        self._resume = resume
        self._cancel = cancel
        self._speech_ms = speech_ms  # voiced length of the speech being spoken; None: unknown
        self._min_ms = limits.barge_in_min_speech_ms
        self._min_words = limits.barge_in_min_words
        self._spoken: list[_Speech] = []  # over a reply, their transcripts not yet handled
        self._speaking: _Speech | None = None  # the one still being spoken
        self._check: asyncio.Task[None] | None = None  # due once `_speaking` has lasted long enough
        self._quiet_wait: asyncio.Task[None] | None = None  # due once `_speaking` has been quiet enough
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def holding(self) -> bool:
        """Some speech over the reply is still undecided (the reply stays paused)."""
        return any(speech.real is None and not speech.quiet for speech in self._spoken)

    def speech_paused(self, quiet_for_ms: float) -> None:
        """The speech being spoken paused: too short so far to interrupt, it lets the reply play on once
        it has stayed quiet `quiet_for_ms` longer."""
        speech = self._speaking
        if speech is None or speech.real is not None or self._voiced_ms(speech) >= self._min_ms:
            return
        self._stop_waiting_for_quiet()
        self._quiet_wait = self._spawn(self._play_on_when_quiet(speech, quiet_for_ms))

    def speech_resumed(self) -> None:
        """The speech being spoken went on after a pause: the reply stays (or pauses again) until it is
        judged."""
        self._stop_waiting_for_quiet()
        speech = self._speaking
        if speech is not None and speech.real is None and speech.quiet:
            speech.quiet = False
            self._pause()

    async def _play_on_when_quiet(self, speech: _Speech, quiet_for_ms: float) -> None:
        await asyncio.sleep(quiet_for_ms / 1000)
        self._quiet_wait = None
        if speech is self._speaking and speech.real is None:
            speech.quiet = True
            if not self.holding:
                self._resume()

    def _stop_waiting_for_quiet(self) -> None:
        if self._quiet_wait is not None:
            self._quiet_wait.cancel()
            self._quiet_wait = None

    async def speech_started(self, *, over_reply: bool, began: float) -> None:
        """The user started speaking, at `began` (clock time). `over_reply`: a reply is playing and may
        be interrupted; it pauses until the speech is judged."""
        await self.speech_dropped()  # speech started again: the previous utterance was never committed
        if not over_reply:
            return
        self._pause()
        speech = _Speech(began=began)
        self._spoken.append(speech)
        self._speaking = speech
        if self._heard_enough(speech):
            self._spawn(self._interrupt(speech))  # after the speech's start has been announced
        else:
            self._check = self._spawn(self._check_when_long_enough(speech))

    async def interim_transcript(self, text: str) -> None:
        """The utterance being spoken has a new interim transcript: with enough words (and long enough)
        the speech is a real interruption before it even ends."""
        speech = self._speaking
        if speech is None or speech.real is not None:
            return
        speech.words = len(text.split())
        if self._heard_enough(speech):
            # A task of its own: this is called from the utterance's STT feeder, which must not wait
            # for the reply to end (nor fail if ending it fails).
            self._spawn(self._interrupt(speech))

    async def speech_dropped(self) -> None:
        """The utterance being spoken was dropped uncommitted (the client cleared the buffer, STT failed
        mid-utterance, or speech started again): speech that cannot be judged does not cancel the reply."""
        speech = self._forget_speaking()
        if speech is not None:
            self._spoken.remove(speech)  # no transcript will come for it
            if speech.real is None:
                self._not_an_interruption(speech)

    def committed(self, item_id: str, speech_end: float | None) -> None:
        """The speech being spoken is the committed utterance `item_id`, which ended at `speech_end`
        (clock time): too short to interrupt whatever its words, it is decided now; else by its
        transcript."""
        speech = self._forget_speaking()
        if speech is None:
            return
        speech.item_id = item_id
        ended = speech_end if speech_end is not None else clock()
        if speech.real is None and not self._long_enough(speech, ended):
            self._not_an_interruption(speech)

    async def transcribed(self, item_id: str, transcript: str | None, speech_end: float | None) -> bool:
        """The utterance `item_id` has its final `transcript` (None: its transcription failed). Spoken
        over a reply and still undecided, it is decided now. Returns False when it was spoken over a
        reply and is no interruption: no turn to answer."""
        speech = next((s for s in self._spoken if s.item_id == item_id), None)
        if speech is None:
            return True  # not spoken over a reply
        self._spoken.remove(speech)
        if speech.real is None:
            ended = speech_end if speech_end is not None else clock()
            if transcript is not None and self._proves_real(speech, ended, len(transcript.split())):
                await self._interrupt(speech)
            else:
                self._not_an_interruption(speech)
        return bool(speech.real)

    async def close(self) -> None:
        """Stop the checks still due (the session ends)."""
        self._forget_speaking()
        await cancel_and_wait(list(self._tasks))

    def _long_enough(self, speech: _Speech, until: float) -> bool:
        return (until - speech.began) * 1000 >= self._min_ms

    def _proves_real(self, speech: _Speech, until: float, words: int) -> bool:
        return self._long_enough(speech, until) and words >= self._min_words

    def _voiced_ms(self, speech: _Speech) -> float:
        voiced = self._speech_ms()
        return (clock() - speech.began) * 1000 if voiced is None else voiced

    def _heard_enough(self, speech: _Speech) -> bool:
        """The speech still being spoken is already a real interruption."""
        return self._voiced_ms(speech) >= self._min_ms and speech.words >= self._min_words

    async def _check_when_long_enough(self, speech: _Speech) -> None:
        # Until it has been voiced long enough (a pause in it does not count), or it ends and this is
        # cancelled; the VAD's count has no event to wait on, and is read at most every millisecond.
        while (voiced := self._voiced_ms(speech)) < self._min_ms:  # noqa: ASYNC110
            await asyncio.sleep(max(self._min_ms - voiced, 1.0) / 1000)
        self._check = None  # from here on, committing the speech must not cancel this task
        if speech is self._speaking and self._heard_enough(speech):
            await self._interrupt(speech)

    async def _interrupt(self, speech: _Speech) -> None:
        if speech.real is None:
            speech.real = True
            await self._cancel()

    def _not_an_interruption(self, speech: _Speech) -> None:
        speech.real = False
        if not self.holding:
            self._resume()

    def _forget_speaking(self) -> _Speech | None:
        """Stop following the speech being spoken; returns it."""
        if self._check is not None:
            self._check.cancel()
            self._check = None
        self._stop_waiting_for_quiet()
        speech, self._speaking = self._speaking, None
        return speech

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
