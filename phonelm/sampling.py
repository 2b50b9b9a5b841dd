"""Choosing the next code from logits: temperature, top-k, top-p, VALL-E 2 repetition-aware.

Backends decode with a `choose(logits [B, V], codebook k, history [B, T]) -> tokens [B]`
callable; `Chooser(sampling)` is the sampling one, deterministic under `sampling.seed`.
"""

from dataclasses import dataclass

import torch


@dataclass
class Sampling:
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_aware: bool = False  # VALL-E 2: fall back to the full distribution on loops
    ras_window: int = 10
    ras_ratio: float = 0.1
    nar_greedy: bool = True  # non-autoregressive stages (VALL-E NAR) take the argmax
    seed: int = 0


def truncate(logits: torch.Tensor, *, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask all but the top-k / smallest nucleus of mass top_p (logits [B, V])."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token crossing top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


class Chooser:
    def __init__(self, sampling: Sampling, *, device: torch.device | str = "cpu"):
        self.s = sampling
        self.gen = torch.Generator(device=device).manual_seed(sampling.seed)

    def _draw(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(-1)
        return torch.multinomial(probs, 1, generator=self.gen).squeeze(-1)

    def __call__(self, logits: torch.Tensor, k: int, history: torch.Tensor | None) -> torch.Tensor:
        s = self.s
        if s.temperature == 0:
            return logits.argmax(-1)
        scaled = logits / s.temperature
        token = self._draw(truncate(scaled, top_k=s.top_k, top_p=s.top_p))
        if s.repetition_aware and history is not None and history.shape[-1] > 0:
            window = history[:, -s.ras_window :]
            repeats = (window == token[:, None]).sum(-1)
            looping = repeats >= max(1, round(s.ras_ratio * s.ras_window))
            if looping.any():
                token = torch.where(looping, self._draw(scaled), token)
        return token

    def nar(self, logits: torch.Tensor) -> torch.Tensor:
        """Tokens for all frames at once (logits [..., V])."""
        if self.s.nar_greedy or self.s.temperature == 0:
            return logits.argmax(-1)
        flat = logits.reshape(-1, logits.shape[-1]) / self.s.temperature
        flat = truncate(flat, top_k=self.s.top_k, top_p=self.s.top_p)
        return self._draw(flat).reshape(logits.shape[:-1])
