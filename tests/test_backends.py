import math

import pytest
import torch

from models.base import ModelConfig
from models.registry import BACKENDS, build_backend
from phonelm.batching import collate
from phonelm.dataset import Item
from phonelm.sampling import Sampling

K, V = 3, 1024


def tiny(name: str) -> ModelConfig:
    return ModelConfig(
        name=name,
        dim=32,
        depth=2,
        heads=1,
        dim_head=32,
        ff_mult=2,
        local_dim=32,
        local_depth=1,
        n_codebooks=K,
    )


def make_batch(seed: int = 0, lengths=((7, 12), (5, 9))):
    gen = torch.Generator().manual_seed(seed)
    items = [
        Item(
            f"u{i}",
            torch.randint(4, 78, (p,), generator=gen),
            torch.randint(0, V, (K, f), generator=gen),
        )
        for i, (p, f) in enumerate(lengths)
    ]
    return collate(items)


@pytest.fixture(params=sorted(BACKENDS))
def model(request):
    torch.manual_seed(0)
    return build_backend(tiny(request.param)).eval()


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError, match="valid models: \\['flat', 'megabyte', 'valle'\\]"):
        build_backend(ModelConfig(name="nope"))


def test_forward_shapes_and_backward(model):
    model.train()
    batch = make_batch()
    out = model(batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.nll.shape == (K,) and out.count.shape == (K,)
    if model.cfg.name == "valle":  # one random NAR stage per utterance in training
        assert out.count[0] == 21 and out.count[1:].sum() == 21
    else:  # every code of every real frame counts once; padding never
        assert out.count.tolist() == [21] * K
    assert out.stop_count == 2
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > 0.8 * len(grads)
    # an untrained model is near uniform: ~10 bits per code
    assert (out.bits_per_code() > 8).all()


def test_eval_counts_every_codebook(model):
    out = model(make_batch())
    assert out.count.tolist() == [21] * K


def test_padding_does_not_change_the_loss(model):
    """An utterance scores the same alone and padded inside a batch."""
    batch = make_batch()
    alone = make_batch(lengths=((7, 12),))
    both = model(batch)
    single = model(alone)
    # per-utterance check through logits: first item's logits equal with and without batch mate
    full = model.logits(batch)[0, :13]
    solo = model.logits(alone)[0, :13]
    finite = torch.isfinite(full)
    assert torch.allclose(full[finite], solo[finite], atol=1e-4)
    assert both.count.sum() > single.count.sum()


def test_overfits_one_batch(model):
    torch.manual_seed(0)
    model.train()
    batch = make_batch(lengths=((6, 8), (4, 6)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    model.eval()
    final = model(batch)
    assert final.loss.item() < 0.1 * first
    assert final.bits_per_code().mean() < 0.5, final.bits_per_code()


def test_generate_returns_codes_in_range_and_respects_the_guard(model):
    phonemes = [torch.randint(4, 78, (6,)), torch.randint(4, 78, (9,))]
    out = model.generate(phonemes, max_frames=5, sampling=Sampling(seed=1))
    assert len(out) == 2
    for g in out:
        assert g.codes.shape[0] == K and 0 <= g.codes.shape[1] <= 5
        assert g.codes.numel() == 0 or (0 <= g.codes.min() and g.codes.max() < V)
        assert g.stopped or g.codes.shape[1] == 5  # stopped by itself, or the guard fired
    again = model.generate(phonemes, max_frames=5, sampling=Sampling(seed=1))
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(out, again, strict=True))


def test_trained_model_stops_by_itself(model):
    torch.manual_seed(0)
    model.train()
    batch = make_batch(lengths=((6, 4),))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    [g] = model.generate([batch.phonemes[0]], max_frames=20, sampling=Sampling(temperature=0))
    assert g.stopped and g.codes.shape == (K, 4)
    assert torch.equal(g.codes, batch.codes[0])  # greedy decoding reproduces what it memorised


def test_cached_decoding_matches_uncached_logits(model):
    batch = make_batch()
    reference = model.logits(batch)  # [B, F + 1, K, V + 1]
    codes, lengths = batch.codes, batch.code_lengths
    seen = []

    def forced(logits, k, history):
        frame = history.shape[-1]
        seen.append((frame, k, logits))
        token = codes[:, k, min(frame, codes.shape[-1] - 1)].clamp_min(0).clone()
        if k == 0:
            token[lengths == frame] = V  # stop exactly where the data stops
        return token

    model.decode(
        list(batch.phonemes[i, : batch.phoneme_lengths[i]] for i in range(2)),
        max_frames=codes.shape[-1] + 1,
        choose=forced,
    )
    checked = 0
    for frame, k, logits in seen:
        for b in range(2):
            if frame < lengths[b] or (frame == lengths[b] and k == 0):
                assert torch.allclose(logits[b], reference[b, frame, k], atol=1e-4), (frame, k, b)
                checked += 1
    assert checked >= (12 + 1) + (9 + 1)  # every real step of both items, at least codebook 0


def test_save_load_gives_identical_outputs(model, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    other = build_backend(model.cfg).eval()
    other.load_state_dict(torch.load(path, weights_only=True))
    batch = make_batch()
    assert torch.equal(model(batch).nll, other(batch).nll)


def test_bits_per_code_is_nll_over_count_in_bits(model):
    out = model(make_batch())
    assert torch.allclose(out.bits_per_code(), out.nll / out.count / math.log(2))
