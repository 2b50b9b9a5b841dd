"""The one decode loop: every backend generates by walking its pattern's steps.

A backend hands the loop a `Stepper`, its incremental view of one batch (KV caches, the last
hidden states). For each step of `pattern.steps(n)`, the loop asks the stepper for the logits of
the step's codes, lets `choose` pick them, records them (`Decoded`: stops, lengths) and feeds the
step back. Codes of a sequential pattern's step (MegaByte's local model over a frame) are fed one
by one as they are chosen; the codes of any other step are predicted together. Slots past every
item's length are skipped (VALL-E's AR steps after every item stopped; delay's tail beyond the
end), and decoding ends as soon as every item is done.
"""

from typing import Protocol

import torch

from models.patterns import Pattern
from phonelm.sampling import Chooser


class Decoded:
    """Codes being generated for a batch, with each item's stop decision and length guard, for
    any ordering that fills each codebook frame by frame (every pattern here does).

    `codes` [B, K, max(limits)]; `record(codes, k, frames)` stores the chosen codes of
    codebook k for a run of frames ([B] for one, [B, F] for several: a non-autoregressive
    stage) and says whether every item is done: its length is known and every codebook is
    filled up to it (delay's tail included). Codebook 1 comes one frame at a time: a stop there
    before an item's current length ends that item at that frame; an item that never stops
    ends at its own limit, unstopped. `longest`: the longest item's length as known so far.
    """

    def __init__(self, limits: torch.Tensor, n_codebooks: int, stop: int):
        b, self.stop = limits.shape[0], stop
        self.longest = int(limits.max())
        self.codes = torch.zeros(
            b, n_codebooks, self.longest, dtype=torch.long, device=limits.device
        )
        self.lengths = limits.clone()
        self.stopped = torch.zeros(b, dtype=torch.bool, device=limits.device)
        self.filled = [0] * n_codebooks  # frames recorded so far, per codebook

    def record(self, codes: torch.Tensor, k: int, frames: slice) -> bool:
        codes = codes.view(codes.shape[0], -1)  # [B, F]
        if k == 0:
            if frames.stop - frames.start != 1:
                raise ValueError(f"codebook 1 is chosen one frame at a time, got frames {frames}")
            now = (codes[:, 0] == self.stop) & (frames.start < self.lengths)
            self.lengths[now] = frames.start
            self.stopped |= now
            self.longest = int(self.lengths.max())
        self.codes[:, k, frames] = codes.clamp_max(self.stop - 1)
        self.filled[k] = frames.stop
        return min(self.filled) >= self.longest

    def result(self):
        """-> (codes [B, K, F_max] cut to the longest, lengths [B], stopped [B])."""
        return self.codes[..., : self.longest], self.lengths, self.stopped


class Stepper(Protocol):
    def logits(self, k: int, frames: slice, out: Decoded) -> torch.Tensor:
        """[B, len(frames), classes]: codebook k of those frames, from what has been fed."""

    def feed_code(self, k: int, codes: torch.Tensor) -> None:
        """A sequential step's code for codebook k ([B]), before the step's next code."""

    def feed_step(self, step: int, coords: list[int], out: Decoded) -> None:
        """The codes of step `step` (coordinates frame * K + codebook, -1: empty), chosen."""


def _runs(layout: list[list[int]], k: int) -> list[list[tuple[int, int, int]]]:
    """Per step of the layout: its codes as (codebook, first frame, end frame) runs, in slot
    order (a VALL-E NAR step is one run over every frame; any other step, runs of one)."""
    steps = []
    for coords in layout:
        runs: list[tuple[int, int, int]] = []
        for frame, book in (divmod(c, k) for c in coords if c >= 0):
            if runs and runs[-1][0] == book and runs[-1][2] == frame:
                runs[-1] = (book, runs[-1][1], frame + 1)
            else:
                runs.append((book, frame, frame + 1))
        steps.append(runs)
    return steps


def decode(pattern: Pattern, stepper: Stepper, *, limits: torch.Tensor, choose: Chooser, stop: int):
    """-> (codes [B, K, F_max], lengths [B], stopped [B]), item b at most limits[b] frames.

    One code is chosen by `choose(logits [B, classes], k, frame, history)`; a run of frames of
    one codebook predicted together (a VALL-E NAR stage) by `choose.all_frames`."""
    out = Decoded(limits, pattern.n_codebooks, stop)
    layout = pattern.steps(out.longest).tolist()
    for s, runs in enumerate(_runs(layout, pattern.n_codebooks)):
        live = [(book, slice(a, min(b, out.longest))) for book, a, b in runs if a < out.longest]
        if not live:  # every code of the step lies past every item's end
            continue
        for book, frames in live:
            logits = stepper.logits(book, frames, out)
            if frames.stop - frames.start == 1:
                f = frames.start
                codes = choose(logits[:, 0], book, f, out.codes[:, book, :f])
            else:
                codes = choose.all_frames(logits, book, frames.start)
            if out.record(codes, book, frames):
                return out.result()
            if pattern.sequential:
                stepper.feed_code(book, out.codes[:, book, frames.start])
        stepper.feed_step(s, layout[s], out)
    return out.result()
