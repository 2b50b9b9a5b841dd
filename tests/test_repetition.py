import numpy as np
import pytest

from eval.repetition import code_repetition, loop_rate, repeated_frames, transcript_repetition


def random_codes(frames: int, seed: int = 0, k: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1024, (k, frames))


def test_non_looping_codes_score_zero():
    assert code_repetition(random_codes(300)) == 0.0


def test_a_looping_tail_is_measured_exactly():
    speech = random_codes(100)
    pattern = random_codes(5, seed=1)
    codes = np.concatenate([speech, np.tile(pattern, 20)], axis=1)  # 100 frames, then 100 looped
    assert code_repetition(codes) == pytest.approx(0.5)
    covered = repeated_frames(codes)
    assert not covered[:100].any() and covered[100:].all()


def test_a_stuck_frame_is_a_period_one_loop():
    codes = np.concatenate([random_codes(50), np.repeat(random_codes(1, seed=2), 30, axis=1)], 1)
    assert code_repetition(codes) == pytest.approx(30 / 80)


def test_short_or_partial_repeats_do_not_count():
    codes = random_codes(60)
    codes[:, 20:23] = codes[:, 17:20]  # one repeat of a 3-frame pattern: 6 frames < min_span
    assert code_repetition(codes) == 0.0
    codes = random_codes(60)
    codes[0, 30:] = codes[0, 10:40]  # codebook 0 repeats, the others do not: not a loop
    assert code_repetition(codes) == 0.0


def test_empty_output():
    assert code_repetition(np.zeros((4, 0), dtype=int)) == 0.0


def test_transcript_repetition():
    assert transcript_repetition("the cat sat on the mat") == 0.0
    assert transcript_repetition("the the cat") == pytest.approx(2 / 3)
    assert transcript_repetition("of the of the end") == pytest.approx(4 / 5)
    assert transcript_repetition("") == 0.0


def test_loop_rate():
    assert loop_rate([True, False, True, True]) == 0.25 and loop_rate([]) == 0.0
