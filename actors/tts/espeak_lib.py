"""A minimal ctypes binding to the libespeak-ng shipped in the `espeakng-loader` wheel.

libespeak-ng keeps global state (one voice, one callback, one synthesis at a time), so this
module owns it: it initialises the library once per process and serialises every synthesis
with a process-wide lock.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

# Constants from espeak-ng/speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1
EE_OK = 0
# Callback chunk length: small enough that the first chunk is ready almost at once, big enough
# that a sentence is a handful of loop wake-ups rather than hundreds.
BUFFER_MS = 40


class _EspeakVoice(ctypes.Structure):
    # espeak_VOICE, used to select a voice by language ("en-gb") when no voice file has that name.
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


# int callback(short *wav, int numsamples, espeak_EVENT *events); returning 1 aborts synthesis.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# Receives each PCM16 chunk; returns True to abort the synthesis.
ChunkSink = Callable[[bytes], bool]


class EspeakError(RuntimeError):
    pass


class _Espeak:
    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_EspeakVoice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int

        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path, 0)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({rate}); data path {data_path!r}")
        self.sample_rate: int = rate
        self._lib = lib
        self._sink: ChunkSink | None = None
        self._settings: tuple[str, int] | None = None
        # Keep a reference: ctypes frees the trampoline when the Python object is collected.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: Any, numsamples: int, _events: int | None) -> int:
        sink = self._sink
        if sink is None:
            return 1
        # wav is NULL (numsamples 0) on the final call of a synthesis.
        if numsamples > 0 and wav and sink(ctypes.string_at(wav, numsamples * 2)):
            return 1
        return 0

    def _set_voice(self, voice: str) -> bool:
        # Like the espeak-ng CLI: a voice file name ("en-us", "en-us+m3"), else a language ("en-gb").
        if self._lib.espeak_SetVoiceByName(voice.encode()) == EE_OK:
            return True
        language, _, _variant = voice.partition("+")
        spec = _EspeakVoice(languages=language.encode())
        return bool(self._lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) == EE_OK)

    def synth(self, text: str, voice: str, rate_wpm: int, sink: ChunkSink) -> None:
        """Blocking: synthesise `text`, handing each chunk to `sink` from this thread."""
        with _lock:
            if self._settings != (voice, rate_wpm):
                self._settings = None
                if not self._set_voice(voice):
                    raise EspeakError(f"unknown eSpeak voice {voice!r}")
                # Set the rate after the voice: loading a voice may reset it.
                if self._lib.espeak_SetParameter(ESPEAK_RATE, rate_wpm, 0) != EE_OK:
                    raise EspeakError(f"eSpeak rejected rate {rate_wpm}")
                self._settings = (voice, rate_wpm)
            data = text.encode("utf-8")
            self._sink = sink
            try:
                err = self._lib.espeak_Synth(
                    data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
                )
                self._lib.espeak_Synchronize()
            finally:
                self._sink = None
            if err != EE_OK:
                raise EspeakError(f"espeak_Synth failed ({err})")


_lock = threading.Lock()
_instance: _Espeak | None = None
_init_lock = threading.Lock()


def get_espeak() -> _Espeak:
    """The process-wide library handle, initialised on first use (~tens of ms)."""
    global _instance
    with _init_lock:
        if _instance is None:
            _instance = _Espeak()
        return _instance
