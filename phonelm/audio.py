"""Audio I/O and conditioning: any file/rate/channel count in, mono float32 at a target rate out."""

import io
import math
import os

import julius
import numpy as np
import soundfile as sf
import torch

from phonelm.io import write_with


def load_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an audio file -> (wav [C, T] float32 in [-1, 1], sample rate)."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(data.T)), sr


def conform(wav: torch.Tensor, sr: int, target_sr: int) -> torch.Tensor:
    """Down-mix to mono and resample: wav [T] or [C, T] at `sr` -> [T'] at `target_sr`."""
    if wav.dim() not in (1, 2):
        raise ValueError(f"audio must be [T] or [channels, T], got shape {tuple(wav.shape)}")
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    wav = wav.float()
    if wav.dim() == 2:
        wav = wav.mean(dim=0)
    if sr != target_sr and wav.numel():  # an empty clip stays empty at any rate
        g = math.gcd(sr, target_sr)
        wav = julius.resample_frac(wav, sr // g, target_sr // g)
    return wav.clamp(-1.0, 1.0)


def _pcm16(target, wav: torch.Tensor, sr: int) -> None:
    data = wav.detach().float().clamp(-1.0, 1.0).cpu().numpy()
    sf.write(target, data, sr, subtype="PCM_16", format="WAV")


def wav_bytes(wav: torch.Tensor, sr: int) -> bytes:
    """The bytes save_audio writes for mono wav [T]."""
    buffer = io.BytesIO()
    _pcm16(buffer, wav, sr)
    return buffer.getvalue()


def save_audio(path: str | os.PathLike, wav: torch.Tensor, sr: int) -> None:
    """Atomically write mono wav [T] as 16-bit PCM."""
    try:
        write_with(path, lambda tmp: _pcm16(str(tmp), wav, sr))
    except sf.LibsndfileError as err:  # how libsndfile says "disk full": "System error"
        raise OSError(f"cannot write {path} ({err})") from err
