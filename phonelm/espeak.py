"""Offline speech synthesis with eSpeak NG from the `espeakng-loader` wheel (no root needed).

libespeak-ng keeps global state, so one process has one synthesiser; calls are serialised.
Breathy voice variants (`+f3`, ...) mix in noise from eSpeak's own random generator, seeded at
every call, so the same calls in the same order give the same audio in any process. The wave
generator also carries pitch and phase from one call to the next: an utterance's samples (not
its words) depend on what the process spoke before it.
"""

import ctypes
import threading

import numpy as np
import torch

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_lock = threading.Lock()
_state: dict = {}


def _library():
    if "lib" not in _state:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        sr = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
        )
        if sr <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (code {sr})")
        chunks: list[np.ndarray] = []

        def collect(wav, n, _events):
            if n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        callback = _CALLBACK(collect)
        lib.espeak_SetSynthCallback(callback)
        _state.update(lib=lib, sample_rate=sr, chunks=chunks, callback=callback)
    return _state["lib"]


def has_voice(voice: str) -> bool:
    """Whether espeak-ng has `voice` (e.g. 'en-us', 'en-us+f3'); every utterance sets its
    voice again, so asking changes nothing that is spoken."""
    with _lock:
        return _library().espeak_SetVoiceByName(voice.encode()) == 0


def synthesize(
    text: str, *, voice: str = "en-us+f3", rate: int = 165, pitch: int = 50, seed: int = 0
):
    """Speak `text` -> (wav [T] float32 in [-1, 1], sample rate); `seed` seeds the breath noise."""
    with _lock:
        lib = _library()
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (e.g. 'en-us', 'en-us+f3')")
        lib.espeak_SetParameter(_RATE, rate, 0)
        lib.espeak_SetParameter(_PITCH, pitch, 0)
        lib.espeak_ng_SetRandSeed(seed)
        chunks = _state["chunks"]
        chunks.clear()
        data = text.encode() + b"\0"
        err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != 0 or not chunks:
            raise RuntimeError(f"espeak-ng produced no audio for {text!r} (code {err})")
        wav = np.concatenate(chunks).astype(np.float32) / 32768.0
    return torch.from_numpy(wav), _state["sample_rate"]
