"""Scores on text and audio: WER/CER after Whisper's English normaliser, spectral distance."""

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
