import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import experiments.train as train_module
from experiments.presets import preset
from experiments.run import main as run
from experiments.synthesize import main as synthesize
from experiments.train import Trainer, loader_for
from models.registry import BACKENDS, build_backend
from phonelm.dataset import prepare

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def tiny_split(data_root: Path, split: str):
    """One split of the tiny preset's dataset, with the preset's length filters."""
    from phonelm.dataset import CodeDataset

    cfg = preset("tiny", "megabyte")
    cfg.data.root = str(data_root)
    prepared = prepare(cfg.data, cfg.codec, progress=False)
    return CodeDataset(
        prepared.cache_dir,
        split,
        max_frames=int(cfg.data.max_seconds * prepared.codec.frame_rate),
        max_phonemes=cfg.data.max_phonemes,
    )


def tiny_args(model: str, out: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        "--model",
        model,
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--steps",
        "6",
        "--set",
        f"data.root={data_root}",
        "generate.limit=2",
        "generate.max_seconds=1.0",
        "train.eval_every=3",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(BACKENDS))
def test_run_writes_a_complete_run_directory_and_resumes(model, tmp_path, data_root, capsys):
    [result] = run(tiny_args(model, tmp_path, data_root))
    run_dir = tmp_path / f"{model}-tiny-seed0"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["name"] == model and config["train"]["steps"] == 6
    assert config["model"]["n_codebooks"] == 2  # resolved from the codec
    env = json.loads((run_dir / "env.json").read_text())
    assert env["git"] and env["versions"]["torch"] and env["command"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "valid_loss" in x] == [3, 6]
    assert all(len(x["valid_bits_per_code_by_codebook"]) == 2 for x in lines if "valid_loss" in x)
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "codec.safetensors").is_file() and (run_dir / "tensorboard").is_dir()
    generated = [
        json.loads(x) for x in (run_dir / "samples" / "generation.jsonl").read_text().splitlines()
    ]
    assert len(generated) == 2 and len(list((run_dir / "samples").glob("*.wav"))) == 2
    for g in generated:
        assert g["stopped"] or g["frames"] == g["guard_frames"]  # the guard is reported
    test = json.loads((run_dir / "test_metrics.json").read_text())
    assert len(test["test"]["bits_per_code_by_codebook"]) == 2 and test["params"] > 0
    assert result["steps"] == 6 and result["stopped_by"] == "steps"
    assert 0 < test["params_non_embedding"] < test["params"] and test["frame_rate"] == 75.0
    # the text-reliance control scored the test split with other utterances' text (exactly 0
    # would mean the same inputs twice)
    reliance = test["test"]["text_reliance_bits_by_codebook"]
    assert len(reliance) == 2 and test["test"]["text_reliance_bits"] != 0
    # every log line carries the counts, growing with the steps
    counted = [x for x in lines if "loss" in x]
    for key in ("codes_seen", "flops", "train_seconds", "cpu_seconds"):
        values = [x[key] for x in counted]
        assert values == sorted(values) and values[0] > 0, key
        assert test[key] == pytest.approx(lines[-1][key]), key

    # the same command again resumes: no step is trained twice
    [again] = run(tiny_args(model, tmp_path, data_root))
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == len(lines)
    assert again["steps"] == 6 and again["test"] == result["test"]
    # ... and keeps the first start's provenance, the later start beside it
    later = json.loads((run_dir / "env.json").read_text())
    assert {k: later[k] for k in env} == env and len(later["restarts"]) == 1
    assert later["restarts"][0]["git"] and "restarts" not in later["restarts"][0]

    # another config in the same run directory is refused ...
    with pytest.raises(SystemExit) as refused:
        run(tiny_args(model, tmp_path, data_root, "train.lr=0.5"))
    assert refused.value.code == 2 and "another config" in capsys.readouterr().err
    # ... but other generation settings only make the samples again
    [regen] = run(tiny_args(model, tmp_path, data_root, "generate.limit=1"))
    assert regen["generation"]["tts"]["utterances"] == 1 and regen["test"] == result["test"]
    [kept] = list((run_dir / "samples").glob("*.wav"))
    # a condition added later is generated beside the samples already made, which stay
    both = ['generate.conditions=["tts","continuation"]', "generate.prompt_seconds=6"]
    before = kept.stat().st_mtime_ns
    [cont] = run(tiny_args(model, tmp_path, data_root, "generate.limit=1", *both))
    assert cont["generation"]["tts"] == regen["generation"]["tts"]
    assert kept.stat().st_mtime_ns == before
    assert cont["generation"]["continuation"]["utterances"] == 1
    assert len(list((run_dir / "samples-continuation").glob("*.wav"))) == 1
    [line] = (run_dir / "samples-continuation" / "generation.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["prompt_id"] != record["id"] and 0 < record["prompt_frames"] <= 6 * 75

    # the run speaks arbitrary text with its saved decoding policy; flags override it
    say = [str(run_dir), "Hello there.", "--max-seconds", "0.5", "-o"]
    [wav] = synthesize([*say, str(tmp_path / "hi.wav")])
    assert wav.stat().st_size > 44
    saved = ["--coarse-temperature", "1.0", "--coarse-top-k", "50", "--coarse-top-p", "0.95"]
    [same] = synthesize([*say, str(tmp_path / "same.wav"), *saved, "--fine-temperature", "0"])
    assert same.read_bytes() == wav.read_bytes()
    flags = ["--coarse-top-p", "0.9", "--fine-top-k", "none", "--repetition-aware", "--seed", "3"]
    [other] = synthesize([*say, str(tmp_path / "other.wav"), *flags])
    assert other.stat().st_size > 44
    # continuation: an acoustic prompt and its text, then the text to continue with
    cont = ["--prompt-wav", str(wav), "--prompt-text", "Hello there."]
    [continued] = synthesize([*say, str(tmp_path / "cont.wav"), *cont])
    assert continued.stat().st_size > 44
    with pytest.raises(SystemExit):
        synthesize([*say, str(tmp_path / "y.wav"), "--prompt-wav", str(wav)])
    assert "--prompt-wav and --prompt-text go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        synthesize([str(run_dir), "\U0001f389", "-o", str(tmp_path / "x.wav")])
    assert refused.value.code == 1 and "cannot speak" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_a_model_k_other_than_the_codecs_is_an_error(tmp_path, data_root, capsys):
    with pytest.raises(SystemExit):
        run(tiny_args("flat", tmp_path, data_root, "model.n_codebooks=3"))
    assert "model.n_codebooks=3 differs from the codec's K=2" in capsys.readouterr().err
    assert not (tmp_path / "flat-tiny-seed0" / "config.json").exists()


def test_aligned_positions_take_the_training_splits_frames_per_phoneme(tmp_path, data_root):
    (result,) = run(tiny_args("megabyte", tmp_path, data_root, "model.positions=aligned"))
    run_dir = tmp_path / "megabyte-tiny-seed0"
    saved = json.loads((run_dir / "config.json").read_text())["model"]
    train = tiny_split(data_root, "train")
    lengths = [len(train[i].phonemes) for i in range(len(train))]
    expected = sum(train.frame_lengths) / sum(lengths)
    assert saved["positions"] == "aligned" and saved["phoneme_stride"] == round(expected, 4)
    assert 1 < saved["phoneme_stride"] < 20  # a plausible number of 75 Hz frames per phoneme
    assert result["generation"]["tts"]["utterances"] == 2
    synthesize([str(run_dir), "Hello.", "-o", str(tmp_path / "x.wav")])  # the saved stride
    assert (tmp_path / "x.wav").stat().st_size > 44


def test_a_run_saved_before_a_setting_existed_resumes_if_it_stays_at_its_default(
    tmp_path, data_root, capsys
):
    run(tiny_args("valle", tmp_path, data_root))
    config = tmp_path / "valle-tiny-seed0" / "config.json"
    saved = json.loads(config.read_text())
    del saved["model"]["code_dropout"], saved["model"]["positions"]  # as an older version wrote
    config.write_text(json.dumps(saved))
    (again,) = run(tiny_args("valle", tmp_path, data_root))  # resumes: nothing to train
    assert again["steps"] == 6
    with pytest.raises(SystemExit):
        run(tiny_args("valle", tmp_path, data_root, "model.code_dropout=0.5"))
    assert "sections ['model'] differ" in capsys.readouterr().err


def test_unknown_model_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        run(["--model", "nope"])
    assert "valid models: ['delay', 'flat', 'megabyte', 'valle']" in capsys.readouterr().err


def test_a_second_set_adds_to_the_first(tmp_path, capsys):
    # the bad value is in the first --set: were it replaced by the second, the run would start
    with pytest.raises(SystemExit) as exit_info:
        run(["--model", "flat", "--preset", "tiny", "--out", str(tmp_path), "--set",
             "train.lr=-1", "--set", "generate.limit=2"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "train.lr=-1.0: expected a number > 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _tiny_trainer(cfg, prepared, run_dir):
    torch.manual_seed(0)
    return Trainer(
        build_backend(replace(cfg.model, n_codebooks=2)),
        cfg.train,
        cache_dir=prepared.cache_dir,
        run_dir=run_dir,
        data=cfg.data,
        frame_rate=75.0,
    )


def _stopped_at_step_3(monkeypatch, make):
    """Train `make()` until step 3 raises KeyboardInterrupt -> a new trainer of the same run
    directory (resumed from its last checkpoint)."""
    real_lr = train_module.lr_at

    def crash_at_step_3(step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real_lr(step, *args)

    monkeypatch.setattr(train_module, "lr_at", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        make().fit()
    monkeypatch.setattr(train_module, "lr_at", real_lr)
    return make()


def test_interrupted_training_resumes_exactly(tmp_path, data_root, monkeypatch):
    cfg = preset("tiny", "megabyte")
    cfg.data.root = str(data_root)
    cfg.train.steps, cfg.train.eval_every, cfg.train.log_every = 4, 2, 1
    prepared = prepare(cfg.data, cfg.codec, progress=False)
    straight = _tiny_trainer(cfg, prepared, tmp_path / "a")
    straight.fit()
    resumed = _stopped_at_step_3(monkeypatch, lambda: _tiny_trainer(cfg, prepared, tmp_path / "b"))
    assert resumed.step == 2  # picked up the checkpoint written at step 2
    resumed.fit()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path, data_root):
    common = [
        "--model",
        "flat",
        "--preset",
        "tiny",
        "--steps",
        "4",
        "--set",
        f"data.root={data_root}",
        "train.batch_size=8",
        "train.micro_batch_size=4",
        "train.log_every=1",
        "train.eval_every=4",
        "generate.limit=3",
        "generate.batch_size=1",
        "generate.max_seconds=0.5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "one"
    subprocess.run(
        [sys.executable, "experiments/run.py", "--out", str(single), *common],
        cwd=ROOT,
        check=True,
        env=env,
        capture_output=True,
    )
    torchrun = Path(sys.executable).parent / "torchrun"

    def on_two_ranks(out: Path) -> None:
        command = [str(torchrun), "--standalone", "--nproc_per_node=2", "experiments/run.py",
                   "--out", str(out), *common]  # fmt: skip
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]

    double = tmp_path / "two"
    on_two_ranks(double)
    # the one-process run's sentences generated again over two ranks (batch i on rank i % 2,
    # gathered by rank 0): bitwise the same codes and lines
    samples = single / "flat-tiny-seed0" / "samples"
    codes, lines = (samples / "codes.safetensors").read_bytes(), (samples / "generation.jsonl")
    lines = [json.loads(x) for x in lines.read_text().splitlines()]
    shutil.rmtree(samples)
    on_two_ranks(single)
    assert (samples / "codes.safetensors").read_bytes() == codes
    again = [json.loads(x) for x in (samples / "generation.jsonl").read_text().splitlines()]
    timeless = [[{k: v for k, v in r.items() if "seconds" not in k and k != "real_time_factor"}
                 for r in rows] for rows in (lines, again)]  # fmt: skip
    assert len(timeless[0]) == 2 and timeless[0] == timeless[1]  # the split's 2, a batch a rank
    assert not (samples / "partial").exists()

    def losses(out):
        lines = (out / "flat-tiny-seed0" / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines]
        train = [r["loss"] for r in rows if "loss" in r]
        valid = [r["valid_loss"] for r in rows if "valid_loss" in r]
        return train, valid

    (train_1, valid_1), (train_2, valid_2) = losses(single), losses(double)
    assert len(train_1) == len(train_2) == 4
    assert train_1 == pytest.approx(train_2, rel=1e-4)
    assert valid_1 == pytest.approx(valid_2, rel=1e-4)
    env_2 = json.loads((double / "flat-tiny-seed0" / "env.json").read_text())
    assert env_2["world_size"] == 2


def test_schedule_warms_up_then_decays_to_the_end_of_the_budget():
    from experiments.train import TrainConfig, budget_used, lr_at

    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(0.1 * 10)
    assert lr_at(100, cfg, budget_used(100, 0, cfg)) == pytest.approx(0.1)
    assert lr_at(50, cfg, budget_used(50, 0, cfg)) == pytest.approx(0.55)  # half-way down
    # a FLOPs budget that runs out first ends the cosine there
    flops = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1, budget_flops=1e9)
    assert budget_used(20, 5e8, flops) == pytest.approx(0.5)
    assert lr_at(20, flops, budget_used(20, 5e8, flops)) == pytest.approx(0.55)
    assert lr_at(20, flops, budget_used(20, 1e9, flops)) == pytest.approx(0.1)
    assert budget_used(80, 1e8, flops) == pytest.approx(0.8)  # steps nearer than FLOPs


def test_a_flops_budget_ends_training_and_only_training_counts(tmp_path, data_root, monkeypatch):
    """Training stops at the first step that reaches budget_flops; codes seen are the code
    targets trained on (for VALL-E codebook 1 and one NAR stage: 2 x real frames, not K x, at
    K = 4); evaluation time counts against nothing (an injected clock: no timed assertion)."""

    cfg = preset("tiny", "valle")
    cfg.data.root = str(data_root)
    cfg.codec.n_codebooks = 4
    cfg.train.eval_every, cfg.train.log_every = 1, 1
    prepared = prepare(cfg.data, cfg.codec, progress=False)
    model = build_backend(replace(cfg.model, n_codebooks=4))
    seen, real_flops = [], train_module.train_step_flops
    clock = {"now": 0.0}

    def recording(model, batch):
        clock["now"] += 0.5  # every micro-batch trained takes half a second of this clock
        flops = real_flops(model, batch)
        seen.append((2 * int(batch.code_lengths.sum()), flops))
        return flops

    real_evaluate = train_module.evaluate

    def slow_evaluate(*args):
        clock["now"] += 100.0  # an evaluation takes far longer than the training
        return real_evaluate(*args)

    fake_time = SimpleNamespace(perf_counter=lambda: clock["now"], process_time=time.process_time)
    monkeypatch.setattr(train_module, "time", fake_time)
    monkeypatch.setattr(train_module, "train_step_flops", recording)
    monkeypatch.setattr(train_module, "evaluate", slow_evaluate)
    first = real_flops(
        model,
        next(
            iter(
                loader_for(prepared.cache_dir, "train", cfg.train, cfg.data, 75.0, shuffle=True)[2]
            )
        ),
    )
    cfg.train.budget_flops = 4.5 * first
    trainer = Trainer(
        model,
        cfg.train,
        cache_dir=prepared.cache_dir,
        run_dir=tmp_path,
        data=cfg.data,
        frame_rate=75.0,
    )
    result = trainer.fit()
    assert result["stopped_by"] == "flops" and result["steps"] < cfg.train.steps
    assert result["flops"] == pytest.approx(sum(f for _, f in seen))
    assert result["flops"] >= cfg.train.budget_flops > result["flops"] - seen[-1][1]
    assert result["codes_seen"] == sum(c for c, _ in seen)
    evaluations = sum(
        "valid_loss" in json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    )
    assert evaluations == result["steps"] >= 2
    assert result["train_seconds"] == pytest.approx(0.5 * len(seen))


def test_the_novel_condition_generates_the_held_out_words_split(tmp_path, data_root, capsys):
    """`novel` generates the sentences of words never heard in training (the tiny preset's
    corpus has 4), beside `tts` on the generated split; a corpus without them is refused
    before anything is written."""
    args = tiny_args("delay", tmp_path, data_root, 'generate.conditions=["tts","novel"]')
    [result] = run(args)
    run_dir = tmp_path / "delay-tiny-seed0"
    novel = [json.loads(x) for x in (run_dir / "samples-novel" / "generation.jsonl").open()]
    assert [g["id"] for g in novel] == ["EMB00-N0000", "EMB00-N0001"]  # generate.limit=2
    tts = [json.loads(x) for x in (run_dir / "samples" / "generation.jsonl").open()]
    assert not {g["id"] for g in tts} & {g["id"] for g in novel}
    assert set(result["generation"]) == {"tts", "novel"}
    with pytest.raises(SystemExit) as exit_info:
        run(
            tiny_args("delay", tmp_path / "none", data_root, 'generate.conditions=["novel"]',
                      "data.embedded.n_novel=0")
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "no 'novel' utterances" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_screen_on_valid_never_reads_the_test_split(tmp_path, data_root):
    """generate.split=valid: held-out bits, text reliance and the samples all come from
    `valid` (choose on valid, report on test)."""

    [result] = run(tiny_args("megabyte", tmp_path, data_root, "generate.split=valid"))
    assert result["eval_split"] == "valid"
    valid = tiny_split(data_root, "valid")
    assert result["test"]["codes"] == 2 * sum(valid.frame_lengths)  # K = 2 codes a frame
    samples = tmp_path / "megabyte-tiny-seed0" / "samples" / "generation.jsonl"
    assert {json.loads(x)["id"] for x in samples.open()} <= set(valid.ids)


def test_precision_settings_train_and_fp16_resumes_from_a_step_checkpoint(
    tmp_path, data_root, monkeypatch
):
    """train.precision: "auto" on CPU is plain fp32 (bitwise); bf16 and fp16 autocast (other
    weights); fp16's loss scaler is checkpointed, so a run stopped after a step checkpoint
    (train.checkpoint_every, with no evaluation yet) resumes bitwise."""
    cfg = preset("tiny", "megabyte")
    cfg.data.root = str(data_root)
    cfg.train.steps, cfg.train.eval_every, cfg.train.log_every = 5, 100, 1
    cfg.train.checkpoint_every = 2
    prepared = prepare(cfg.data, cfg.codec, progress=False)
    trained = {}
    for precision in ("auto", "fp32", "bf16", "fp16"):
        cfg.train.precision = precision
        trainer = _tiny_trainer(cfg, prepared, tmp_path / precision)
        trainer.fit()
        trained[precision] = [p.detach().clone() for p in trainer.model.parameters()]
        assert all(torch.isfinite(p).all() for p in trained[precision])
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # noqa: E731
    assert same(trained["auto"], trained["fp32"])
    assert not same(trained["bf16"], trained["fp32"]) and not same(trained["fp16"], trained["fp32"])

    stopped = tmp_path / "stopped"
    resumed = _stopped_at_step_3(monkeypatch, lambda: _tiny_trainer(cfg, prepared, stopped))
    assert resumed.step == 2 and resumed.scaler.is_enabled()  # the step checkpoint, not an eval
    resumed.fit()
    assert same([p.detach() for p in resumed.model.parameters()], trained["fp16"])


def test_checkpoint_minutes_count_training_time(tmp_path, data_root, monkeypatch):
    """train.checkpoint_minutes: last.pt after every that many minutes of training steps."""
    cfg = preset("tiny", "megabyte")
    cfg.data.root = str(data_root)
    cfg.train.steps, cfg.train.eval_every, cfg.train.checkpoint_minutes = 7, 100, 0.5
    prepared = prepare(cfg.data, cfg.codec, progress=False)
    clock = {"now": 0.0}

    def tick():  # read at a step's start and end: every step takes 15 s of this clock
        clock["now"] += 15.0
        return clock["now"]

    fake_time = SimpleNamespace(perf_counter=tick, process_time=time.process_time)
    monkeypatch.setattr(train_module, "time", fake_time)
    saved, real = [], Trainer._checkpoint

    def recording(self, *, best):
        saved.append(self.step)
        real(self, best=best)

    monkeypatch.setattr(Trainer, "_checkpoint", recording)
    _tiny_trainer(cfg, prepared, tmp_path / "run").fit()
    assert saved == [2, 4, 6, 7]  # every 30 s of training, and the final evaluation


def test_cuda_precision_defaults():
    from experiments.train import allow_tf32, autocast_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype("auto", cuda) == torch.bfloat16 and autocast_dtype("auto", cpu) is None
    assert autocast_dtype("fp16", cpu) == torch.float16
    with pytest.raises(ValueError, match="train.precision='fp8'"):
        autocast_dtype("fp8", cpu)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        assert allow_tf32("bf16", cuda) and torch.backends.cuda.matmul.allow_tf32
        assert not allow_tf32("fp32", cuda) and not torch.backends.cuda.matmul.allow_tf32
        assert not allow_tf32("bf16", cpu)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_the_training_bar_stops_at_its_total():
    """A budgeted run's last step overshoots the budget; its bar ends at 100%, with no tqdm
    warning and no negative time left."""
    import io
    import warnings

    from tqdm import tqdm

    from experiments.train import advance

    out = io.StringIO()
    bar = tqdm(total=1.0, file=out, bar_format="{n:.2f}/{total:.2f} {remaining}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            advance(bar, 0.6)
        bar.close()
    assert bar.n == pytest.approx(1.0) and "-" not in out.getvalue().split("\r")[-1]


def test_the_training_bar_counts_toward_the_limit_that_ends_the_run(tmp_path, data_root, capsys):
    """Steps when the step cap comes before the FLOPs budget (the paper preset at tiny
    overrides), TFLOPs of the budget when the budget ends the run first."""
    run(tiny_args("delay", tmp_path / "steps", data_root, "train.budget_flops=1e18"))
    bar = capsys.readouterr().err.split("\r")
    trained = [line for line in bar if line.startswith("train")]
    assert trained and all("TFLOPs" not in line for line in trained)
    assert "6/6" in trained[-1]
    run([*tiny_args("delay", tmp_path / "flops", data_root, "train.budget_flops=6e9"),
         "--steps", "1000"])  # fmt: skip
    trained = [line for line in capsys.readouterr().err.split("\r") if line.startswith("train")]
    assert trained and "train (TFLOPs of the budget)" in trained[-1]
    assert "100%" in trained[-1]
