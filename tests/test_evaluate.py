import math

import pytest
import torch

from experiments.held_out import text_reliance
from experiments.train import evaluate
from models.base import Backend, ForwardOutput, ModelConfig
from models.registry import build_backend
from phonelm.batching import collate
from phonelm.dataset import Item, OtherText
from tests.test_backends import memorise, tiny


class KnownNll(Backend):
    """A backend that puts probability 1/4 on every code of codebook 1 and 1/16 on codebook 2,
    and 1/2 on every stop decision: 2, 4 and 1 bits."""

    pattern_name = "parallel"

    def forward(self, batch):
        count = (batch.codes >= 0).sum(dim=(0, 2))  # [K]
        nll = count * torch.tensor([math.log(4), math.log(16)])
        stops = torch.tensor(batch.codes.shape[0])
        return ForwardOutput(torch.tensor(0.0), nll, count, stops * math.log(2), stops)

    def stepper(self, phonemes, *, limits, cached):
        raise NotImplementedError

    def logits(self, batch):
        raise NotImplementedError

    def forward_flops(self, batch):
        raise NotImplementedError


def test_bits_per_code_from_a_backend_with_known_nll():
    items = [
        Item(f"u{i}", torch.arange(4, 9), torch.zeros(2, f, dtype=torch.long))
        for i, f in enumerate([3, 7, 5])
    ]
    loader = [collate(items[:2]), collate(items[2:])]
    out = evaluate(KnownNll(ModelConfig(n_codebooks=2)), loader, "cpu")
    assert out["bits_per_code_by_codebook"] == pytest.approx([2.0, 4.0])
    assert out["bits_per_code"] == pytest.approx(3.0)  # equal counts in both codebooks
    assert out["stop_bits"] == pytest.approx(1.0)
    assert out["codes"] == 2 * 15
    # loss: all nats over all targets (codes and stops)
    total = 15 * math.log(4) + 15 * math.log(16) + 3 * math.log(2)
    assert out["loss"] == pytest.approx(total / (30 + 3))


class Split(list):
    """Items in a list, with the one property the OtherText wrapper reads."""

    @property
    def frame_lengths(self) -> list[int]:
        return [item.codes.shape[1] for item in self]


def test_other_text_gives_each_utterance_the_next_ones_phonemes():
    gen = torch.Generator().manual_seed(0)
    split = Split(
        Item(f"u{i}", torch.randint(4, 78, (5 + i,), generator=gen), torch.full((2, 3 + i), i))
        for i in range(3)
    )
    other = OtherText(split)
    assert len(other) == 3 and other.frame_lengths == split.frame_lengths
    for i in range(3):
        assert other[i].id == split[i].id and torch.equal(other[i].codes, split[i].codes)
        assert torch.equal(other[i].phonemes, split[(i + 1) % 3].phonemes)  # the last: the first
    with pytest.raises(ValueError, match="needs >= 2 utterances, got 1"):
        OtherText(Split(split[:1]))


def test_a_model_that_reads_the_text_loses_bits_with_another_ones():
    """Two utterances whose first frames differ: after memorising both, the first frame can
    only come from the text, so another utterance's text costs bits; the text-reliance figure
    of experiments/run.py is that loss, per codebook."""
    torch.manual_seed(0)
    model = build_backend(tiny("megabyte", n_codebooks=2))
    gen = torch.Generator().manual_seed(1)  # phonemes; the codes from the seed above
    split = Split(
        Item(f"u{i}", torch.randint(4, 78, (6,), generator=gen), torch.randint(0, 1024, (2, 5)))
        for i in range(2)
    )
    batch = collate(list(split))
    memorise(model, batch)
    own = evaluate(model, [batch], "cpu")
    swapped = evaluate(model, [collate([OtherText(split)[i] for i in range(2)])], "cpu")
    reliance = text_reliance(own, swapped)
    assert own["bits_per_code"] < 0.5
    assert reliance["text_reliance_bits_by_codebook"][0] > 1.0
    assert reliance["text_reliance_bits"] == pytest.approx(
        swapped["bits_per_code"] - own["bits_per_code"]
    )
