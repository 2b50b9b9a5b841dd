"""Adding a backend is one file and one registry line: a throwaway backend, written here from
the shared pieces only, is registered, gets a derived preset, trains and generates through the
real pipeline (experiments/run.py)."""

import json

import pytest
import torch
from torch import nn

import experiments.presets as presets
from experiments.run import main as run
from models import flops
from models.base import Backend, ForwardOutput
from models.blocks import (
    CodebookHeads,
    attention_stack,
    codebook_offsets,
    frame_loss,
    frame_targets,
    left_align,
    pad_phonemes,
    phoneme_prefix,
)
from models.kv_cache import stack_decoder, window
from models.positions import sequence_positions
from models.registry import BACKENDS, build_backend


class Parallel(Backend):
    """All K codes of frame f at once from the frames before it (the `parallel` pattern)."""

    pattern_name = "parallel"

    def __init__(self, cfg):
        super().__init__(cfg)
        k, v, d = cfg.n_codebooks, cfg.codebook_size, cfg.dim
        self.phoneme_emb = nn.Embedding(cfg.n_phonemes, d)
        self.bos = nn.Parameter(torch.zeros(d))
        self.code_emb = nn.Embedding(k * v, d)
        self.stack = attention_stack(cfg, depth=cfg.depth)
        self.heads = CodebookHeads(d, k, v)

    def _frames(self, codes):  # [B, K, F] -> [B, F, D]
        offset = codebook_offsets(self.cfg.n_codebooks, self.cfg.codebook_size, codes.device)
        return self.code_emb(codes.clamp_min(0) + offset[None, :, None]).sum(1)

    def logits(self, batch):
        ids, ph_mask = left_align(batch.phonemes, batch.phoneme_lengths)
        f = batch.codes.shape[-1]
        prefix, valid = phoneme_prefix(self.phoneme_emb, self.bos, ids, ph_mask)
        real = torch.arange(f)[None] < batch.code_lengths[:, None]
        x = torch.cat([prefix, self._frames(batch.codes)], dim=1)
        pos = sequence_positions(self.cfg, ph_mask, f + 1)
        h = self.stack(x, mask=torch.cat([valid, real], 1), pos=pos)[:, ids.shape[1] :]
        return self.heads(h[:, :, None].expand(-1, -1, self.cfg.n_codebooks, -1))

    def forward(self, batch) -> ForwardOutput:
        targets = frame_targets(
            batch.codes, batch.code_lengths, self.cfg.codebook_size, batch.prompt_lengths
        )
        return frame_loss(self.logits(batch), targets, self.cfg.codebook_size)

    def forward_flops(self, batch) -> int:
        (b, p), (k, f) = batch.phonemes.shape, batch.codes.shape[1:]
        return flops.stack(self.cfg, batch=b, length=p + 1 + f, depth=self.cfg.depth) + (
            flops.linear(b * (f + 1) * k, self.cfg.dim, self.cfg.codebook_size + 1)
        )

    def stepper(self, phonemes, *, limits, cached):
        return ParallelStepper(self, phonemes, int(limits.max()), cached)


class ParallelStepper:
    """A step is a frame: its K codes from one hidden state, then the frame is fed."""

    def __init__(self, model: Parallel, phonemes, n_frames: int, cached: bool):
        ids, ph_mask = pad_phonemes(phonemes)
        (b, p), self.model, self.p = ids.shape, model, ids.shape[1]
        self.pos = sequence_positions(model.cfg, ph_mask, n_frames + 1)
        self.decoder = stack_decoder(model.stack, batch=b, capacity=p + 1 + n_frames, cached=cached)
        x, valid = phoneme_prefix(model.phoneme_emb, model.bos, ids, ph_mask)
        self.h = self.decoder.step(x, pos=window(self.pos, 0, p + 1), valid=valid)[:, -1]

    def logits(self, k, frames, out):
        return self.model.heads.one(self.h, k)[:, None]

    def feed_step(self, step, coords, out):
        new, at = self.model._frames(out.codes[:, :, step : step + 1]), self.p + 1 + step
        self.h = self.decoder.step(new, pos=window(self.pos, at, at + 1))[:, -1]


@pytest.mark.slow
def test_a_backend_added_in_one_file_and_one_line_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS, "parallel", Parallel)  # the registry line
    presets.matched_depths.cache_clear()
    try:
        cfg = presets.preset("tiny", "parallel")  # derived: no preset line for it
        k = presets._codec_k(cfg.codec)

        def count(name, **depths):
            model_cfg = presets.replace(presets.preset("tiny", name).model, n_codebooks=k)
            return build_backend(presets.replace(model_cfg, **depths)).num_params(
                non_embedding=True
            )

        target, depth = count("megabyte"), cfg.model.depth
        miss = abs(count("parallel") - target)  # the derived depth is the nearest match
        assert all(miss <= abs(count("parallel", depth=d) - target) for d in (depth - 1, depth + 1))
        args = ["--model", "parallel", "--preset", "tiny", "--out", str(tmp_path)]
        args += ["--steps", "2", "--set", f"data.root={tmp_path / 'data'}", "train.eval_every=1"]
        [result] = run([*args, "generate.limit=2", "generate.max_seconds=1.0"])
    finally:
        presets.matched_depths.cache_clear()
    run_dir = tmp_path / "parallel-tiny-seed0"
    assert result["steps"] == 2
    assert json.loads((run_dir / "config.json").read_text())["model"]["depth"] == cfg.model.depth
    rows = [
        json.loads(x) for x in (run_dir / "samples" / "generation.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 2 and all(row["frames"] > 0 for row in rows)
