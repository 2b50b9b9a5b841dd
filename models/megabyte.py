"""`megabyte`: a global causal transformer over frames and a local causal transformer over the
K codes inside each frame; every codebook autoregressive.

Patches line up exactly with frames: a frame's patch embedding is the concatenation of its K
codebook-specific code embeddings, projected to the global width. Phonemes enter as a prefix to
the global model (no cross-attention), the same conditioning as `flat` and VALL-E's AR, so the
comparison isolates how the code grid is ordered. The global output at frame f (computed from
frames < f) is projected to the local width and added to every local input of frame f; the local
model then predicts codes k = 0..K-1 of frame f from that and codes < k, with the stop class on
k = 0.
"""

import torch
from einops import rearrange
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


class MegaByte(Backend):
    pattern_name = "frames"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k, v, d, e = cfg.n_codebooks, cfg.codebook_size, cfg.dim, cfg.local_dim
        self.phoneme_emb = nn.Embedding(cfg.n_phonemes, d)
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.patch_code_emb = nn.Embedding(k * v, e)
        self.patch_proj = nn.Linear(k * e, d)
        self.global_stack = attention_stack(cfg, depth=cfg.depth, text_prefix=True)
        self.to_local = nn.Linear(d, e)
        self.local_code_emb = nn.Embedding(k * v, e)
        self.local_start = nn.Parameter(torch.randn(e) * 0.02)
        self.local_stack = attention_stack(cfg, depth=cfg.local_depth, dim=e)
        self.heads = CodebookHeads(e, k, v)

    def _offset(self, device) -> torch.Tensor:
        return codebook_offsets(self.cfg.n_codebooks, self.cfg.codebook_size, device)

    def _patches(self, codes: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """codes [B, K, F] (+ the frame-dropout draw `keep` [B, K, F]) -> patches [B, F, D]."""
        emb = self.patch_code_emb(codes.clamp_min(0) + self._offset(codes.device)[:, None])
        emb = drop_codes(emb, self.cfg.code_dropout, self.training, keep)  # [B, K, F, E]
        return self.patch_proj(rearrange(emb, "b k f e -> b f (k e)"))

    def logits(self, batch: Batch) -> torch.Tensor:
        """[B, F + 1, K, V + 1], teacher-forced."""
        ids, ph_mask = left_align(batch.phonemes, batch.phoneme_lengths)
        codes, lengths = batch.codes, batch.code_lengths
        b, k, f = codes.shape
        code_mask = torch.arange(f, device=codes.device)[None] < lengths[:, None]
        prefix, valid = phoneme_prefix(self.phoneme_emb, self.bos, ids, ph_mask)
        keep = frame_keep(codes, self.cfg, self.training)  # [B, K, F] or None
        x = torch.cat([prefix, self._patches(codes, keep)], dim=1)
        mask = torch.cat([valid, code_mask], dim=1)
        pos = sequence_positions(self.cfg, ph_mask, f + 1)
        p = ids.shape[1]
        g = run_stack(self.global_stack, x, mask=mask, pos=pos, prefix=p)[:, p:]  # [B, F + 1, D]
        # local inputs of frame f: start, c[f, 0], ..., c[f, K - 2]
        shifted = nn.functional.pad(codes, (0, 1)).clamp_min(0)[:, : k - 1]  # [B, K - 1, F + 1]
        shifted = self.local_code_emb(shifted + self._offset(codes.device)[: k - 1, None])
        if keep is not None:  # the same draw: frame f's codes enter its local model too
            keep = nn.functional.pad(keep, (0, 1), value=True)[:, : k - 1]
        shifted = drop_codes(shifted, self.cfg.code_dropout, self.training, keep)
        start = self.local_start.expand(b, 1, f + 1, -1)
        local = torch.cat([start, shifted], dim=1) + self.to_local(g)[:, None]  # [B, K, F+1, E]
        h = self.local_stack(rearrange(local, "b k f e -> (b f) k e"))
        return self.heads(rearrange(h, "(b f) k e -> b f k e", b=b))

    def forward(self, batch: Batch) -> ForwardOutput:
        targets = frame_targets(
            batch.codes, batch.code_lengths, self.cfg.codebook_size, batch.prompt_lengths
        )
        return frame_loss(self.logits(batch), targets, self.cfg.codebook_size)

    def forward_flops(self, batch: Batch) -> int:
        cfg, e = self.cfg, self.cfg.local_dim
        (b, p), (k, f) = batch.phonemes.shape, batch.codes.shape[1:]
        return (
            flops.linear(b * f, k * e, cfg.dim)  # patch projection
            + flops.stack(cfg, batch=b, length=p + 1 + f, depth=cfg.depth)  # global
            + flops.linear(b * (f + 1), cfg.dim, e)  # global -> local width
            + flops.stack(cfg, batch=b * (f + 1), length=k, depth=cfg.local_depth, dim=e)
            + flops.linear(b * (f + 1) * k, e, cfg.codebook_size + 1)  # heads
        )

    def stepper(self, phonemes, *, limits, cached):
        return _Stepper(self, phonemes, int(limits.max()), cached)


class _Stepper:
    """A step is a frame: the global model's output for it starts the local model, which
    predicts its K codes one by one (each fed before the next); the frame's patch is then fed
    to the global model."""

    def __init__(self, model: MegaByte, phonemes, n_frames: int, cached: bool):
        cfg, self.model = model.cfg, model
        ids, ph_mask = pad_phonemes(phonemes)
        (b, p) = ids.shape
        self.p = p
        self.pos = sequence_positions(cfg, ph_mask, n_frames + 1)  # [B, P + 1 + F] or None
        self.glob = stack_decoder(
            model.global_stack, batch=b, capacity=p + 1 + n_frames, cached=cached
        )
        self.local = stack_decoder(
            model.local_stack, batch=b, capacity=cfg.n_codebooks, cached=cached
        )
        prefix, valid = phoneme_prefix(model.phoneme_emb, model.bos, ids, ph_mask)
        g = self.glob.step(prefix, pos=window(self.pos, 0, p + 1), valid=valid, prefix=p)
        self.base = model.to_local(g[:, -1])  # [B, E]: the local model's offset for the frame

    def logits(self, k: int, frames: slice, out) -> torch.Tensor:
        if k == 0:  # a new frame
            self.local.clear()
            self.token_emb = self.model.local_start.expand(self.base.shape[0], -1)
        h = self.local.step((self.base + self.token_emb)[:, None])
        return self.model.heads.one(h[:, -1], k)[:, None]

    def feed_code(self, k: int, codes: torch.Tensor) -> None:
        self.token_emb = self.model.local_code_emb(codes + k * self.model.cfg.codebook_size)

    def feed_step(self, step: int, coords: list[int], out) -> None:
        at = self.p + 1 + step
        patch = self.model._patches(out.codes[:, :, step : step + 1])
        g = self.glob.step(patch, pos=window(self.pos, at, at + 1))
        self.base = self.model.to_local(g[:, -1])
