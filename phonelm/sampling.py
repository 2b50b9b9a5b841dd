"""Choosing codes from logits: one decoding policy, applied identically by every backend.

Settings come per codebook group: `coarse` for codebook 1 and `fine` for codebooks 2..K, each
with temperature (0: greedy), top-k and top-p. VALL-E 2's repetition-aware sampling applies to
codebook 1 only. A backend decodes with a `Chooser`: `chooser(logits [B, V], k, frame, history)`
for one autoregressive step, `chooser.all_frames(logits [B, F, V], k, first)` for a
non-autoregressive stage that fills frames first.. of codebook k at once.

Randomness is per utterance, never per batch position: a draw is Gumbel-max with noise that is a
fixed function of (utterance seed, frame, codebook, code value, draw), computed by an integer
hash. An utterance therefore gets the same codes alone or inside any batch, with or without a KV
cache, and the noise does not depend on how many draws other utterances made. The utterance seed
comes from (run seed, utterance id) by `utterance_seed`.
"""

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class GroupSampling:
    temperature: float = 1.0  # 0: greedy (argmax)
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")


@dataclass
class Sampling:
    """The benchmark's decoding policy (the defaults are the one policy every backend uses)."""

    # codebook 1 carries what is said: sampled, as in VALL-E's AR and every AR TTS model
    coarse: GroupSampling = field(
        default_factory=lambda: GroupSampling(temperature=1.0, top_k=50, top_p=0.95)
    )
    # codebooks 2..K refine the acoustics of a frame whose codebook 1 is chosen: greedy
    fine: GroupSampling = field(default_factory=lambda: GroupSampling(temperature=0.0))
    repetition_aware: bool = False  # VALL-E 2, codebook 1 only
    ras_window: int = 10
    ras_ratio: float = 0.1
    seed: int = 0  # the run seed; each utterance's seed is utterance_seed(seed, id)

    def group(self, k: int) -> GroupSampling:
        return self.coarse if k == 0 else self.fine


def utterance_seed(run_seed: int, key: str) -> int:
    """A 31-bit seed from (run seed, utterance id or text), the same on every machine."""
    digest = hashlib.sha256(f"{run_seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), without int64 overflow."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(
    seeds: torch.Tensor, frames: torch.Tensor, k: int, draw: int, size: int
) -> torch.Tensor:
    """Uniforms in (0, 1): seeds [B] x frames [B] or [B, F] -> [B, V] or [B, F, V]."""
    h = _hash32(seeds.long() & _M32)
    h = h.view(-1, *([1] * (frames.dim() - 1))) if frames.dim() > 1 else h
    h = _hash32(h ^ (frames.long() & _M32))
    h = _hash32(h ^ (k * 2 + draw))
    codes = _hash32(torch.arange(size, device=seeds.device, dtype=torch.long) + 0x9E3779B9)
    bits = _hash32(h[..., None] ^ codes) >> 8  # 24 random bits
    return (bits.float() + 0.5) / 2**24


def truncate(logits: torch.Tensor, *, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask all but the top-k, then all but the smallest nucleus of mass top_p (logits [..., V])."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


class Chooser:
    """Chooses codes for a batch of utterances with per-utterance seeds [B]."""

    def __init__(self, sampling: Sampling, seeds: torch.Tensor):
        self.s, self.seeds = sampling, seeds

    def _pick(self, logits, group: GroupSampling, frames, k: int, draw: int) -> torch.Tensor:
        """Gumbel-max over the truncated, tempered distribution (argmax at temperature 0)."""
        logits = truncate(logits.float(), top_k=group.top_k, top_p=group.top_p)
        if group.temperature == 0:
            return logits.argmax(-1)
        u = uniform_noise(self.seeds, frames, k, draw, logits.shape[-1])
        return (logits / group.temperature - torch.log(-torch.log(u))).argmax(-1)

    def __call__(
        self, logits: torch.Tensor, k: int, frame: int, history: torch.Tensor | None
    ) -> torch.Tensor:
        """logits [B, V] for codebook k of `frame`; history [B, T]: codebook k's codes so far."""
        s, group = self.s, self.s.group(k)
        frames = torch.full_like(self.seeds, frame)
        token = self._pick(logits, group, frames, k, 0)
        if k == 0 and s.repetition_aware and history is not None and history.shape[-1] > 0:
            window = history[:, -s.ras_window :]
            looping = (window == token[:, None]).sum(-1) >= max(
                1, round(s.ras_ratio * s.ras_window)
            )
            if looping.any():  # VALL-E 2: fall back to the full distribution
                full = GroupSampling(temperature=group.temperature or 1.0)
                token = torch.where(looping, self._pick(logits, full, frames, k, 1), token)
        return token

    def all_frames(self, logits: torch.Tensor, k: int, first: int = 0) -> torch.Tensor:
        """logits [B, F, V] for codebook k of frames first.. first + F - 1 -> codes [B, F]."""
        b, f = logits.shape[:2]
        frames = torch.arange(first, first + f, device=logits.device).expand(b, f)
        return self._pick(logits, self.s.group(k), frames, k, 0)


class Prompted:
    """A chooser that continues an acoustic prompt (VALL-E's continuation): for each item's
    first prompt frames it returns the prompt's own codes, verbatim (never the stop class), and
    from there on what `chooser` picks. prompts [B, K, N] (padded), lengths [B] (0: none)."""

    def __init__(self, chooser: Chooser, prompts: torch.Tensor, lengths: torch.Tensor):
        self.chooser, self.prompts, self.lengths = chooser, prompts, lengths

    def __call__(self, logits, k: int, frame: int, history) -> torch.Tensor:
        token = self.chooser(logits, k, frame, history)
        if frame >= self.prompts.shape[-1]:
            return token
        return torch.where(self.lengths > frame, self.prompts[:, k, frame], token)

    def all_frames(self, logits: torch.Tensor, k: int, first: int = 0) -> torch.Tensor:
        codes = self.chooser.all_frames(logits, k, first)  # [B, F]
        n = max(0, min(codes.shape[1], self.prompts.shape[-1] - first))
        frames = torch.arange(first, first + n, device=codes.device)[None]
        held = self.prompts[:, k, first : first + n]
        codes[:, :n] = torch.where(frames < self.lengths[:, None], held, codes[:, :n])
        return codes
