"""Batches for every backend: one collate (padding + lengths) and a length-bucketed sampler."""

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from phonelm.dataset import Item
from phonelm.text import PAD

CODE_PAD = -1  # codes are in [0, codebook_size): padding can never be taken for a real code


@dataclass
class Batch:
    phonemes: torch.Tensor  # [B, P], PAD beyond each length
    phoneme_lengths: torch.Tensor  # [B]
    codes: torch.Tensor  # [B, K, F], CODE_PAD beyond each length
    code_lengths: torch.Tensor  # [B]
    ids: list[str]
    # [B] frames of each utterance that are an acoustic prompt (no loss on them); None: none
    prompt_lengths: torch.Tensor | None = None

    def to(self, device) -> "Batch":
        return Batch(
            self.phonemes.to(device),
            self.phoneme_lengths.to(device),
            self.codes.to(device),
            self.code_lengths.to(device),
            self.ids,
            None if self.prompt_lengths is None else self.prompt_lengths.to(device),
        )

    def with_prompts(self, generator: torch.Generator, low: float = 0.1, high: float = 0.5):
        """The same batch with each utterance's leading part as its acoustic prompt (VALL-E's
        continuation): a share of its frames drawn uniformly from [low, high)."""
        share = low + (high - low) * torch.rand(len(self.ids), generator=generator)
        prompt = (self.code_lengths.cpu() * share).long().to(self.code_lengths.device)
        return replace(self, prompt_lengths=prompt)

    @property
    def code_mask(self) -> torch.Tensor:
        """[B, F] True on real frames."""
        return (
            torch.arange(self.codes.shape[-1], device=self.codes.device)
            < self.code_lengths[:, None]
        )

    @property
    def padding_fraction(self) -> float:
        return 1.0 - float(self.code_lengths.sum()) / max(
            1, self.code_lengths.numel() * self.codes.shape[-1]
        )


def collate(items: list[Item]) -> Batch:
    """One collate for every backend: pad phonemes with PAD and codes with CODE_PAD."""
    p_len = torch.tensor([len(it.phonemes) for it in items])
    c_len = torch.tensor([it.codes.shape[1] for it in items])
    k = items[0].codes.shape[0]
    phonemes = torch.full((len(items), int(p_len.max())), PAD, dtype=torch.long)
    codes = torch.full((len(items), k, int(c_len.max())), CODE_PAD, dtype=torch.long)
    for b, it in enumerate(items):
        phonemes[b, : len(it.phonemes)] = it.phonemes
        codes[b, :, : it.codes.shape[1]] = it.codes
    return Batch(phonemes, p_len, codes, c_len, [it.id for it in items])


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of `batch_size` indices of similar length, so padding stays small.

    Each epoch: shuffle, cut into pools of `pool_batches` batches, sort each pool by length, cut
    it into batches, shuffle the batches. Distributed like DistributedSampler: every rank gets
    the same number of batches (the list is padded by repeating batches), rank r takes batches
    r, r + world, ...; call `set_epoch(epoch)` each epoch. With even=False (evaluation) nothing
    is repeated and ranks may get one batch more or less. num_replicas/rank default to the
    torch.distributed world, or 1/0 when it is not initialised.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        pool_batches: int = 50,
        even: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        distributed = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas or (dist.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} outside [0, {self.num_replicas})")
        self.lengths, self.batch_size, self.shuffle = list(lengths), batch_size, shuffle
        self.seed, self.drop_last, self.pool_batches, self.epoch = seed, drop_last, pool_batches, 0
        self.even = even

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        r = random.Random(self.seed + self.epoch)
        if self.shuffle:
            r.shuffle(order)
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: self.lengths[i])
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            r.shuffle(batches)
        if not self.even:
            return batches
        total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
        return batches + batches[: total - len(batches)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._all_batches()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(self._all_batches()[self.rank :: self.num_replicas])
