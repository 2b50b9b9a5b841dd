"""Looping, measured where Whisper's 30 s window cannot hide it: on codes, and on transcripts.

- loop rate: share of generations that hit the max-length guard without a stop decision.
- code repetition: share of frames inside a back-to-back repetition of a pattern of p frames
  (min_period <= p <= max_period, all K codes equal) that spans at least `min_span` frames and
  at least two full periods. Ground-truth codes are scored the same way (silence repeats too):
  read a model's number against that reference row.
- transcript repetition: share of words inside an immediately repeated word n-gram (n <= 3),
  e.g. "the the" or "of the of the".
"""

import numpy as np


def repeated_frames(
    codes: np.ndarray, *, min_period: int = 1, max_period: int = 20, min_span: int = 8
) -> np.ndarray:
    """codes [K, F] -> bool [F]: frames inside a back-to-back repeated pattern."""
    codes = np.asarray(codes)
    f = codes.shape[1]
    covered = np.zeros(f, dtype=bool)
    for p in range(min_period, min(max_period, f // 2) + 1):
        same = (codes[:, :-p] == codes[:, p:]).all(axis=0)  # [F - p]: frame i equals frame i + p
        padded = np.concatenate([[False], same, [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            run = end - start  # frames start .. end + p - 1 are periodic with period p
            if run >= p and run + p >= min_span:
                covered[start : end + p] = True
    return covered


def code_repetition(codes: np.ndarray, **kwargs) -> float:
    """Share of frames inside a repeated pattern (0 for an empty output)."""
    codes = np.asarray(codes)
    return float(repeated_frames(codes, **kwargs).mean()) if codes.shape[1] else 0.0


def transcript_repetition(text: str, *, max_n: int = 3) -> float:
    """Share of words inside an immediately repeated n-gram (n = 1..max_n)."""
    words = text.split()
    covered = np.zeros(len(words), dtype=bool)
    for n in range(1, max_n + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n]:
                covered[i : i + 2 * n] = True
    return float(covered.mean()) if words else 0.0


def loop_rate(stopped: list[bool]) -> float:
    """Share of generations that never stopped by themselves."""
    return float(np.mean([not s for s in stopped])) if stopped else 0.0
