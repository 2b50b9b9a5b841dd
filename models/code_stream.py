"""A causal LM over [phonemes; BOS; codes of S codebooks flattened frame-major].

`flat` is this over all K codebooks (f0k0, f0k1, ..., f1k0, ...); VALL-E's AR is this over
codebook 1 alone. Code embeddings and output heads are codebook-specific; codebook 1's head has
the extra stop class, predicted where the next frame would start.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models import flops
from models.base import ModelConfig
from models.blocks import (
    CodebookHeads,
    attention_stack,
    codebook_offsets,
    drop_codes,
    frame_keep,
    frame_targets,
    pad_phonemes,
    phoneme_prefix,
    run_stack,
)
from models.kv_cache import stack_decoder, window
from models.patterns import make_pattern
from models.positions import sequence_positions


class CodeStream(nn.Module):
    def __init__(self, cfg: ModelConfig, *, n_streams: int, depth: int):
        super().__init__()
        self.cfg, self.depth = cfg, depth
        self.pattern = make_pattern("flat", n_streams)
        self.k, self.v = n_streams, cfg.codebook_size
        self.phoneme_emb = nn.Embedding(cfg.n_phonemes, cfg.dim)
        self.code_emb = nn.Embedding(n_streams * cfg.codebook_size, cfg.dim)
        self.bos = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.stack = attention_stack(cfg, depth=depth, text_prefix=True)
        self.heads = CodebookHeads(cfg.dim, n_streams, cfg.codebook_size)

    def _embed_codes(self, codes: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """codes [B, S, F] (+ the frame-dropout draw `keep` [B, S, F]) -> [B, F * S, D],
        codebook-specific, in the flat (frame-major) order."""
        offset = codebook_offsets(self.k, self.v, codes.device)[None, :, None]
        tokens = self.pattern.build(codes.clamp_min(0) + offset, empty=0)  # [B, 1, F * S]
        if keep is not None:
            keep = self.pattern.build(keep, empty=True)[:, 0]
        return drop_codes(self.code_emb(tokens[:, 0]), self.cfg.code_dropout, self.training, keep)

    def _positions(self, ph_mask: torch.Tensor, n_audio: int) -> torch.Tensor | None:
        """[B, P + n_audio] rotary positions (start token then codes), or None."""
        return sequence_positions(self.cfg, ph_mask, n_audio, per_frame=self.k)

    def logits(
        self,
        phonemes: torch.Tensor,
        ph_mask: torch.Tensor,
        codes: torch.Tensor,
        lengths: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Left-padded phonemes [B, P] + codes [B, S, F] -> logits [B, F + 1, S, V + 1].
        `keep` [B, S, F]: a frame-dropout draw made by the caller (else drawn here)."""
        b, p = phonemes.shape
        f = codes.shape[-1]
        code_mask = torch.arange(f, device=codes.device)[None] < lengths[:, None]  # [B, F]
        prefix, valid = phoneme_prefix(self.phoneme_emb, self.bos, phonemes, ph_mask)
        if keep is None:
            keep = frame_keep(codes, self.cfg, self.training)
        x = torch.cat([prefix, self._embed_codes(codes, keep)], dim=1)
        mask = torch.cat([valid, code_mask.repeat_interleave(self.k, dim=1)], dim=1)
        pos = self._positions(ph_mask, 1 + f * self.k)
        h = run_stack(self.stack, x, mask=mask, pos=pos, prefix=p)[:, p:]  # [B, 1 + F*S, D]: j -> j
        step, _ = self.pattern.place(f + 1)  # [F + 1, S]: the position that predicts each code
        h = F.pad(h, (0, 0, 0, self.k - 1))  # [B, (F + 1) * S, D]
        return self.heads(h[:, step.to(h.device)])  # [B, F + 1, S, D] -> logits

    def logits_flops(self, batch: int, phonemes: int, frames: int) -> int:
        """FLOPs of `logits` for padded shapes [batch, phonemes] and [batch, S, frames]."""
        length = phonemes + 1 + frames * self.k
        heads = flops.linear(batch * (frames + 1) * self.k, self.cfg.dim, self.v + 1)
        return flops.stack(self.cfg, batch=batch, length=length, depth=self.depth) + heads

    def targets(self, codes: torch.Tensor, lengths: torch.Tensor, prompt_lengths=None):
        return frame_targets(codes, lengths, self.v, prompt_lengths)

    def stepper(self, phonemes: list[torch.Tensor], *, limits: torch.Tensor, cached: bool = True):
        """The incremental view `models/decoding.py` decodes through (KV-cached)."""
        return _Stepper(self, phonemes, int(limits.max()), cached)


class _Stepper:
    """One code a step: the head of the code's codebook on the last hidden state; a chosen code
    is embedded (codebook-specific) and fed."""

    def __init__(self, stream: CodeStream, phonemes, n_frames: int, cached: bool):
        ids, ph_mask = pad_phonemes(phonemes)
        (b, p), k = ids.shape, stream.k
        self.stream = stream
        self.pos = stream._positions(ph_mask, 1 + n_frames * k)  # [B, P + 1 + F * S] or None
        capacity = p + 1 + n_frames * k
        self.decoder = stack_decoder(stream.stack, batch=b, capacity=capacity, cached=cached)
        x, valid = phoneme_prefix(stream.phoneme_emb, stream.bos, ids, ph_mask)
        self.last = self.decoder.step(x, pos=window(self.pos, 0, p + 1), valid=valid, prefix=p)
        self.last = self.last[:, -1]

    def logits(self, k: int, frames: slice, out) -> torch.Tensor:
        return self.stream.heads.one(self.last, k)[:, None]

    def feed(self, k: int, codes: torch.Tensor) -> None:
        """codes [B] of codebook k, the next position of the stream."""
        at = self.decoder.length
        emb = self.stream.code_emb(codes + k * self.stream.v)[:, None]
        self.last = self.decoder.step(emb, pos=window(self.pos, at, at + 1))[:, -1]

    def feed_step(self, step: int, coords: list[int], out) -> None:
        frame, k = divmod(coords[0], self.stream.k)
        self.feed(k, out.codes[:, k, frame])
