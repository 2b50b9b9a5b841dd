"""For runs of the confirmatory commit (e81a758), which predates `train.advance` (453ebdf): a
progress bar never moves past its total. Without it, a run whose last step goes 0.5 TFLOP past
its budget crashes there in tqdm (total formatted as None). Display only; loaded by putting
this folder on PYTHONPATH (docs/study.md, session 24)."""

import tqdm.std

_update = tqdm.std.tqdm.update


def update(self, n=1):
    if self.total is not None and not self.disable:
        n = max(0.0, min(n, self.total - self.n))
    return _update(self, n)


tqdm.std.tqdm.update = update
