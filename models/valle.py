"""`valle`: the VALL-E baseline. An AR decoder over [phonemes; codebook-1 codes] (with a stop
class), and a NAR transformer that, given phonemes and codebooks < k, predicts codebook k for all
frames at once, told which stage it is by a codebook (stage) embedding.

Training: the AR part on codebook 1 every step; the NAR part on one random stage k in 2..K per
utterance (as in VALL-E). Evaluation (`model.eval()`): every stage, so bits-per-code for
codebooks 2..K is the NAR's teacher-forced NLL given the true lower codebooks.
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
    left_align,
    pad_phonemes,
)
from models.code_stream import CodeStream
from models.positions import sequence_positions
from phonelm.batching import Batch


class Valle(Backend):
    pattern_name = "stages"
    depth_settings = ("depth", "nar_depth")  # AR, NAR

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        k, v, d = cfg.n_codebooks, cfg.codebook_size, cfg.dim
        self.ar = CodeStream(cfg, n_streams=1, depth=cfg.depth)
        self.nar_phoneme_emb = nn.Embedding(cfg.n_phonemes, d)
        self.nar_code_emb = nn.Embedding(k * v, d)  # codebook-specific
        self.stage_emb = nn.Embedding(k, d)
        self.nar_depth = cfg.nar_depth or cfg.depth
        self.nar = attention_stack(cfg, depth=self.nar_depth, causal=False)
        self.nar_heads = CodebookHeads(d, k - 1, v, stop=False)  # head s - 1 for stage s

    def _nar_logits(
        self, ids, ph_mask, codes, lengths, stage: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codebook `stage[b]` for every frame from codebooks < stage[b] -> logits [B, F, V];
        `keep` [B, K, F]: the frame-dropout draw (the AR's, so a dropped frame is dropped in
        both)."""
        b, k, f = codes.shape
        offset = codebook_offsets(k, self.cfg.codebook_size, codes.device)[None, :, None]
        emb = self.nar_code_emb(codes.clamp_min(0) + offset)  # [B, K, F, D]
        emb = drop_codes(emb, self.cfg.code_dropout, self.training, keep)
        below = torch.arange(k, device=codes.device)[None] < stage[:, None]  # [B, K]
        frames = (emb * below[:, :, None, None]).sum(1) + self.stage_emb(stage)[:, None]
        code_mask = torch.arange(f, device=codes.device)[None] < lengths[:, None]
        x = torch.cat([self.nar_phoneme_emb(ids), frames], dim=1)
        pos = sequence_positions(self.cfg, ph_mask, f)
        h = self.nar(x, mask=torch.cat([ph_mask, code_mask], dim=1), pos=pos)[:, ids.shape[1] :]
        return self.nar_heads.per_item(h, stage - 1)

    def forward(self, batch: Batch) -> ForwardOutput:
        cfg, codes, lengths = self.cfg, batch.codes, batch.code_lengths
        ids, ph_mask = left_align(batch.phonemes, batch.phoneme_lengths)
        keep = frame_keep(codes, cfg, self.training)  # [B, K, F] or None
        ar_keep = keep[:, :1] if keep is not None else None
        ar_logits = self.ar.logits(ids, ph_mask, codes[:, :1], lengths, ar_keep)  # [B,F+1,1,V+1]
        prompt = batch.prompt_lengths
        ar_targets = self.ar.targets(codes[:, :1], lengths, prompt)
        out = frame_loss(ar_logits, ar_targets, cfg.codebook_size)
        nll = torch.zeros(cfg.n_codebooks, device=codes.device)
        count = torch.zeros_like(nll, dtype=torch.long)
        nll[0], count[0] = out.nll[0], out.count[0]
        loss_sum, loss_count = out.loss * (out.count.sum() + out.stop_count), out.count.sum()
        loss_count = loss_count + out.stop_count
        b = codes.shape[0]
        if cfg.n_codebooks > 1:
            if self.training:
                stages = [torch.randint(1, cfg.n_codebooks, (b,), device=codes.device)]
            else:
                stages = [
                    torch.full((b,), s, device=codes.device) for s in range(1, cfg.n_codebooks)
                ]
            for stage in stages:
                logits = self._nar_logits(ids, ph_mask, codes, lengths, stage, keep)
                target = codes[torch.arange(b), stage]  # [B, F], -1 padded
                if prompt is not None:  # no loss on the acoustic prompt
                    in_prompt = torch.arange(target.shape[1], device=codes.device)[None]
                    target = target.masked_fill(in_prompt < prompt[:, None], -1)
                step = nn.functional.cross_entropy(
                    rearrange(logits, "b f v -> b v f").float(),
                    target,
                    ignore_index=-1,
                    reduction="none",
                )
                real = target >= 0
                nll.index_add_(0, stage, (step * real).sum(1).detach())
                count.index_add_(0, stage, real.sum(1))
                loss_sum, loss_count = loss_sum + (step * real).sum(), loss_count + real.sum()
        return ForwardOutput(
            loss_sum / loss_count.clamp_min(1), nll, count, out.stop_nll, out.stop_count
        )

    def logits(self, batch: Batch) -> torch.Tensor:
        """[B, F + 1, K, V + 1], teacher-forced: AR for k = 0, NAR (true codebooks < k) above."""
        ids, ph_mask = left_align(batch.phonemes, batch.phoneme_lengths)
        codes, lengths = batch.codes, batch.code_lengths
        keep = frame_keep(codes, self.cfg, self.training)  # [B, K, F] or None
        ar_keep = keep[:, :1] if keep is not None else None
        ar = self.ar.logits(ids, ph_mask, codes[:, :1], lengths, ar_keep)
        b, f = codes.shape[0], codes.shape[-1]
        out = torch.full(
            (b, f + 1, self.cfg.n_codebooks, self.cfg.codebook_size + 1),
            float("-inf"),
            device=codes.device,
        )
        out[:, :, :1] = ar
        for s in range(1, self.cfg.n_codebooks):
            stage = torch.full((b,), s, device=codes.device)
            out[:, :f, s, :-1] = self._nar_logits(ids, ph_mask, codes, lengths, stage, keep)
        return out

    def forward_flops(self, batch: Batch) -> int:
        cfg = self.cfg
        (b, p), f = batch.phonemes.shape, batch.codes.shape[-1]
        stages = 1 if self.training else cfg.n_codebooks - 1  # as in `forward`
        nar = flops.stack(cfg, batch=b, length=p + f, depth=self.nar_depth)
        nar += flops.linear(b * f, cfg.dim, cfg.codebook_size)
        return self.ar.logits_flops(b, p, f) + (stages * nar if cfg.n_codebooks > 1 else 0)

    def stepper(self, phonemes, *, limits, cached):
        return _Stepper(self, phonemes, limits, cached)


class _Stepper:
    """Codebook 1 frame by frame through the AR (`CodeStream`'s stepper); then each higher
    codebook for every frame at once through the NAR, from the codebooks below it."""

    def __init__(self, model: Valle, phonemes, limits: torch.Tensor, cached: bool):
        self.model = model
        self.ar = model.ar.stepper(phonemes, limits=limits, cached=cached)
        self.ids, self.ph_mask = pad_phonemes(phonemes)

    def logits(self, k: int, frames: slice, out) -> torch.Tensor:
        if k == 0:
            return self.ar.logits(0, frames, out)
        n = frames.stop  # the NAR sees every frame up to the longest item's end
        stage = torch.full((out.codes.shape[0],), k, device=out.codes.device)
        codes = out.codes[:, :, :n]
        logits = self.model._nar_logits(self.ids, self.ph_mask, codes, out.lengths, stage)
        return logits[:, frames]

    def feed_step(self, step: int, coords: list[int], out) -> None:
        frame, k = divmod(coords[0], self.model.cfg.n_codebooks)
        if k == 0:  # an AR step
            self.ar.feed(0, out.codes[:, 0, frame])
