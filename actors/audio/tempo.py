"""Streaming time-stretch of PCM16 (tempo changes, pitch kept) with FFmpeg's `atempo` filter through
PyAV: for speaking speeds an engine cannot reach by itself (eSpeak speaks no slower than 80 words a
minute)."""

from __future__ import annotations

from fractions import Fraction

import av
import av.filter

from actors.audio.encode import pcm16_frame

# One atempo instance takes 0.5–100; slower tempos chain instances.
_ATEMPO_MIN = 0.5


class TempoStretch:
    """PCM16 mono in, the same audio `factor` times faster out (0 < factor; 0.5 is twice as long)."""

    def __init__(self, sample_rate: int, factor: float) -> None:
        if factor <= 0:
            raise ValueError(f"tempo factor must be positive, got {factor}")
        self.sample_rate = sample_rate
        self._pts = 0
        graph = av.filter.Graph()
        node = graph.add_abuffer(
            format="s16", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate)
        )
        self._src = node
        remaining = factor
        while remaining < _ATEMPO_MIN:
            step = graph.add("atempo", str(_ATEMPO_MIN))
            node.link_to(step)
            node, remaining = step, remaining / _ATEMPO_MIN
        last = graph.add("atempo", f"{remaining:.6f}")
        node.link_to(last)
        sink = graph.add("abuffersink")
        last.link_to(sink)
        graph.configure()
        self._graph = graph

    def process(self, pcm: bytes, last: bool = False) -> bytes:
        """Stretch the next chunk; `last` flushes what the filter still holds."""
        if pcm:
            frame = pcm16_frame(pcm, self.sample_rate, self._pts)
            self._pts += frame.samples
            self._graph.push(frame)
        if last:
            self._graph.push(None)
        out = bytearray()
        while True:
            try:
                stretched = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return bytes(out)
            out += stretched.to_ndarray().astype("<i2").tobytes()
