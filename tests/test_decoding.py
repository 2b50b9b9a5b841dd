"""The one decode loop (models/decoding.py) walks a pattern's steps: the order of logits and
feeds is the pattern's, sequential steps feed each code before the next, slots past every
item's end are skipped, and decoding ends as soon as every item is done."""

import torch

from models.decoding import decode
from models.patterns import FramesPattern, make_pattern

B, V = 2, 8


class Recorder:
    """A stepper that records what the loop asks of it."""

    def __init__(self):
        self.calls = []

    def logits(self, k, frames, out):
        self.calls.append(("logits", k, frames.start, frames.stop))
        return torch.zeros(B, frames.stop - frames.start, V + 1)

    def feed_code(self, k, codes):
        self.calls.append(("code", k))

    def feed_step(self, step, coords, out):
        self.calls.append(("step", step))


class StopAt:
    """Code 1 everywhere, and the stop class on codebook 1 at frame `stop` (None: never)."""

    def __init__(self, stop):
        self.stop = stop

    def __call__(self, logits, k, frame, history):
        return torch.full((B,), V if (k == 0 and frame == self.stop) else 1)

    def all_frames(self, logits, k, first=0):
        return torch.ones(B, logits.shape[1], dtype=torch.long)


def _run(name, k, limit, stop):
    stepper = Recorder()
    codes, lengths, stopped = decode(
        make_pattern(name, k), stepper, limits=torch.full((B,), limit), choose=StopAt(stop), stop=V
    )
    return stepper.calls, codes, lengths, stopped


def test_a_sequential_step_feeds_each_code_before_the_next():
    calls, codes, lengths, stopped = _run("frames", 2, limit=2, stop=None)
    frame0 = [("logits", 0, 0, 1), ("code", 0), ("logits", 1, 0, 1), ("code", 1), ("step", 0)]
    assert calls == [*frame0, ("logits", 0, 1, 2), ("code", 0), ("logits", 1, 1, 2)]
    assert codes.shape == (B, 2, 2) and lengths.tolist() == [2, 2] and not stopped.any()


def test_delay_predicts_a_step_together_and_ends_with_its_tail():
    calls, codes, lengths, stopped = _run("delay", 2, limit=5, stop=2)
    logits = [c[1:3] for c in calls if c[0] == "logits"]  # (codebook, frame)
    assert logits == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1)]  # the stop at 2: no (1, 2)
    assert ("code", 0) not in calls and calls[-1] == ("logits", 1, 1, 2)
    assert lengths.tolist() == [2, 2] and stopped.all() and codes.shape == (B, 2, 2)


def test_valle_stages_skip_the_ar_after_the_stop_then_fill_each_codebook_at_once():
    calls, codes, lengths, stopped = _run("stages", 3, limit=4, stop=2)
    assert calls == [("logits", 0, 0, 1), ("step", 0), ("logits", 0, 1, 2), ("step", 1),
                     ("logits", 0, 2, 3), ("step", 2),  # the stop; frame 3 is never asked for
                     ("logits", 1, 0, 2), ("step", 4), ("logits", 2, 0, 2)]  # fmt: skip
    assert lengths.tolist() == [2, 2] and stopped.all() and codes.tolist() == [[[1] * 2] * 3] * B


def test_a_new_ordering_is_one_subclass():
    class Reversed(FramesPattern):  # a frame's codes from the last codebook to the first
        name = "reversed"

        def layout(self, grid):
            return grid.flip(1)

    pattern = Reversed(3)
    codes = torch.randint(0, V, (B, 3, 4))
    assert torch.equal(pattern.revert(pattern.build(codes, empty=-1), 4), codes)
    visible = pattern.visible(4)  # coordinates frame * 3 + codebook
    assert not visible[2].any() and visible[0, [1, 2]].all() and not visible[0, 3:].any()
    stepper = Recorder()
    decode(pattern, stepper, limits=torch.full((B,), 1), choose=StopAt(None), stop=V)
    assert [c[1] for c in stepper.calls if c[0] == "logits"] == [2, 1, 0]
