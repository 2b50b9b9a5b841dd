"""The study is published from committed files: tables, findings, the README's section."""

import json
import shutil
from pathlib import Path

import pytest

from eval.score import main as score
from eval.study import BEGIN, END, StudyError, asr_agreement, collect, render, replace_section
from eval.study import main as publish
from eval.study_plot import panels, wer_by_k
from experiments.run import main as run
from experiments.sweep import load_study

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_shows_what_the_committed_study_files_give():
    """The README's results are generated, never typed: its study section is exactly what
    eval/study.py renders from results/study/ (rerun it with --readme after scoring)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    figure = "results/study/wer_by_k.png"
    assert section.strip() == render(ROOT / "results" / "study", False, figure).strip()
    assert (ROOT / figure).read_bytes().startswith(b"\x89PNG")


def test_every_study_file_in_the_repo_loads():
    for path in sorted((ROOT / "experiments" / "studies").glob("*.toml")):
        jobs = load_study(path, "/tmp/unused")
        assert jobs and len({j.run_dir for j in jobs}) == len(jobs), path


def test_a_section_is_replaced_between_its_markers_only():
    text = f"head\n{BEGIN}\nold\n{END}\ntail\n"
    assert replace_section(text, "new\n") == f"head\n{BEGIN}\nnew\n{END}\ntail\n"
    with pytest.raises(StudyError, match="section"):
        replace_section("no markers", "new\n")


@pytest.mark.slow
def test_a_scored_study_is_published_with_its_tables_and_findings(tmp_path, capsys):
    study = tmp_path / "study" / "demo"
    for model in ("delay", "valle"):
        run(
            ["--model", model, "--preset", "tiny", "--out", str(study / "plain-k2-1e9"),
             "--steps", "2", "--set", f"data.root={tmp_path / 'data'}", "generate.limit=3",
             "generate.max_seconds=0.5", "generate.split=valid"]
        )  # fmt: skip
    run(  # a confirmatory group: scored on `test`
        ["--model", "delay", "--preset", "tiny", "--out", str(study / "pick-k2-1e9"),
         "--steps", "2", "--set", f"data.root={tmp_path / 'data'}", "generate.limit=3",
         "generate.max_seconds=0.5"]
    )  # fmt: skip
    score([str(study), "--data-root", "data", "--second-asr", "base"])
    readme = tmp_path / "README.md"
    readme.write_text(f"# demo\n{BEGIN}\n(typed by hand)\n{END}\nafter\n")
    publish([str(tmp_path / "study"), "--readme", str(readme)])
    text = readme.read_text()
    assert "(typed by hand)" not in text and text.endswith(f"{END}\nafter\n")
    brief = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert brief.strip() == render(tmp_path / "study", False, "study/wer_by_k.png").strip()
    assert (tmp_path / "study" / "wer_by_k.png").read_bytes().startswith(b"\x89PNG")
    assert "](wer_by_k.png)" in (tmp_path / "study" / "RESULTS.md").read_text()
    # the README gets the answer (the confirmatory tables) and the picks; RESULTS.md every
    # table, the screens' too
    assert "`demo/pick-k2-1e9`: K = 2" in brief and "sentences of `test`" in brief
    assert "Picks of `demo`" in brief and "`demo/plain-k2-1e9`: K = 2" not in brief
    section = render(tmp_path / "study", figure="wer_by_k.png")
    assert (tmp_path / "study" / "RESULTS.md").read_text().endswith(section.lstrip("\n"))
    assert "`demo/plain-k2-1e9`: K = 2" in section and "sentences of `valid`" in section
    for name in ("| delay |", "| valle |", "*ground truth*", "*codec resynthesis*"):
        assert name in section
    assert "delay - valle:" in section  # the pair's finding, with its interval
    assert "| code dropout |" in section.split("| delay |")[0]  # each row names its recipe
    scores = json.loads((study / "plain-k2-1e9" / "delay-tiny-seed0" / "scores.json").read_text())
    assert scores["asr"]["model"] == "tiny.en" and scores["second_asr"]["model"] == "base"
    assert all("wer_second" in u for u in scores["utterances"])
    assert "Kendall tau" in section
    assert "Picks of `demo`" in section and "| delay |" in section.split("Picks of")[1]
    # a run scored on another machine than the rest of its study is refused; another study
    # may be scored elsewhere
    scored = study / "plain-k2-1e9" / "valle-tiny-seed0" / "scores.json"
    kept = json.loads(scored.read_text())
    scored.write_text(json.dumps({**kept, "scored_on": {**kept["scored_on"], "cpu": "other"}}))
    with pytest.raises(SystemExit) as refused:
        publish([str(tmp_path / "study")])
    assert refused.value.code == 1 and "on different machines" in capsys.readouterr().err
    # unless its study file names its scoring machine: then a score made elsewhere counts as
    # not scored yet, and the rest is published
    studies = tmp_path / "studies"
    studies.mkdir()
    on = ", ".join(f"{k} = {json.dumps(v)}" for k, v in kept["scored_on"].items() if k != "gpus")
    (studies / "demo.toml").write_text(
        f'name = "demo"\nmodels = ["delay", "valle"]\ncodebooks = [2]\nseeds = [0]\n'
        f"budget_flops = [1e9]\nscored_on = {{{on}}}\n"
    )
    published = set(collect(tmp_path / "study", studies)[0]["run"])
    assert "demo/plain-k2-1e9/delay-tiny-seed0" in published
    assert "demo/plain-k2-1e9/valle-tiny-seed0" not in published
    other = tmp_path / "study" / "other" / "plain-k2-1e9"
    other.mkdir(parents=True)
    shutil.move(study / "plain-k2-1e9" / "valle-tiny-seed0", other / "valle-tiny-seed0")
    assert "other/plain-k2-1e9/valle-tiny-seed0" in set(collect(tmp_path / "study")[0]["run"])
    shutil.move(other / "valle-tiny-seed0", study / "plain-k2-1e9" / "valle-tiny-seed0")
    shutil.rmtree(tmp_path / "study" / "other")
    scored.write_text(json.dumps(kept))
    # runs of one group trained on other fitted codecs (another machine's fit) are refused
    manifest = study / "plain-k2-1e9" / "valle-tiny-seed0" / "data_manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "codec_identity": "x"}))
    with pytest.raises(SystemExit) as refused:
        publish([str(tmp_path / "study")])
    assert refused.value.code == 1 and "different fitted codecs" in capsys.readouterr().err
    assert (tmp_path / "study" / "RESULTS.md").read_text().endswith(section.lstrip("\n"))

    # a run that ended short of its FLOPs budget (the wall-clock cap) is in no table
    cut = study / "plain-k2-1e9" / "valle-tiny-seed0"
    config = json.loads((cut / "config.json").read_text())
    config["train"]["budget_flops"] = 1e12
    (cut / "config.json").write_text(json.dumps(config))
    metrics = json.loads((cut / "test_metrics.json").read_text())
    (cut / "test_metrics.json").write_text(json.dumps({**metrics, "stopped_by": "max_minutes"}))
    section = render(tmp_path / "study")
    assert "| valle |" not in section and "| delay |" in section
    assert "`demo/plain-k2-1e9/valle-tiny-seed0`: stopped by max_minutes at step 2" in section


def test_only_a_run_that_spent_its_flops_budget_is_compute_matched():
    from eval.study import short_of_budget

    spent = {"stopped_by": "flops", "steps": 9, "flops": 9.01e13}
    assert short_of_budget({"train": {"budget_flops": 9e13}}, spent) is None
    assert short_of_budget({"train": {"budget_flops": None}}, {"stopped_by": "steps"}) is None
    cut = {"stopped_by": "max_minutes", "steps": 950, "flops": 8.44e13}
    assert short_of_budget({"train": {"budget_flops": 9e13}}, cut) == (
        "stopped by max_minutes at step 950, 8.44e+13 of its 9e+13 FLOPs: not compute-matched"
    )


def test_a_screen_pick_is_the_lowest_wer_and_a_tie_goes_to_bits_per_code():
    """The rule fixed before the screens were read (docs/study.md)."""
    import numpy as np
    import pandas as pd

    from eval.study import pick

    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.0, size=40)
    ids = [f"u{i}" for i in range(40)]

    def utterances(**wers):
        return pd.DataFrame(
            [
                {"variant": v, "id": i, "wer": w}
                for v, ws in wers.items()
                for i, w in zip(ids, ws, strict=True)
            ]  # fmt: skip
        )

    def screened(utts, bits):
        means = utts.groupby("variant")["wer"].mean()
        return pd.DataFrame(
            [{"variant": v, "wer_mean": means[v], "bits_per_code": b} for v, b in bits.items()]
        )

    clear = utterances(a=base - 0.3, b=base, c=base + 0.1)  # `a` better on every sentence
    assert pick(screened(clear, {"a": 5.0, "b": 4.0, "c": 3.0}), clear) == ("a", "lowest WER")
    noise = rng.normal(0, 0.05, size=40)  # `a` and `b` differ by noise: a tie, `c` is worse
    tie = utterances(a=base, b=base + noise - noise.mean() + 0.001, c=base + 0.3)
    chosen, why = pick(screened(tie, {"a": 5.0, "b": 4.0, "c": 3.0}), tie)
    assert chosen == "b" and why == "WER ties `a`, `b`: lowest bits/code"


def test_each_row_names_its_code_dropout():
    """Per-backend picks differ, so the tables say which dropout each row trained with (runs
    saved before the unit existed dropped codes one by one)."""
    from eval.score import code_dropout

    assert code_dropout({"code_dropout": 0.3, "code_dropout_unit": "frame"}) == "0.3 per frame"
    assert code_dropout({"code_dropout": 0.5}) == "0.5 per code"
    assert code_dropout({"code_dropout": 0.0, "code_dropout_unit": "frame"}) == "none"


def test_the_two_asrs_rank_agreement_needs_two_backends():
    import pandas as pd

    one = pd.DataFrame({"model": ["delay"] * 2, "wer": [0.5, 0.7], "wer_second": [0.4, 0.6]})
    (line,) = asr_agreement(one)
    assert "delay 0.500" in line and "needs two backends" in line and "nan" not in line
    two = pd.concat([one, one.assign(model="valle", wer=[0.9, 1.0], wer_second=[0.8, 0.9])])
    (line,) = asr_agreement(two)
    assert "Kendall tau = 1.00 over 2 backends" in line


def test_the_plot_has_a_point_per_backend_and_k_and_leaves_the_screens_out(tmp_path):
    import pandas as pd

    runs = pd.DataFrame(
        [{"group": f"{study}/{v}-k{k}-1e9", "condition": "tts", "k": k, "budget_flops": 1e9,
          "split": split, "model": m}
         for study, v, split in (("confirm", "pick", "test"), ("screens", "code", "valid"))
         for k in (2, 4) for m in ("delay", "valle")]
    )  # fmt: skip
    intervals = runs[["group", "condition", "model"]].assign(wer_mean=0.5, ci_low=0.4, ci_high=0.7)
    points = panels(runs, intervals)
    assert sorted(points["study"].unique()) == ["confirm"] and len(points) == 4
    assert sorted(zip(points["model"], points["k"], strict=True)) == [
        ("delay", 2), ("delay", 4), ("valle", 2), ("valle", 4)]  # fmt: skip
    refs = pd.DataFrame([{"model": "ground truth", "scored_in": "confirm", "split": "test",
                          "k": 4, "wer_mean": 0.1}])  # fmt: skip
    path = wer_by_k(runs, intervals, refs, tmp_path / "plot.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    steps_only = runs.assign(budget_flops=None)  # runs capped by steps (no FLOPs budget)
    assert wer_by_k(steps_only, intervals, refs, tmp_path / "steps.png").exists()
    assert wer_by_k(runs[runs["split"] == "valid"], intervals, refs, tmp_path / "no.png") is None
    assert not (tmp_path / "no.png").exists()


def test_the_progress_counts_the_grid_s_runs_finished_and_scored(tmp_path):
    """Each study file's grid against its folder: finished runs (test_metrics.json) and those
    scored in every condition they generated."""
    from eval.study import progress

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "demo.toml").write_text(
        'name = "demo"\nmodels = ["delay", "flat", "valle"]\ncodebooks = [2]\nseeds = [0]\n'
        "budget_flops = [1e9]\n"
    )
    (studies / "elsewhere.toml").write_text(  # no folder under the root: not listed
        'name = "elsewhere"\nmodels = ["delay"]\ncodebooks = [2]\nseeds = [0]\n'
        "budget_flops = [1e9]\n"
    )
    root = tmp_path / "study"
    group = root / "demo" / "default-k2-1e9"
    for model, files in {
        "delay": ["test_metrics.json", "samples/generation.jsonl", "scores.json",
                  "samples-novel/generation.jsonl", "scores-novel.json"],
        "flat": ["test_metrics.json", "samples/generation.jsonl", "scores.json",
                 "samples-novel/generation.jsonl"],  # novel not scored yet
        "valle": ["samples/generation.jsonl"],  # still running
    }.items():  # fmt: skip
        for file in files:
            (group / f"{model}-cpu-seed0" / file).parent.mkdir(parents=True, exist_ok=True)
            (group / f"{model}-cpu-seed0" / file).write_text("{}")
    assert progress(root, studies) == [
        "- `demo` (`demo.toml`): 2 of 3 runs finished, 1 of them scored"
    ]


def test_a_study_scored_on_a_named_machine_counts_only_the_scores_made_there(tmp_path):
    """A study file may name the machine its scores are made on (`scored_on`): scores made
    elsewhere, or that record no machine, are not counted as scored."""
    from eval.study import made_on, progress, scoring_machines
    from experiments.sweep import StudyError as StudyFileError

    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "demo.toml").write_text(
        'name = "demo"\nmodels = ["delay", "flat", "valle"]\ncodebooks = [2]\nseeds = [0]\n'
        'budget_flops = [1e9]\nscored_on = {cpu = "AMD EPYC", vector_unit = "AVX2"}\n'
    )
    amd = {"cpu": "AMD EPYC", "vector_unit": "AVX2", "threads": 1, "device": "cpu"}
    group = tmp_path / "study" / "demo" / "default-k2-1e9"
    for model, scored_on in {
        "delay": amd,
        "flat": {**amd, "cpu": "Intel Xeon"},
        "valle": None,
    }.items():
        run = group / f"{model}-cpu-seed0"
        (run / "samples").mkdir(parents=True)
        (run / "samples" / "generation.jsonl").write_text("{}")
        (run / "test_metrics.json").write_text("{}")
        (run / "scores.json").write_text(json.dumps({"scored_on": scored_on} if scored_on else {}))
    assert progress(tmp_path / "study", studies) == [
        "- `demo` (`demo.toml`): 3 of 3 runs finished, 1 of them scored on AMD EPYC (AVX2) "
        "(2 more scored elsewhere, to be scored again there)"
    ]
    assert scoring_machines(studies) == {"demo": {"cpu": "AMD EPYC", "vector_unit": "AVX2"}}
    assert made_on({"scored_on": amd}, None) and made_on({}, None)
    assert not made_on(
        {"scored_on": {**amd, "vector_unit": "AVX512"}}, scoring_machines(studies)["demo"]
    )
    (studies / "bad.toml").write_text('name = "bad"\nmodels = ["delay"]\nscored_on = "AMD"\n')
    with pytest.raises(StudyFileError, match="bad.toml: 'scored_on' holds 'AMD'; expected a table"):
        scoring_machines(studies)


def test_every_finished_run_is_in_the_bits_table_scored_or_not_and_pairs_need_three_seeds(
    tmp_path,
):
    """The ASR-free table reads each run's test_metrics.json only: a finished run counts before
    it is scored, a run in flight or short of its budget does not, and a pair of backends is
    tested (paired over seeds, Holm) only once it shares 3 seeds."""
    from eval.study import bits_section, finished_runs

    group = tmp_path / "study" / "confirm" / "pick-k4-1e9"
    bits = {"delay": [4.30, 4.37, 4.31], "valle": [4.46, 4.51, 4.49], "flat": [5.43, 5.41]}
    for model, values in bits.items():
        for seed, value in enumerate(values):
            run_dir = group / f"{model}-cpu-seed{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "config.json").write_text(
                json.dumps({"model": {"name": model}, "seed": seed, "train": {"budget_flops": 1e9}})
            )
            (run_dir / "test_metrics.json").write_text(json.dumps(
                {"eval_split": "test", "steps": 100, "stopped_by": "flops", "test": {
                    "bits_per_code": value, "bits_per_code_by_codebook": [1.0, 5.0],
                    "text_reliance_bits": 2.0}}))  # fmt: skip
    (group / "megabyte-cpu-seed0").mkdir()  # in flight: config only
    (group / "megabyte-cpu-seed0" / "config.json").write_text("{}")
    finished = finished_runs(tmp_path / "study")
    assert sorted(finished["model"].unique()) == ["delay", "flat", "valle"] and len(finished) == 8
    text = "\n".join(bits_section(tmp_path / "study", screens=False))
    assert "| `confirm/pick-k4-1e9` | `test` | delay | 3 | **4.327** [" in text
    assert "| valle | 3 |" in text and "4.460 / 4.510 / 4.490" in text
    assert "not tested yet (shared seeds; 3 needed): delay - flat (2), flat - valle (2)" in text
    # valle - delay per seed: +0.16, +0.14, +0.18, far from 0 against its spread
    assert "delay - valle: **delay < valle** (difference -0.160 [" in text
    assert "paired over 3 seeds, Holm p = " in text
    cut = json.loads((group / "valle-cpu-seed2" / "test_metrics.json").read_text())
    (group / "valle-cpu-seed2" / "test_metrics.json").write_text(
        json.dumps({**cut, "stopped_by": "max_minutes"}))  # fmt: skip
    text = "\n".join(bits_section(tmp_path / "study", screens=False))
    assert "3 needed): delay - flat (2), delay - valle (2), flat - valle (2)" in text
