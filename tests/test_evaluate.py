import math

import pytest
import torch

from experiments.train import evaluate
from models.base import Backend, ForwardOutput, ModelConfig
from phonelm.batching import collate
from phonelm.dataset import Item


class KnownNll(Backend):
    """A backend that puts probability 1/4 on every code of codebook 1 and 1/16 on codebook 2,
    and 1/2 on every stop decision: 2, 4 and 1 bits."""

    pattern_name = "parallel"

    def forward(self, batch):
        count = (batch.codes >= 0).sum(dim=(0, 2))  # [K]
        nll = count * torch.tensor([math.log(4), math.log(16)])
        stops = torch.tensor(batch.codes.shape[0])
        return ForwardOutput(torch.tensor(0.0), nll, count, stops * math.log(2), stops)

    def decode(self, phonemes, *, limits, choose, cached=True):
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
