"""Stream the output of a blocking producer (llama.cpp decoding, eSpeak synthesis) into asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar

T = TypeVar("T")
Producer = Callable[[Callable[[T], None], threading.Event], None]

_DONE = object()


async def stream_from_thread(
    produce: Producer[T], *, name: str, join_on_close: bool = False
) -> AsyncGenerator[T, None]:
    """Run `produce(emit, stop)` in a daemon thread and yield each emitted item as it arrives.

    Closing the iterator early (barge-in) sets `stop`, which the producer checks between items. A dedicated
    thread rather than `asyncio.to_thread`: producers may wait seconds on a per-process lock, which must not
    tie up the loop's default executor. `join_on_close` waits (off the loop) for the producer to notice.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def post(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under an abandoned stream
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            if not stop.is_set():  # closed while queued behind the lock: skip the work entirely
                produce(post, stop)
        except Exception as exc:
            post(exc)
        else:
            post(_DONE)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        if join_on_close and thread.is_alive():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(thread.join)
