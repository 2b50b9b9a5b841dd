"""`delay`: MusicGen's delay pattern. One causal transformer over [phonemes; BOS; steps], K
parallel heads; codebook k is shifted right by k frames, so step s holds codebook k of frame
s - k and predicts, in parallel, codebook k of frame s + 1 - k for every k.

Codebook k of frame f therefore sees every codebook of frames < f - k... and codebooks < k of
frame f only through the earlier steps that carry them: all K codes of a frame come out in K
steps instead of one (parallel) or K (flat). Where a codebook has no frame at a step (the first
k steps of codebook k, and past the end), the step carries a learned blank for it. The stop
class is on codebook 0, at the step after the last frame; the K - 1 steps that follow fill the
last frames' higher codebooks (the tail the delay owes).
"""

import torch
from torch import nn

from models import flops
from models.base import Backend, ForwardOutput, ModelConfig
from models.blocks import (
    CodebookHeads,
    attention_stack,
    drop_codes,
    frame_loss,
    frame_targets,
    left_align,
    pad_phonemes,
)
from models.kv_cache import stack_decoder, window
from models.positions import sequence_positions
from phonelm.batching import Batch


def delayed(codes: torch.Tensor, blank: int) -> torch.Tensor:
    """codes [B, K, F] (-1 padded) -> [B, K, F + K - 1]: codebook k shifted right by k, blank
    where codebook k has no frame."""
    b, k, f = codes.shape
    out = torch.full((b, k, f + k - 1), blank, dtype=torch.long, device=codes.device)
    for i in range(k):
        out[:, i, i : i + f] = codes[:, i].masked_fill(codes[:, i] < 0, blank)
    return out


class Delay(Backend):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k, v, d = cfg.n_codebooks, cfg.codebook_size, cfg.dim
        self.phoneme_emb = nn.Embedding(cfg.n_phonemes, d)
        self.code_emb = nn.Embedding(k * (v + 1), d)  # per codebook: V codes + a blank
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.stack = attention_stack(cfg, depth=cfg.depth)
        self.heads = CodebookHeads(d, k, v)

    def _embed_steps(self, steps: torch.Tensor) -> torch.Tensor:
        """delayed codes [B, K, S] (blank = V) -> step inputs [B, S, D], summed over codebooks."""
        offset = torch.arange(self.cfg.n_codebooks, device=steps.device)[None, :, None]
        emb = self.code_emb(steps + offset * (self.cfg.codebook_size + 1))  # [B, K, S, D]
        return drop_codes(emb, self.cfg.code_dropout, self.training).sum(1)

    def logits(self, batch: Batch) -> torch.Tensor:
        """[B, F + 1, K, V + 1], teacher-forced and frame-aligned: [b, f, k] is codebook k of
        frame f (and the stop decision at [b, F_b, 0]), read at step f + k."""
        cfg = self.cfg
        ids, ph_mask = left_align(batch.phonemes, batch.phoneme_lengths)
        codes, lengths = batch.codes, batch.code_lengths
        b, k, f = codes.shape
        steps = delayed(codes, cfg.codebook_size)  # [B, K, F + K - 1]
        x = torch.cat(
            [self.phoneme_emb(ids), self.bos.expand(b, 1, -1), self._embed_steps(steps)], 1
        )
        real = torch.arange(f + k, device=codes.device)[None] < (lengths + k)[:, None]
        pos = sequence_positions(cfg, ph_mask, f + k)
        h = self.stack(x, mask=torch.cat([ph_mask, real], dim=1), pos=pos)[:, ids.shape[1] :]
        aligned = torch.stack([h[:, i : i + f + 1] for i in range(k)], dim=2)  # [B, F+1, K, D]
        return self.heads(aligned)

    def forward(self, batch: Batch) -> ForwardOutput:
        targets = frame_targets(batch.codes, batch.code_lengths, self.cfg.codebook_size)
        return frame_loss(self.logits(batch), targets, self.cfg.codebook_size)

    def forward_flops(self, batch: Batch) -> int:
        cfg = self.cfg
        (b, p), (k, f) = batch.phonemes.shape, batch.codes.shape[1:]
        return flops.stack(cfg, batch=b, length=p + 1 + f + k - 1, depth=cfg.depth) + (
            flops.linear(b * (f + 1) * k, cfg.dim, cfg.codebook_size + 1)
        )

    @torch.no_grad()
    def decode(self, phonemes, *, limits, choose, cached=True):
        cfg = self.cfg
        k, v = cfg.n_codebooks, cfg.codebook_size
        ids, ph_mask = pad_phonemes(phonemes)
        (b, p), n = ids.shape, int(limits.max())
        pos = sequence_positions(cfg, ph_mask, n + k)  # [B, P + 1 + F + K - 1] or None
        decoder = stack_decoder(self.stack, batch=b, capacity=p + n + k, cached=cached)
        x = torch.cat([self.phoneme_emb(ids), self.bos.expand(b, 1, -1)], dim=1)
        valid = torch.cat([ph_mask, ph_mask.new_ones(b, 1)], dim=1)
        h = decoder.step(x, pos=window(pos, 0, p + 1), valid=valid)
        codes = torch.zeros(b, k, int(limits.max()), dtype=torch.long, device=ids.device)
        lengths, stopped = limits.clone(), torch.zeros(b, dtype=torch.bool, device=ids.device)
        decided = limits <= 0  # the length of each item is known (stop, or its guard)
        for s in range(codes.shape[-1] + k - 1):
            step = torch.full((b, k), v, dtype=torch.long, device=ids.device)  # blanks
            for i in range(k):
                f = s - i  # codebook i of frame f is chosen at step s
                if not 0 <= f < codes.shape[-1]:
                    continue
                token = choose(self.heads.one(h[:, -1], i), i, f, codes[:, i, :f])
                if i == 0:
                    now = (token == v) & ~decided
                    lengths[now], stopped = f, stopped | now
                    decided = decided | now | (lengths <= f + 1)
                codes[:, i, f] = token.clamp_max(v - 1)
                step[:, i] = torch.where(f < lengths, codes[:, i, f], v)
            if bool((decided & (lengths + k - 1 <= s + 1)).all()):
                break
            h = decoder.step(
                self._embed_steps(step[:, :, None]), pos=window(pos, p + 1 + s, p + 2 + s)
            )
        return codes[..., : int(lengths.max())], lengths, stopped
