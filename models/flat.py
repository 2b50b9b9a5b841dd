"""`flat`: one causal transformer over phonemes then the frame-major flattened codes
(f0k0, f0k1, ..., f0k{K-1}, f1k0, ...), with codebook-specific embeddings and output heads."""

import torch

from models.base import Backend, ForwardOutput, ModelConfig
from models.blocks import frame_loss, left_align
from models.code_stream import CodeStream
from phonelm.batching import Batch


class Flat(Backend):
    pattern_name = "flat"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.stream = CodeStream(cfg, n_streams=cfg.n_codebooks, depth=cfg.depth)

    def logits(self, batch: Batch) -> torch.Tensor:
        """[B, F + 1, K, V + 1], teacher-forced."""
        ids, mask = left_align(batch.phonemes, batch.phoneme_lengths)
        return self.stream.logits(ids, mask, batch.codes, batch.code_lengths)

    def forward(self, batch: Batch) -> ForwardOutput:
        targets = self.stream.targets(batch.codes, batch.code_lengths, batch.prompt_lengths)
        return frame_loss(self.logits(batch), targets, self.cfg.codebook_size)

    def forward_flops(self, batch: Batch) -> int:
        (b, p), f = batch.phonemes.shape, batch.codes.shape[-1]
        return self.stream.logits_flops(b, p, f)

    def stepper(self, phonemes, *, limits, cached):
        return self.stream.stepper(phonemes, limits=limits, cached=cached)
