"""Code orderings: how a backend lays the K x F code grid out as the steps it predicts.

The benchmark's research variable, kept as one tested object (audiocraft keeps MusicGen's
orderings interchangeable the same way). A pattern is a table of steps: step s holds up to W
codes, each named by its coordinate frame * K + codebook (-1: an empty slot). A model predicts
the codes of step s from every code of the steps before it, and, where `sequential` (MegaByte's
local model over a frame), from the codes of earlier slots of the same step.

Each ordering is a small `Pattern` subclass that lays out `steps(n_frames)`; everything else
(build, revert, place, visible) follows from that table, and `models/decoding.py` decodes every
backend through it. A new ordering is one subclass and one entry in `PATTERNS`.

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
from typing import ClassVar

import torch
from einops import rearrange


@dataclass(frozen=True)
class Pattern:
    """An ordering of the K x F code grid at K = `n_codebooks` (subclasses: one per ordering)."""

    n_codebooks: int
    name: ClassVar[str]
    # whether the slots of one step are predicted in order (else all together)
    sequential: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.n_codebooks < 1:
            raise ValueError(f"a pattern needs K >= 1 codebooks, got {self.n_codebooks}")

    def layout(self, grid: torch.Tensor) -> torch.Tensor:
        """grid [F, K] (the coordinate of each code) -> steps [S, W] (-1: an empty slot)."""
        raise NotImplementedError

    @functools.lru_cache(maxsize=256)  # noqa: B019 (frozen, hashable; read-only tensors)
    def steps(self, n_frames: int) -> torch.Tensor:
        """[S, W] coordinates frame * K + codebook of the codes each step holds (-1: empty)."""
        k = self.n_codebooks
        return self.layout(torch.arange(n_frames * k).view(n_frames, k))

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


class FlatPattern(Pattern):
    name = "flat"

    def layout(self, grid):
        return grid.reshape(-1, 1)


class DelayPattern(Pattern):
    name = "delay"

    def layout(self, grid):
        f, k = grid.shape
        out = torch.full((f + k - 1, k), -1, dtype=torch.long)
        for i in range(k):
            out[i : i + f, i] = grid[:, i]
        return out


class ParallelPattern(Pattern):
    name = "parallel"

    def layout(self, grid):
        return grid


class FramesPattern(ParallelPattern):
    name = "frames"
    sequential = True


class StagesPattern(Pattern):
    name = "stages"

    def layout(self, grid):
        f, k = grid.shape
        out = torch.full((f + k - 1, max(f, 1)), -1, dtype=torch.long)
        out[:f, 0] = grid[:, 0]
        out[f:, :f] = grid[:, 1:].T
        return out


PATTERNS: dict[str, type[Pattern]] = {
    cls.name: cls
    for cls in (FlatPattern, DelayPattern, ParallelPattern, FramesPattern, StagesPattern)
}


def make_pattern(name: str, n_codebooks: int) -> Pattern:
    """The ordering called `name` at K = n_codebooks."""
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; valid patterns: {list(PATTERNS)}")
    return PATTERNS[name](n_codebooks)
