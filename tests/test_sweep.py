"""experiments/sweep.py: a declared grid, one command per run, resumable."""

import shlex

import pytest

from experiments.sweep import StudyError, budget_tag, load_study
from experiments.sweep import main as sweep

STUDY = """
name = "demo"
preset = "tiny"
models = ["delay", "valle"]
codebooks = [2]
seeds = [0, 1]
budget_flops = [1e9]
set = ["generate.limit=1", "generate.max_seconds=0.5"]
[variants]
"a" = ["train.lr=1e-3"]
"b" = ["train.lr=3e-3"]
[per_model]
valle = ["model.code_dropout=0.3"]
"""


def write(tmp_path, text: str = STUDY):
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_the_grid_is_every_combination_with_one_folder_per_setting(tmp_path):
    jobs = load_study(write(tmp_path), tmp_path / "out")
    assert len(jobs) == 2 * 2 * 2  # variants x seeds x models
    assert {j.out.name for j in jobs} == {"a-k2-1e9", "b-k2-1e9"}
    valle = next(j for j in jobs if j.model == "valle" and j.variant == "b" and j.seed == 1)
    command = valle.command()
    assert command[1:2] == ["experiments/run.py"] and "--seed=1" in command
    assert command[-4:] == ["generate.limit=1", "generate.max_seconds=0.5",
                            "model.code_dropout=0.3", "train.lr=3e-3"]  # fmt: skip
    delay = next(j for j in jobs if j.model == "delay")
    assert "model.code_dropout=0.3" not in delay.command()
    assert valle.command(torchrun=4)[:3] == ["torchrun", "--standalone", "--nproc_per_node=4"]
    assert budget_tag(1.8e14) == "1.8e14" and budget_tag(9e13) == "9e13"


@pytest.mark.parametrize(
    "change, message",
    [
        (("seeds = [0, 1]", "seeds = []"), "'seeds' must be a non-empty list"),
        (("codebooks = [2]", 'codebooks = ["two"]'), "expected int values"),
        (('name = "demo"', 'name = "a/b"'), "'name' must be a folder name"),
        (('valle = ["model', 'flat = ["model'), "which 'models' does not list"),
        (("preset = ", "typo = 1\npreset = "), "unknown keys ['typo']"),
        (('"a" = ["train.lr=1e-3"]', '"a" = ["train.lr"]'), "'section.field=value'"),
    ],
)
def test_a_bad_study_file_names_the_key(tmp_path, change, message):
    with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_study(write(tmp_path, STUDY.replace(*change)), tmp_path / "out")


def test_jobs_prints_only_the_runs_left_and_a_finished_run_is_skipped(tmp_path, capsys):
    path = write(tmp_path)
    out = tmp_path / "out"
    assert sweep([str(path), "--out", str(out), "--jobs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all(shlex.split(x)[1] == "experiments/run.py" for x in lines)
    done = load_study(path, out)[0]
    done.run_dir.mkdir(parents=True)
    (done.run_dir / "test_metrics.json").write_text("{}")
    sweep([str(path), "--out", str(out), "--jobs"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 7
    sweep([str(path), "--out", str(out), "--jobs", "--all"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 8


@pytest.mark.slow
def test_a_sweep_runs_its_grid_and_a_second_call_runs_nothing(tmp_path, monkeypatch):
    import experiments.sweep as sweep_module

    study = STUDY.replace('models = ["delay", "valle"]', 'models = ["delay"]')
    study = study.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "[per_model]\nvalle", "[per_model]\ndelay"
    )
    study = study.replace('set = ["generate', f'set = ["data.root={tmp_path / "data"}", "generate')
    path, out = write(tmp_path, study), tmp_path / "out"
    assert sweep([str(path), "--out", str(out)]) == 0
    jobs = load_study(path, out)
    assert all(j.done for j in jobs) and len(jobs) == 2
    calls = []
    monkeypatch.setattr(sweep_module, "_run", lambda job, *rest: calls.append(job) or 0)
    assert sweep([str(path), "--out", str(out)]) == 0 and calls == []


STUB_RUN = """
import argparse, json, os, pathlib
ap = argparse.ArgumentParser()
for flag in ("--model", "--preset", "--seed", "--budget-flops", "--out"):
    ap.add_argument(flag)
ap.add_argument("--set", nargs="*")
args = ap.parse_args()
run = pathlib.Path(args.out) / f"{args.model}-{args.preset}-seed{args.seed}"
run.mkdir(parents=True)
seen = {"cwd": os.getcwd(), "path": os.environ.get("PYTHONPATH"), "set": args.set}
(run / "test_metrics.json").write_text(json.dumps(seen))
"""


def test_code_runs_every_job_from_another_checkout(tmp_path, capsys):
    """--code: each run is that checkout's experiments/run.py, run from it with its packages
    first on the import path (how a study runs a frozen worktree while main moves on)."""
    import json

    frozen = tmp_path / "frozen"
    (frozen / "experiments").mkdir(parents=True)
    (frozen / "experiments" / "run.py").write_text(STUB_RUN)
    path, out = write(tmp_path), tmp_path / "out"
    assert sweep([str(path), "--out", str(out), "--code", str(frozen), "--jobs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all(x.startswith(f"cd {frozen} && PYTHONPATH=. ") for x in lines)
    assert sweep([str(path), "--out", str(out), "--code", str(frozen), "--parallel", "2"]) == 0
    jobs = load_study(path, out)
    assert all(j.done for j in jobs)
    seen = json.loads((jobs[1].run_dir / "test_metrics.json").read_text())
    assert seen["cwd"] == str(frozen) and seen["path"] == str(frozen)
    assert "model.code_dropout=0.3" in seen["set"]  # valle's own override reached it
    with pytest.raises(SystemExit) as stop:
        sweep([str(path), "--code", str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "no experiments/run.py" in capsys.readouterr().err


def _git(cwd, *args):
    import subprocess

    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_a_study_frozen_at_a_commit_runs_only_from_a_clean_checkout_of_it(tmp_path, capsys):
    """`commit = "..."`: the sweep lists and runs the jobs only from that commit's clean
    checkout, so a study never runs code written after its freeze (the default --code is this
    checkout, at another commit)."""
    frozen = tmp_path / "frozen"
    (frozen / "experiments").mkdir(parents=True)
    (frozen / "experiments" / "run.py").write_text(STUB_RUN)
    _git(frozen, "init", "-q")
    _git(frozen, "add", ".")
    _git(frozen, "commit", "-qm", "freeze")
    head = _git(frozen, "rev-parse", "HEAD")
    path, out = write(tmp_path, f'commit = "{head[:9]}"\n' + STUDY), tmp_path / "out"
    assert sweep([str(path), "--out", str(out), "--code", str(frozen), "--jobs"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 8
    (frozen / "untracked.txt").write_text("a run's data link is untracked and allowed")
    assert sweep([str(path), "--out", str(out), "--code", str(frozen), "--jobs"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        sweep([str(path), "--out", str(out)])  # this checkout, not the frozen one
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"the study runs at {head[:9]}" in err and "is at" in err
    (frozen / "experiments" / "run.py").write_text(STUB_RUN + "\n# edited\n")
    with pytest.raises(SystemExit) as stop:
        sweep([str(path), "--out", str(out), "--code", str(frozen)])
    assert stop.value.code == 2 and "tracked files changed" in capsys.readouterr().err
    assert not out.exists()  # nothing ran
    with pytest.raises(StudyError, match="expected a git commit hash"):
        load_study(write(tmp_path, 'commit = "main"\n' + STUDY))
