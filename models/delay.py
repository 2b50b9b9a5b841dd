"""`delay`: MusicGen's delay pattern. One causal transformer over [phonemes; BOS; steps], K
parallel heads; codebook k is shifted right by k frames, so step s holds codebook k of frame
s - k and predicts, in parallel, codebook k of frame s + 1 - k for every k.

Codebook k of frame f therefore sees every codebook of frames < f - k... and codebooks < k of
frame f only through the earlier steps that carry them: all K codes of a frame come out in K
steps instead of one (parallel) or K (flat). Where a codebook has no frame at a step (the first
k steps of codebook k, and past the end), the step carries a learned blank for it. The stop
class is on codebook 1, at the step after the last frame; the K - 1 steps that follow fill the
last frames' higher codebooks (the tail the delay owes).
"""

import torch
from torch import nn

from models import flops
from models.base import Backend, ForwardOutput, ModelConfig
from models.blocks import (
    CodebookHeads,
    attention_stack,
    codebook_offsets,
    drop_codes,
    frame_keep,
    frame_loss,
    frame_targets,
    left_align,
    pad_phonemes,
    phoneme_prefix,
    run_stack,
)
from models.kv_cache import stack_decoder, window
from models.positions import sequence_positions
from phonelm.batching import Batch


class Delay(Backend):
    pattern_name = "delay"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k, v, d = cfg.n_codebooks, cfg.codebook_size, cfg.dim
        self.phoneme_emb = nn.Embedding(cfg.n_phonemes, d)
        self.code_emb = nn.Embedding(k * (v + 1), d)  # per codebook: V codes + a blank
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.stack = attention_stack(cfg, depth=cfg.depth, text_prefix=True)
        self.heads = CodebookHeads(d, k, v)

    def _embed_steps(self, steps: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """delayed codes [B, K, S] (blank = V; `keep` [B, K, S]: the frame-dropout draw, delayed
        alike) -> step inputs [B, S, D], summed over codebooks."""
        offset = codebook_offsets(self.cfg.n_codebooks, self.cfg.codebook_size + 1, steps.device)
        emb = self.code_emb(steps + offset[None, :, None])  # [B, K, S, D]
        return drop_codes(emb, self.cfg.code_dropout, self.training, keep).sum(1)

    def logits(self, batch: Batch) -> torch.Tensor:
        """[B, F + 1, K, V + 1], teacher-forced and frame-aligned: [b, f, k] is codebook k of
        frame f (and the stop decision at [b, F_b, 0]), read at step f + k."""
        cfg = self.cfg
        ids, ph_mask = left_align(batch.phonemes, batch.phoneme_lengths)
        codes, lengths = batch.codes, batch.code_lengths
        b, k, f = codes.shape
        blank = cfg.codebook_size
        steps = self.pattern.build(codes.masked_fill(codes < 0, blank), empty=blank)  # [B, K, S]
        prefix, valid = phoneme_prefix(self.phoneme_emb, self.bos, ids, ph_mask)
        keep = frame_keep(codes, cfg, self.training)  # [B, K, F] or None
        if keep is not None:
            keep = self.pattern.build(keep, empty=True)  # [B, K, S], like the codes
        x = torch.cat([prefix, self._embed_steps(steps, keep)], dim=1)
        real = torch.arange(f + k, device=codes.device)[None] < (lengths + k)[:, None]
        pos = sequence_positions(cfg, ph_mask, f + k)
        mask = torch.cat([valid, real[:, 1:]], dim=1)
        h = run_stack(self.stack, x, mask=mask, pos=pos, prefix=ids.shape[1])[:, ids.shape[1] :]
        step, _ = self.pattern.place(f + 1)  # [F + 1, K]: the step each code is read at
        return self.heads(h[:, step.to(h.device)])  # [B, F + 1, K, D] -> logits

    def forward(self, batch: Batch) -> ForwardOutput:
        targets = frame_targets(
            batch.codes, batch.code_lengths, self.cfg.codebook_size, batch.prompt_lengths
        )
        return frame_loss(self.logits(batch), targets, self.cfg.codebook_size)

    def forward_flops(self, batch: Batch) -> int:
        cfg = self.cfg
        (b, p), (k, f) = batch.phonemes.shape, batch.codes.shape[1:]
        return flops.stack(cfg, batch=b, length=p + 1 + f + k - 1, depth=cfg.depth) + (
            flops.linear(b * (f + 1) * k, cfg.dim, cfg.codebook_size + 1)
        )

    def stepper(self, phonemes, *, limits, cached):
        return _Stepper(self, phonemes, int(limits.max()), cached)


class _Stepper:
    """Step s predicts codebook k of frame s - k for every k from one hidden state; the step's
    codes (a blank where a codebook has no frame, or past an item's end) are then fed, summed."""

    def __init__(self, model: Delay, phonemes, n_frames: int, cached: bool):
        cfg, self.model = model.cfg, model
        ids, ph_mask = pad_phonemes(phonemes)
        (b, p), k = ids.shape, cfg.n_codebooks
        self.p = p
        self.pos = sequence_positions(cfg, ph_mask, n_frames + k)  # [B, P + 1 + F + K - 1]
        capacity = p + n_frames + k
        self.decoder = stack_decoder(model.stack, batch=b, capacity=capacity, cached=cached)
        x, valid = phoneme_prefix(model.phoneme_emb, model.bos, ids, ph_mask)
        self.h = self.decoder.step(x, pos=window(self.pos, 0, p + 1), valid=valid, prefix=p)

    def logits(self, k: int, frames: slice, out) -> torch.Tensor:
        return self.model.heads.one(self.h[:, -1], k)[:, None]

    def feed_step(self, step: int, coords: list[int], out) -> None:
        k, blank = self.model.cfg.n_codebooks, self.model.cfg.codebook_size
        inputs = torch.full_like(out.codes[:, :, 0], blank)  # [B, K]
        for i, c in enumerate(coords):  # slot i holds codebook i
            if c >= 0:
                inputs[:, i] = torch.where(c // k < out.lengths, out.codes[:, i, c // k], blank)
        at = self.p + 1 + step
        self.h = self.decoder.step(
            self.model._embed_steps(inputs[:, :, None]), pos=window(self.pos, at, at + 1)
        )
