"""Acoustic-prompt continuation (VALL-E's continuation mode) for every backend."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from experiments.train import TrainConfig, Trainer
from models.registry import BACKENDS, build_backend
from phonelm.sampling import Chooser, GroupSampling, Prompted, Sampling
from tests.test_backends import K, V, make_batch, tiny

SAMPLE_ALL = Sampling(fine=GroupSampling(temperature=1.0, top_k=50))


@pytest.fixture(params=sorted(BACKENDS))
def model(request):
    torch.manual_seed(0)
    return build_backend(tiny(request.param, positions="aligned", phoneme_stride=2.5)).eval()


def prompts_of(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (K, n), generator=gen) for n in lengths]


def test_the_prompt_is_kept_verbatim_and_only_the_continuation_is_returned(model):
    gen = torch.Generator().manual_seed(1)
    phonemes = [torch.randint(4, 78, (n,), generator=gen) for n in (8, 5, 10)]
    prompts, seeds = prompts_of((4, 0, 2)), [7, 8, 9]
    padded = torch.zeros(3, K, 4, dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, :, : p.shape[1]] = p
    chooser = Prompted(Chooser(SAMPLE_ALL, torch.tensor(seeds)), padded, torch.tensor([4, 0, 2]))
    codes, lengths, _ = model.decode(phonemes, limits=torch.tensor([10, 6, 8]), choose=chooser)
    for i, p in enumerate(prompts):
        assert torch.equal(codes[i, :, : p.shape[1]], p)
    out = model.generate(phonemes, max_frames=6, sampling=SAMPLE_ALL, seeds=seeds, prompts=prompts)
    for i, (p, g) in enumerate(zip(prompts, out, strict=True)):
        assert 0 < g.codes.shape[1] <= 6
        assert torch.equal(g.codes, codes[i, :, p.shape[1] : int(lengths[i])])
    other = model.generate(
        phonemes, max_frames=6, sampling=SAMPLE_ALL, seeds=seeds, prompts=prompts_of((4, 0, 2), 5)
    )
    assert torch.equal(other[1].codes, out[1].codes)  # no prompt: nothing changed
    assert not torch.equal(other[0].codes, out[0].codes)  # another prompt, another continuation


def test_prompts_must_be_codes_of_every_codebook(model):
    with pytest.raises(ValueError, match=r"prompts must be codes \[K=3, N\]"):
        model.generate(
            [torch.tensor([5, 6])],
            max_frames=3,
            sampling=Sampling(),
            seeds=[1],
            prompts=[torch.zeros(2, 4, dtype=torch.long)],
        )


def test_there_is_no_loss_on_the_prompt(model):
    batch = make_batch(lengths=((7, 12), (5, 9)))
    prompted = replace(batch, prompt_lengths=torch.tensor([4, 0]))
    with torch.no_grad():
        full, part = model(batch), model(prompted)
        logp = model.logits(batch).log_softmax(-1)  # [B, F + 1, K, V + 1]
    codes = batch.codes[0, :, :4]  # the prompt's codes: [K, 4]
    prompt_nll = -logp[0, :4].gather(-1, codes.T[..., None])[..., 0].sum(0)  # [K]
    assert torch.equal(part.count, full.count - 4)
    torch.testing.assert_close(part.nll, full.nll - prompt_nll, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(part.stop_nll, full.stop_nll)


def test_a_share_of_training_batches_get_leading_prompts():
    batch = make_batch(lengths=((7, 12), (5, 9), (3, 30)))
    prompted = batch.with_prompts(torch.Generator().manual_seed(0))
    share = prompted.prompt_lengths / batch.code_lengths
    assert ((share >= 0.1 - 1 / 9) & (share < 0.5)).all() and (prompted.prompt_lengths > 0).all()
    trainer = SimpleNamespace(cfg=TrainConfig(prompt_fraction=0.5, seed=3), step=0)
    drawn = []
    for step in range(40):
        trainer.step = step
        once = Trainer._maybe_prompted(trainer, batch, 0)
        again = Trainer._maybe_prompted(trainer, batch, 0)  # a resumed run draws the same
        assert (once.prompt_lengths is None) == (again.prompt_lengths is None)
        if once.prompt_lengths is not None:
            assert torch.equal(once.prompt_lengths, again.prompt_lengths)
        drawn.append(once.prompt_lengths is not None)
    assert 8 < sum(drawn) < 32
    trainer.cfg = TrainConfig(prompt_fraction=0.0)
    assert Trainer._maybe_prompted(trainer, batch, 0) is batch


def test_continuation_prompts_take_the_next_short_utterance_never_its_own():
    from experiments.generation import continuation_prompts
    from experiments.overrides import ConfigError

    # frames per utterance of a split; at most 100 frames is a prompt
    ds = SimpleNamespace(ids=list("abcdef"), frame_lengths=[300, 80, 250, 90, 400, 0])
    prompts = continuation_prompts(ds, ["a", "b", "c", "d", "e"], max_frames=100)
    # the next short one after each (wrapping around), never itself, never an empty one
    assert prompts == {"a": 1, "b": 3, "c": 3, "d": 1, "e": 1}
    with pytest.raises(ConfigError, match="generate.prompt_seconds allows 50 frames"):
        continuation_prompts(ds, ["a"], max_frames=50)
    alone = SimpleNamespace(ids=["a", "b"], frame_lengths=[80, 300])
    with pytest.raises(ConfigError, match="no other utterance"):
        continuation_prompts(alone, ["a"], max_frames=100)
