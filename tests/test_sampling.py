"""The decoding policy: truncation, Gumbel-max draws, per-utterance noise, repetition-aware."""

import math

import pytest
import torch

from phonelm.sampling import (
    Chooser,
    GroupSampling,
    Sampling,
    truncate,
    uniform_noise,
    utterance_seed,
)

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def policy(**coarse) -> Sampling:
    return Sampling(coarse=GroupSampling(**coarse), fine=GroupSampling(temperature=0))


def test_top_p_keeps_the_smallest_nucleus_that_reaches_p():
    logits = PROBS.log()[None]
    kept = lambda p: torch.isfinite(truncate(logits, top_k=None, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.7) == [True, True, False, False]  # 0.5 + 0.3 crosses 0.7
    assert kept(0.96) == [True, True, True, True]
    assert kept(1.0) == [True, True, True, True]


def test_top_k_keeps_k_tokens():
    logits = PROBS.log()[None]
    assert torch.isfinite(truncate(logits, top_k=2, top_p=None))[0].tolist() == [1, 1, 0, 0]


def test_draws_follow_the_tempered_truncated_distribution():
    """Gumbel-max draws over 40k frames match softmax(logits / T) after truncation."""
    frames = 40_000
    logits = PROBS.log().expand(1, frames, 4)
    for temperature, top_p in ((1.0, None), (2.0, None), (1.0, 0.7)):
        chooser = Chooser(policy(temperature=temperature, top_p=top_p), torch.tensor([7]))
        counts = torch.bincount(chooser.all_frames(logits, 0)[0], minlength=4).double() / frames
        expected = truncate(PROBS.log()[None] / temperature, top_k=None, top_p=top_p).softmax(-1)
        assert torch.allclose(counts, expected[0].double(), atol=0.01), (temperature, counts)


def test_temperature_zero_is_argmax():
    chooser = Chooser(policy(temperature=0), torch.tensor([1, 2]))
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert chooser(logits, 0, 0, None).tolist() == [1, 0]


def test_noise_of_an_utterance_does_not_depend_on_its_batch():
    both = uniform_noise(torch.tensor([5, 9]), torch.tensor([3, 3]), 1, 0, 64)
    alone = uniform_noise(torch.tensor([9]), torch.tensor([3]), 1, 0, 64)
    assert torch.equal(both[1], alone[0])
    assert not torch.equal(both[0], both[1])  # other seeds, other noise
    other_frame = uniform_noise(torch.tensor([9]), torch.tensor([4]), 1, 0, 64)
    other_codebook = uniform_noise(torch.tensor([9]), torch.tensor([3]), 2, 0, 64)
    assert not torch.equal(alone, other_frame) and not torch.equal(alone, other_codebook)
    u = uniform_noise(torch.arange(50), torch.zeros(50, dtype=torch.long), 0, 0, 1024)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(u.std() - math.sqrt(1 / 12)) < 0.01


def test_utterance_seed_depends_on_run_seed_and_id():
    assert utterance_seed(0, "LJ001-0001") == utterance_seed(0, "LJ001-0001")
    assert utterance_seed(0, "LJ001-0001") != utterance_seed(1, "LJ001-0001")
    assert utterance_seed(0, "LJ001-0001") != utterance_seed(0, "LJ001-0002")
    assert 0 <= utterance_seed(3, "x") < 2**31


def test_repetition_aware_sampling_breaks_a_loop_on_codebook_1_only():
    """top-k 1 always picks token 3; with a history of 3s, VALL-E 2's rule falls back to the
    full distribution (here uniform-ish), so other tokens appear, on codebook 1 only."""
    logits = torch.zeros(200, 16)
    logits[:, 3] = 1.0
    history = torch.full((200, 10), 3)
    seeds = torch.arange(200)
    plain = Chooser(policy(temperature=1.0, top_k=1), seeds)
    ras = Chooser(
        Sampling(
            coarse=GroupSampling(temperature=1.0, top_k=1),
            fine=GroupSampling(temperature=1.0, top_k=1),
            repetition_aware=True,
        ),
        seeds,
    )
    assert (plain(logits, 0, 10, history) == 3).all()
    broken = ras(logits, 0, 10, history)
    assert (broken != 3).float().mean() > 0.5
    assert (ras(logits, 1, 10, history) == 3).all()  # fine codebooks: never
    assert (ras(logits, 0, 10, torch.randint(4, 16, (200, 10))) == 3).all()  # no loop: no change


def test_settings_are_checked():
    with pytest.raises(ValueError, match="top_p must be in"):
        GroupSampling(top_p=1.5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        GroupSampling(temperature=-1)
