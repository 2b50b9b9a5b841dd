"""Shared recipe levers (issue 9): aligned rotary positions and input-code dropout."""

from dataclasses import replace

import pytest
import torch

from models.base import ModelConfig
from models.positions import phoneme_positions, sequence_positions
from models.registry import BACKENDS, build_backend
from tests.test_backends import make_batch, tiny


def test_phonemes_sit_at_half_strides_from_their_first_real_phoneme():
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    pos = phoneme_positions(mask, 4.0)
    assert pos[0, 2:].tolist() == [2.0, 6.0] and pos[1].tolist() == [2.0, 6.0, 10.0, 14.0]
    assert (pos[0, :2] < 0).all()  # left padding: masked, never at a real position


def test_audio_tokens_sit_at_frames():
    mask = torch.ones(1, 2, dtype=torch.bool)
    cfg = ModelConfig(positions="aligned", phoneme_stride=3.0)
    pos = sequence_positions(cfg, mask, 5, per_frame=2)
    assert pos.tolist() == [[1.5, 4.5, 0.0, 0.5, 1.0, 1.5, 2.0]]
    assert sequence_positions(replace(cfg, positions="sequence"), mask, 5) is None


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_aligned_positions_change_the_model_and_follow_the_stride(name):
    """The same weights give other logits under aligned positions, and other ones again under
    another stride: the positions reach every stack that sees phonemes."""
    torch.manual_seed(0)
    plain = build_backend(tiny(name)).eval()
    batch = make_batch()
    outs = []
    for cfg in (
        plain.cfg,
        replace(plain.cfg, positions="aligned", phoneme_stride=2.0),
        replace(plain.cfg, positions="aligned", phoneme_stride=5.0),
    ):
        model = build_backend(cfg).eval()
        model.load_state_dict(plain.state_dict())
        with torch.no_grad():
            outs.append(model(batch).nll)
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    if name == "valle":  # the NAR stages (codebooks 2..K) take the positions too
        assert not torch.allclose(outs[0][1:], outs[1][1:])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"positions": "diagonal"}, "model.positions='diagonal': expected 'sequence' or 'aligned'"),
        ({"positions": "aligned"}, "needs model.phoneme_stride > 0"),
        ({"prefix": "full"}, "model.prefix='full': expected 'causal' or 'bidirectional'"),
    ],
)
def test_bad_position_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        build_backend(tiny("flat", **changes))


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_bidirectional_prefix_reaches_every_stack_that_reads_phonemes_causally(name):
    """The same weights give other codebook-1 NLLs with a bidirectional phoneme prefix; VALL-E's
    NAR (codebooks 2..K) already attends both ways and is unchanged."""
    torch.manual_seed(0)
    causal = build_backend(tiny(name)).eval()
    bidirectional = build_backend(replace(causal.cfg, prefix="bidirectional")).eval()
    bidirectional.load_state_dict(causal.state_dict())
    batch = make_batch()
    with torch.no_grad():
        a, b = causal(batch).nll, bidirectional(batch).nll
    assert not torch.allclose(a[0], b[0])
    if name == "valle":
        torch.testing.assert_close(a[1:], b[1:])
    else:
        assert not torch.allclose(a[1:], b[1:])


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_code_dropout_acts_in_training_only_and_reaches_every_code_input(name):
    torch.manual_seed(0)
    plain = build_backend(tiny(name))
    dropped = build_backend(replace(plain.cfg, code_dropout=0.5))
    dropped.load_state_dict(plain.state_dict())
    batch = make_batch()

    def nll(model, train: bool, seed: int = 0):
        model.train(train)
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(batch).nll

    assert torch.equal(nll(plain, False), nll(dropped, False))  # eval: no dropout
    assert torch.equal(nll(plain, True), nll(replace_dropout(plain, 0.0), True))
    a, b = nll(dropped, True, 0), nll(dropped, True, 1)
    # valle trains one random NAR stage per utterance: compare codebook 1 and the NAR total
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1:].sum(), b[1:].sum())
    assert not torch.allclose(a, nll(plain, True, 0))


def replace_dropout(model, p: float):
    """A copy of `model` with code_dropout p and the same weights."""
    copy = build_backend(replace(model.cfg, code_dropout=p))
    copy.load_state_dict(model.state_dict())
    return copy


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_frame_dropout_removes_every_code_of_a_dropped_frame_wherever_it_enters(name, monkeypatch):
    """With frame-level code dropout, a dropped frame's K codes are gone from every input that
    carries them: changing them all moves no training-mode logit. Per-code dropout with the same
    probability keeps some of them."""
    torch.manual_seed(0)
    model = build_backend(tiny(name, code_dropout=0.5, code_dropout_unit="frame")).train()
    batch = make_batch()
    dropped = 3

    def keep_all_but_one(codes, cfg, training):
        keep = torch.ones_like(codes, dtype=torch.bool)
        keep[:, :, dropped] = False
        return keep

    for module in ("megabyte", "code_stream", "delay", "valle"):
        monkeypatch.setattr(f"models.{module}.frame_keep", keep_all_but_one)
    changed = replace(batch, codes=batch.codes.clone())
    changed.codes[:, :, dropped] = (changed.codes[:, :, dropped] + 7) % 64
    with torch.no_grad():
        a, b = model.logits(batch), model.logits(changed)
    finite = torch.isfinite(a)  # valle's codebook-1 slots of the NAR rows are -inf
    torch.testing.assert_close(a[finite], b[finite])
    monkeypatch.undo()
    per_code = build_backend(replace(model.cfg, code_dropout_unit="code")).train()
    per_code.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    with torch.no_grad():
        c = per_code.logits(batch)
    torch.manual_seed(0)
    with torch.no_grad():
        d = per_code.logits(changed)
    assert not torch.allclose(c[finite], d[finite])


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_frame_dropout_drops_whole_frames_at_the_set_rate(name):
    from models.blocks import frame_keep

    cfg = tiny(name, code_dropout=0.3, code_dropout_unit="frame")
    torch.manual_seed(0)
    keep = frame_keep(torch.zeros(64, 4, 200, dtype=torch.long), cfg, training=True)
    assert (keep == keep[:, :1]).all()  # all K codes of a frame together
    assert abs((~keep[:, 0]).float().mean().item() - 0.3) < 0.02
    assert frame_keep(torch.zeros(2, 4, 5), cfg, training=False) is None
    assert frame_keep(torch.zeros(2, 4, 5), replace(cfg, code_dropout_unit="code"), True) is None
