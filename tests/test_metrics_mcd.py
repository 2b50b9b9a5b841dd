"""The ASR-free score: DTW alignment and mel-cepstral distortion (MCD)."""

import math

import numpy as np
import pytest
import torch

from eval.metrics import dtw, dtw_mean_cost, mel_cepstral_distortion


def brute_force_dtw(cost) -> float:
    """The least total cost over every monotonic path, by enumeration (tiny inputs)."""
    n, m = cost.shape
    best = math.inf

    def walk(i, j, total, steps):
        nonlocal best
        total, steps = total + cost[i, j], steps + 1
        if (i, j) == (n - 1, m - 1):
            best = min(best, total)
            return
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            if i + di < n and j + dj < m:
                walk(i + di, j + dj, total, steps)

    walk(0, 0, 0.0, 0)
    return best


def test_dtw_finds_the_cheapest_alignment_of_a_time_stretched_copy():
    a = np.array([0.0, 1.0, 2.0, 3.0])
    b = np.array([0.0, 0.0, 1.0, 2.0, 2.0, 3.0])  # a, slowed down: a zero-cost path exists
    assert dtw_mean_cost(np.abs(a[:, None] - b[None])) == 0.0
    rng = np.random.default_rng(0)
    cost = rng.uniform(size=(4, 5))
    assert dtw(cost)[0] == pytest.approx(brute_force_dtw(cost))
    assert dtw(np.ones((3, 5)))[1] == 5  # diagonal moves where they can


def test_mcd_is_zero_for_the_same_audio_small_for_a_shift_and_large_for_other_audio():
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(24_000) / 24_000
    tone = torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t)) * 0.3
    noise = torch.randn(24_000, generator=gen) * 0.3
    assert mel_cepstral_distortion(tone, tone) == pytest.approx(0.0, abs=1e-4)
    delayed = torch.cat([torch.zeros(2400), tone])  # 0.1 s late: DTW absorbs it
    assert mel_cepstral_distortion(delayed, tone) < 0.25 * mel_cepstral_distortion(noise, tone)
    assert math.isnan(mel_cepstral_distortion(torch.zeros(0), tone))
