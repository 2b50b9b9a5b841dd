"""Scores on text and audio: WER/CER after Whisper's English normaliser, spectral distance."""

import math
from dataclasses import dataclass
from functools import cache

import jiwer
import torch

from phonelm.codecs.mel_rvq import log_mel


@cache
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_transcript(text: str) -> str:
    return " ".join(_normalizer()(text).split())


@dataclass(frozen=True)
class ErrorRates:
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int


def error_rates(references: list[str], hypotheses: list[str]) -> ErrorRates:
    """Pooled WER/CER (errors summed over utterances / reference words), normalised first."""
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    if not any(refs):
        raise ValueError("all references are empty after normalisation")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    n_words = words.hits + words.substitutions + words.deletions
    return ErrorRates(
        wer=words.wer,
        cer=chars.cer,
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        reference_words=n_words,
    )


def log_mel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |log-mel(a) - log-mel(b)| (24 kHz audio; 100 Slaney bands, hop 320) over the shorter."""
    n = min(a.shape[-1], b.shape[-1])
    features = log_mel()
    return float((features(a[:n]) - features(b[:n])).abs().mean())


MCD_RATE = 24_000  # the rate mel_cepstral_distortion takes (the codec's log-mel features)
N_CEPSTRA = 24  # c1..c24: the usual MCD range (c0, the frame's energy, is left out)


def mel_cepstra(wav: torch.Tensor) -> torch.Tensor:
    """24 kHz audio [T] -> cepstra [frames, 24]: the orthonormal DCT-II of the natural-log mel
    spectrum (the codec's 100 Slaney bands, hop 320), coefficients 1..24 (MFCC-style)."""
    features = log_mel()(wav)  # [frames, bands]
    bands = features.shape[-1]
    n = torch.arange(bands, dtype=torch.float64)
    k = torch.arange(1, N_CEPSTRA + 1, dtype=torch.float64)[:, None]
    dct = torch.cos(torch.pi / bands * (n + 0.5) * k) * (2.0 / bands) ** 0.5  # [24, bands]
    return (features.double() @ dct.T).float()


def dtw(cost) -> tuple[float, int]:
    """(total cost, steps) of the cheapest monotonic alignment of two sequences (dynamic time
    warping over cost [N, M], moves (1, 0), (0, 1), (1, 1)), one anti-diagonal at a time."""
    import numpy as np

    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    steps = np.zeros((n + 1, m + 1))
    total[0, 0] = 0.0
    for t in range(2, n + m + 1):
        i = np.arange(max(1, t - m), min(n, t - 1) + 1)
        j = t - i
        options = np.stack([total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]])
        lengths = np.stack([steps[i - 1, j - 1], steps[i - 1, j], steps[i, j - 1]])
        pick = options.argmin(0)
        total[i, j] = cost[i - 1, j - 1] + options[pick, np.arange(len(i))]
        steps[i, j] = lengths[pick, np.arange(len(i))] + 1
    return float(total[n, m]), int(steps[n, m])


def dtw_mean_cost(cost) -> float:
    """The mean cost per step along the cheapest DTW alignment."""
    total, steps = dtw(cost)
    return total / steps


def mel_cepstral_distortion(generated: torch.Tensor, truth: torch.Tensor) -> float:
    """MCD in dB of generated 24 kHz audio against the true audio of the same sentence, after
    DTW alignment: per aligned frame pair (10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d)^2) over
    cepstra c1..c24, averaged along the path. nan for empty audio. An ASR-free score: it needs
    the true audio, which the embedded corpus has for every sentence."""
    if generated.numel() == 0 or truth.numel() == 0:
        return math.nan
    a, b = mel_cepstra(generated), mel_cepstra(truth)
    frame_distance = torch.cdist(a.double(), b.double()) * (10 / math.log(10)) * math.sqrt(2)
    return dtw_mean_cost(frame_distance.numpy())
