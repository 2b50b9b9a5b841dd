"""Code orderings: how a backend lays the K x F code grid out as the steps it predicts.

The benchmark's research variable, kept as one tested object (audiocraft keeps MusicGen's
orderings interchangeable the same way). A pattern is a table of steps: step s holds up to W
codes, each named by its coordinate frame * K + codebook (-1: an empty slot). A model predicts
the codes of step s from every code of the steps before it, and, where `sequential` (MegaByte's
local model over a frame), from the codes of earlier slots of the same step.

- `flat`: one code a step, frame-major (f0k0, f0k1, ..., f1k0, ...): K x F steps.
- `delay`: MusicGen's delay; step s holds codebook k of frame s - k: F + K - 1 steps of K slots.
- `parallel`: step s holds all K codes of frame s, predicted together: F steps.
- `frames`: `parallel`'s steps with the K codes of a frame predicted one after another
  (MegaByte: a global model over frames, a local model inside each).
- `stages`: VALL-E: codebook 1 frame by frame (F steps), then each higher codebook for every
  frame at once (K - 1 steps of F slots).

`build` turns codes [B, K, F] into the step layout [B, W, S] and `revert` turns it back;
`visible` says which codes the prediction of each code may see (tests/test_patterns.py: round
trips and no leaks for every pattern and K in {1, 2, 4, 8}; tests/test_backends.py: each backend's
logits do not move when a code its pattern hides changes).
"""

import functools
from dataclasses import dataclass

import torch
from einops import rearrange


@dataclass(frozen=True)
class Pattern:
    name: str
    n_codebooks: int

    def __post_init__(self) -> None:
        if self.name not in PATTERNS:
            raise ValueError(f"unknown pattern {self.name!r}; valid patterns: {list(PATTERNS)}")
        if self.n_codebooks < 1:
            raise ValueError(f"a pattern needs K >= 1 codebooks, got {self.n_codebooks}")

    @property
    def sequential(self) -> bool:
        """Whether the slots of one step are predicted in order (else all together)."""
        return self.name == "frames"

    @functools.lru_cache(maxsize=256)  # noqa: B019 (frozen, hashable; read-only tensors)
    def steps(self, n_frames: int) -> torch.Tensor:
        """[S, W] coordinates frame * K + codebook of the codes each step holds (-1: empty)."""
        k, f = self.n_codebooks, n_frames
        grid = torch.arange(f * k).view(f, k)  # [F, K]: coordinate of (frame, codebook)
        if self.name == "flat":
            return grid.reshape(-1, 1)
        if self.name in ("parallel", "frames"):
            return grid
        if self.name == "delay":
            out = torch.full((f + k - 1, k), -1, dtype=torch.long)
            for i in range(k):
                out[i : i + f, i] = grid[:, i]
            return out
        out = torch.full((f + k - 1, max(f, 1)), -1, dtype=torch.long)  # stages
        out[:f, 0] = grid[:, 0]
        out[f:, :f] = grid[:, 1:].T
        return out

    def build(self, codes: torch.Tensor, empty: int) -> torch.Tensor:
        """codes [B, K, F] -> steps [B, W, S]; `empty` in slots with no code."""
        steps = self.steps(codes.shape[-1]).to(codes.device)  # [S, W]
        flat = rearrange(codes, "b k f -> b (f k)")
        out = flat[:, steps.clamp_min(0)].masked_fill(steps < 0, empty)  # [B, S, W]
        return rearrange(out, "b s w -> b w s")

    def revert(self, steps_codes: torch.Tensor, n_frames: int) -> torch.Tensor:
        """steps [B, W, S] (from `build`) -> codes [B, K, F]."""
        steps = self.steps(n_frames).to(steps_codes.device)
        b = steps_codes.shape[0]
        flat = steps_codes.new_zeros(b, n_frames * self.n_codebooks)
        held = steps >= 0
        flat[:, steps[held]] = rearrange(steps_codes, "b w s -> b s w")[:, held]
        return rearrange(flat, "b (f k) -> b k f", k=self.n_codebooks)

    @functools.lru_cache(maxsize=256)  # noqa: B019 (the forward passes read it every batch)
    def place(self, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(step [F, K], slot [F, K]): where each code sits in the layout."""
        steps = self.steps(n_frames)
        held = steps >= 0
        step = torch.empty(n_frames * self.n_codebooks, dtype=torch.long)
        slot = torch.empty_like(step)
        s, w = held.nonzero(as_tuple=True)
        step[steps[held]], slot[steps[held]] = s, w
        return step.view(n_frames, -1), slot.view(n_frames, -1)

    def visible(self, n_frames: int) -> torch.Tensor:
        """[F * K, F * K] bool: [t, c] when predicting code t may see code c (coordinates)."""
        step, slot = (x.flatten() for x in self.place(n_frames))
        earlier = step[None] < step[:, None]
        if self.sequential:
            earlier |= (step[None] == step[:, None]) & (slot[None] < slot[:, None])
        return earlier


PATTERNS = ("flat", "delay", "parallel", "frames", "stages")
