"""Every setting of every section, fed a bad value of its type (issue 25): one line, exit 2,
nothing written, and the corrected command then works in the same --out. A field added to a
config without a row here fails `test_the_table_covers_every_setting`."""

from pathlib import Path

import pytest

from experiments.presets import _fields, preset
from experiments.run import main as run

BAD = {  # setting -> a bad value of its type
    "preset": "bogus",
    "seed": "-1",
    "data.corpus": "/nonexistent/LJSpeech-1.1",
    "data.root": "/dev/null/data",
    "data.embedded.n_sentences": "0",
    "data.embedded.n_novel": "-1",
    "data.embedded.seed": "-1",
    "data.embedded.voice": "xx-nonexistent",
    "data.embedded.rate": "0",
    "data.embedded.sample_rate": "0",
    "data.valid_fraction": "0.7",
    "data.test_fraction": "-0.1",
    "data.fit_seconds": "0",
    "data.shard_size": "0",
    "data.max_seconds": "0",
    "data.max_phonemes": "0",
    "codec.name": "bogus",
    "codec.n_codebooks": "0",
    "codec.bandwidth": "5.0",
    "codec.weights": "/nonexistent/encodec.th",
    "codec.seed": "-1",
    "model.name": "valle",
    "model.dim": "0",
    "model.depth": "0",
    "model.dim_head": "0",
    "model.ff_mult": "0",
    "model.dropout": "1.5",
    "model.code_dropout": "1.0",
    "model.code_dropout_unit": "bogus",
    "model.local_dim": "0",
    "model.local_depth": "0",
    "model.nar_depth": "-1",
    "model.n_codebooks": "3",
    "model.positions": "bogus",
    "model.phoneme_stride": "0",
    "model.prefix": "bogus",
    "model.codebook_size": "16",
    "model.n_phonemes": "5",
    "train.steps": "0",
    "train.budget_flops": "-1",
    "train.max_minutes": "0",
    "train.batch_size": "0",
    "train.micro_batch_size": "0",
    "train.lr": "0",
    "train.min_lr_ratio": "2",
    "train.warmup_steps": "-1",
    "train.weight_decay": "-1",
    "train.beta1": "1.0",
    "train.beta2": "-0.5",
    "train.grad_clip": "0",
    "train.eval_every": "0",
    "train.log_every": "0",
    "train.num_workers": "-1",
    "train.seed": "-1",
    "train.prompt_fraction": "1.5",
    "train.deterministic": "maybe",
    "train.precision": "fp8",
    "train.checkpoint_every": "-1",
    "train.checkpoint_minutes": "-5",
    "generate.split": "bogus",
    "generate.limit": "0",
    "generate.batch_size": "0",
    "generate.max_seconds": "0",
    "generate.frames_per_phoneme": "0",
    "generate.sampling.coarse.temperature": "-1",
    "generate.sampling.coarse.top_k": "0",
    "generate.sampling.coarse.top_p": "1.5",
    "generate.sampling.fine.temperature": "-1",
    "generate.sampling.fine.top_k": "-3",
    "generate.sampling.fine.top_p": "0",
    "generate.sampling.repetition_aware": "maybe",
    "generate.sampling.ras_window": "0",
    "generate.sampling.ras_ratio": "-1",
    "generate.sampling.seed": "-1",
    "generate.conditions": "[]",
    "generate.prompt_seconds": "0",
}


@pytest.fixture(scope="module")
def data_root(tiny_data_root) -> Path:
    return tiny_data_root


def tiny(out: Path, data_root: Path, *extra: str) -> list[str]:
    return ["--model", "delay", "--preset", "tiny", "--out", str(out), "--steps", "2", "--set",
            f"data.root={data_root}", "generate.limit=1", "generate.max_seconds=0.5",
            *extra]  # fmt: skip


def test_the_table_covers_every_setting():
    for model in ("delay", "valle"):
        for preset_name in ("tiny", "cpu", "paper"):
            keys = {key for key, _ in _fields(preset(preset_name, model))}
            assert keys == set(BAD), sorted(keys ^ set(BAD))


def test_every_bad_setting_is_one_line_exit_2_and_writes_nothing(tmp_path, data_root, capsys):
    out, failures = tmp_path / "out", []
    for key, bad in BAD.items():
        capsys.readouterr()
        try:
            run(tiny(out, data_root, f"{key}={bad}"))
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
        err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
        if code != 2 or len(err) != 1 or key.split(".")[-1] not in err[0]:  # names it
            failures.append(f"{key}={bad}: exit {code}, stderr {err[-3:]}")
        if out.exists():
            failures.append(f"{key}={bad}: wrote {sorted(p.name for p in out.rglob('*'))}")
            break
    assert failures == []
    [result] = run(tiny(out, data_root))  # the corrected command, in the same --out
    assert result["steps"] == 2
