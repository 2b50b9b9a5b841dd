"""The backend interface: phonemes -> codes [K, F], trained only on audio-code targets.

Every backend returns, from `forward(batch)`, the summed NLL (nats) and the target count per
codebook, plus the stop decision's NLL, so bits-per-code is computed identically for all of them.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from phonelm.batching import Batch
from phonelm.sampling import Sampling
from phonelm.text import VOCAB


@dataclass
class ModelConfig:
    name: str = "megabyte"
    dim: int = 256
    depth: int = 6
    heads: int = 4
    dim_head: int = 64
    ff_mult: int = 4
    dropout: float = 0.0
    local_dim: int = 128  # megabyte: local transformer width
    local_depth: int = 2  # megabyte: local transformer depth
    nar_depth: int = 0  # valle: NAR depth (0: same as `depth`)
    n_codebooks: int = 4  # K, set from the codec
    codebook_size: int = 1024
    n_phonemes: int = len(VOCAB)


@dataclass
class ForwardOutput:
    loss: torch.Tensor  # scalar: mean NLL over code targets and stop decisions
    nll: torch.Tensor  # [K] summed NLL (nats) of code targets per codebook
    count: torch.Tensor  # [K] code targets per codebook
    stop_nll: torch.Tensor  # scalar: summed NLL of the stop decisions
    stop_count: torch.Tensor  # scalar

    def bits_per_code(self) -> torch.Tensor:
        """[K] bits per code, per codebook."""
        return self.nll / self.count.clamp_min(1) / math.log(2)


@dataclass
class Generated:
    codes: torch.Tensor  # [K, F] in [0, codebook_size)
    stopped: bool  # False: the max-length guard ended it


class Backend(nn.Module, ABC):
    """A phonemes -> codes model. Subclasses: keyword-only constructor from a ModelConfig."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    @abstractmethod
    def forward(self, batch: Batch) -> ForwardOutput: ...

    @abstractmethod
    def generate(
        self, phonemes: list[torch.Tensor], *, max_frames: int, sampling: Sampling
    ) -> list[Generated]:
        """Codes for each phoneme sequence ([P] ids), batched; deterministic under sampling.seed."""

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
