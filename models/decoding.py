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
    codebook k for a run of frames ([B], or [B, F] for several: a non-autoregressive stage) (a
    stop on codebook 1 before an item's current length ends that item at its frame; an item
    that never stops ends at its own limit, unstopped) and says whether every item is done: its
    length is known and every codebook is filled up to it (delay's tail included).
    """

    def __init__(self, limits: torch.Tensor, n_codebooks: int, stop: int):
        b, self.stop = limits.shape[0], stop
        self.codes = torch.zeros(
            b, n_codebooks, int(limits.max()), dtype=torch.long, device=limits.device
        )
        self.lengths = limits.clone()
        self.stopped = torch.zeros(b, dtype=torch.bool, device=limits.device)
        self.filled = [0] * n_codebooks  # frames recorded so far, per codebook

    def record(self, codes: torch.Tensor, k: int, frames: slice) -> bool:
        codes = codes.view(codes.shape[0], -1)  # [B, F]
        if k == 0:
            at = torch.arange(frames.start, frames.stop, device=codes.device)[None]
            now = (codes == self.stop) & (at < self.lengths[:, None])
            first = torch.where(now, at, self.codes.shape[-1]).amin(1)  # the first stop, if any
            self.lengths = torch.minimum(self.lengths, first)
            self.stopped = self.stopped | now.any(1)
        self.codes[:, k, frames] = codes.clamp_max(self.stop - 1)
        self.filled[k] = frames.stop
        return min(self.filled) >= int(self.lengths.max())

    def result(self):
        """-> (codes [B, K, F_max] cut to the longest, lengths [B], stopped [B])."""
        return self.codes[..., : int(self.lengths.max())], self.lengths, self.stopped


class Stepper(Protocol):
    def logits(self, k: int, frames: slice, out: Decoded) -> torch.Tensor:
        """[B, len(frames), classes]: codebook k of those frames, from what has been fed."""

    def feed_code(self, k: int, codes: torch.Tensor) -> None:
        """A sequential step's code for codebook k ([B]), before the step's next code."""

    def feed_step(self, step: int, coords: list[int], out: Decoded) -> None:
        """The codes of step `step` (coordinates frame * K + codebook, -1: empty), chosen."""


def _slots(coords: list[int], k: int, n_frames: int) -> list[tuple[int, slice]]:
    """A step's codes as (codebook, frames) runs, in slot order, up to n_frames."""
    runs: list[tuple[int, slice]] = []
    for c in coords:
        if c < 0 or c // k >= n_frames:
            continue
        frame, book = divmod(c, k)
        if runs and runs[-1][0] == book and runs[-1][1].stop == frame:
            runs[-1] = (book, slice(runs[-1][1].start, frame + 1))
        else:
            runs.append((book, slice(frame, frame + 1)))
    return runs


def decode(pattern: Pattern, stepper: Stepper, *, limits: torch.Tensor, choose: Chooser, stop: int):
    """-> (codes [B, K, F_max], lengths [B], stopped [B]), item b at most limits[b] frames.

    One code is chosen by `choose(logits [B, classes], k, frame, history)`; a run of frames of
    one codebook predicted together (a VALL-E NAR stage) by `choose.all_frames`."""
    k = pattern.n_codebooks
    out = Decoded(limits, k, stop)
    for s, coords in enumerate(pattern.steps(int(limits.max())).tolist()):
        slots = _slots(coords, k, int(out.lengths.max()))
        if not slots:
            continue
        for book, frames in slots:
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
        stepper.feed_step(s, coords, out)
    return out.result()
