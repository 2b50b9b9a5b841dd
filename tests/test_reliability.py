"""Faults and bad input end in a clear message and a resumable state (issue: reliability)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eval.score import main as score
from experiments.compare_runs import differences
from experiments.compare_runs import main as compare
from experiments.run import main as run
from experiments.synthesize import main as synthesize
from experiments.train import TrainConfig, micro_batches
from models.registry import BACKENDS
from phonelm.run_dir import RunDir, RunDirError

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def data_root(tiny_data_root) -> Path:
    return tiny_data_root


def tiny(model: str, out: Path, data_root: Path, *extra: str, steps: int = 6) -> list[str]:
    return [
        "--model", model, "--preset", "tiny", "--out", str(out), "--steps", str(steps),
        "--set", f"data.root={data_root}", "generate.limit=2", "generate.max_seconds=0.5",
        "train.eval_every=2", "train.log_every=1", *extra,
    ]  # fmt: skip


def weights(run_dir: Path, name: str = "last") -> dict:
    return RunDir(run_dir).load_checkpoint(name)["model"]


def same_run(a: Path, b: Path) -> None:
    """Bitwise-identical weights, codec, metrics and samples (timings aside)."""
    assert differences(a, b) == []


def cli(*args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "experiments/run.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file():
            steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines()[:-1]]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never came: {proc.poll()}")


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(BACKENDS))
def test_killed_run_resumes_to_the_same_result(model, tmp_path, data_root):
    """SIGKILL mid-run, then the same command: bitwise the uninterrupted run (dropout on,
    K=4, two threads: train.deterministic keeps the reductions in one order)."""
    args = ["model.dropout=0.1", "codec.n_codebooks=4", "data.fit_seconds=30"]
    threads = {"OMP_NUM_THREADS": "2"}
    straight = cli(*tiny(model, tmp_path / "a", data_root, *args, steps=12), env=threads)
    assert straight.wait() == 0, straight.stderr.read()[-3000:]
    command = tiny(model, tmp_path / "b", data_root, *args, steps=12)
    proc = cli(*command, env=threads)
    run_dir = tmp_path / "b" / f"{model}-tiny-seed0"
    wait_for_step(run_dir, 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = cli(*command, env=threads)
    assert again.wait() == 0, again.stderr.read()[-3000:]
    same_run(tmp_path / "a" / f"{model}-tiny-seed0", run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_write_a_checkpoint_and_exit_cleanly(signum, tmp_path, data_root):
    command = tiny("megabyte", tmp_path, data_root, "train.eval_every=1000", steps=400)
    proc = cli(*command)
    run_dir = tmp_path / "megabyte-tiny-seed0"
    wait_for_step(run_dir, 3, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err and "checkpoint written to" in err, err[-2000:]
    state = RunDir(run_dir).load_checkpoint("last")
    assert state["step"] >= 3  # the steps since the start are not lost (no eval came yet)
    logged = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == state["step"]


def test_damaged_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    run = RunDir(tmp_path)
    run.save_checkpoint("last", {"step": 2})
    run.save_checkpoint("last", {"step": 4})
    assert run.load_checkpoint("last")["step"] == 4
    data = run.checkpoint("last").read_bytes()
    run.checkpoint("last").write_bytes(data[: len(data) // 2])  # truncated
    assert run.load_checkpoint("last")["step"] == 2
    assert str(run.checkpoint("last")) in capsys.readouterr().err
    run.checkpoint("last.prev").write_bytes(b"garbage")
    run.save_checkpoint("best", {"step": 1})
    assert run.load_checkpoint("last")["step"] == 1  # then best


def test_a_full_disk_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.save_checkpoint("last", {"step": 2})

    def full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunDirError, match="no space left on the device to write .*last.new.pt"):
        run.save_checkpoint("last", {"step": 4})
    monkeypatch.undo()
    assert run.load_checkpoint("last")["step"] == 2
    assert not list(tmp_path.glob("checkpoints/.*tmp"))


def test_metrics_log_tolerates_a_torn_line_and_truncates_on_resume(tmp_path):
    run = RunDir(tmp_path)
    for step in (1, 2, 3, 4):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    with open(run.metrics, "a") as f:
        f.write('{"step": 5, "lo')  # killed mid-write
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3, 4]
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    assert run.metrics.read_text().endswith("\n")


def test_micro_batches_follow_the_world_size():
    cfg = TrainConfig(batch_size=8, micro_batch_size=8)
    assert micro_batches(cfg, 1) == (8, 1)
    assert micro_batches(cfg, 2) == (4, 1)
    assert micro_batches(TrainConfig(batch_size=12, micro_batch_size=8), 1) == (6, 2)
    with pytest.raises(ValueError, match="train.batch_size=8 does not split over 3 processes"):
        micro_batches(cfg, 3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.dim=-1", "model.dim=-1: expected an integer >= 1"),
        ("model.prefix=full", "model.prefix='full': expected 'causal' or 'bidirectional'"),
        ("data.max_seconds=0", "data.max_seconds=0.0: expected a number of seconds > 0"),
        ("generate.max_seconds=0.01", "generate.max_seconds=0.01 allows no frame"),
        ("data.max_seconds=0.05", "the train split is empty after the length filters"),
        ("model.n_codebooks=3", "differs from the codec's K=2"),
        ("train.lr=abc", "override 'train.lr=abc': expected float"),
        ("nosuch.field=1", "unknown config section 'nosuch'"),
        ("generate.sampling.coarse.top_p=2", "generate.sampling.coarse: top_p must be in"),
    ],
)
def test_a_bad_setting_is_one_line_and_leaves_no_run_directory(
    override, message, tmp_path, data_root, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        run(tiny("flat", tmp_path, data_root, override))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "flat-tiny-seed0" / "config.json").exists()
    # ... so the corrected command runs in the same --out
    [result] = run(tiny("flat", tmp_path, data_root, steps=2))
    assert result["steps"] == 2


def test_usage_errors_exit_2_file_errors_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--model", "flat", "--preset", "huge"])
    assert exit_info.value.code == 2
    assert "unknown preset 'huge'; valid presets" in capsys.readouterr().err
    bad = tmp_path / "LJ"
    (bad / "wavs").mkdir(parents=True)
    (bad / "metadata.csv").write_text("T-1|Hello.|Hello.\nno separators here\n")
    with pytest.raises(SystemExit) as exit_info:
        run(["--model", "flat", "--preset", "tiny", "--out", str(tmp_path / "r"), "--set",
             f"data.corpus={bad}", f"data.root={tmp_path / 'data'}"])  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "metadata.csv:2: expected 'id|text|normalized_text'" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        synthesize([str(tmp_path / "nowhere"), "Hello."])
    assert exit_info.value.code == 1
    assert "nowhere does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_scoring_rescores_a_bad_cache_and_lists_an_empty_run_folder(tmp_path, data_root):
    results = tmp_path / "results"
    run(tiny("valle", results, data_root, steps=2))
    (results / "empty-run").mkdir()
    score([str(results), "--data-root", "data"])
    cache = results / "valle-tiny-seed0" / "scores.json"
    cache.write_text("{not json")
    table = score([str(results), "--data-root", "data"])
    assert json.loads(cache.read_text())["summary"]["utterances"] == 2
    assert "valle-tiny-seed0" in set(table["run"])
    assert "empty-run" in (results / "summary.md").read_text()


@pytest.mark.slow
def test_the_documented_ddp_command_runs_with_two_processes(tmp_path, data_root):
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "experiments/run.py",
            *tiny("flat", tmp_path, data_root, steps=2),
        ],  # fmt: skip
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("non-embedding params, 2 steps") == 1  # only rank 0 prints


def test_the_process_group_waits_hours_not_the_library_default(monkeypatch):
    """Rank 0 prepares and generates alone while the others wait: the collective timeout is
    6 hours unless PHONELM_COLLECTIVE_TIMEOUT says otherwise, and a bad value is refused."""
    from datetime import timedelta

    import phonelm.distributed as pd

    seen = {}
    monkeypatch.setattr(pd.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(pd.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    pd.init()
    assert seen["timeout"] == timedelta(hours=6) and seen["backend"] in ("gloo", "nccl")
    monkeypatch.setenv("PHONELM_COLLECTIVE_TIMEOUT", "90")
    pd.init()
    assert seen["timeout"] == timedelta(seconds=90)
    monkeypatch.setenv("PHONELM_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="PHONELM_COLLECTIVE_TIMEOUT='soon'"):
        pd.init()


def test_compare_runs_names_what_differs(tmp_path, data_root, capsys):
    """experiments/compare_runs.py: a copy of a run is the same; a changed generated code or
    logged loss is named (exit 1) unless its key is ignored; a missing run is exit 2."""
    import shutil

    from safetensors.torch import load_file, save_file

    run(tiny("valle", tmp_path, data_root))
    a = tmp_path / "valle-tiny-seed0"
    b = tmp_path / "copy"
    shutil.copytree(a, b)
    assert compare([str(a), str(b)]) == 0
    assert "bitwise the same" in capsys.readouterr().out
    codes = load_file(b / "samples" / "codes.safetensors")
    first = sorted(codes)[0]
    codes[first] = codes[first].clone()
    codes[first].view(-1)[0] += 1
    save_file(codes, b / "samples" / "codes.safetensors")
    rows = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    rows[0]["loss"] = rows[0].get("loss", 0.0) + 1.0
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert compare([str(a), str(b)]) == 1
    said = capsys.readouterr().out
    assert f"generated codes: samples/{first}" in said and "metrics.jsonl row 1: loss" in said
    assert "weights" not in said
    assert compare([str(a), str(b), "--ignore", "loss"]) == 1
    assert "loss" not in capsys.readouterr().out
    assert compare([str(a), str(tmp_path / "nowhere")]) == 2
