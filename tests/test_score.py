import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from eval.score import main as score
from experiments.provenance import machine
from experiments.run import main as run


@pytest.mark.slow
def test_scores_runs_incrementally_and_skips_broken_ones(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    for model, conditions in (("megabyte", '["tts","continuation"]'), ("valle", '["tts"]')):
        run(
            [
                "--model",
                model,
                "--preset",
                "tiny",
                "--out",
                str(results),
                "--steps",
                "2",
                "--set",
                f"data.root={tmp_path / 'data'}",
                "generate.limit=2",
                "generate.max_seconds=0.5",
                f"generate.conditions={conditions}",
                "generate.prompt_seconds=6",
            ]
        )
    broken = results / "flat-tiny-seed0"
    broken.mkdir()
    (broken / "config.json").write_text("{}")

    table = score([str(results), "--data-root", "data"])
    assert set(table["run"]) == {
        "megabyte-tiny-seed0",
        "megabyte-tiny-seed0/continuation",
        "valle-tiny-seed0",
        "ground truth",
        "codec resynthesis",
    }
    by_run = table.set_index("run")
    assert by_run.loc["megabyte-tiny-seed0/continuation", "condition"] == "continuation"
    assert by_run.loc["valle-tiny-seed0", "condition"] == "tts"
    # the continued part is scored against the test sentence itself, with its own scores file
    continued = json.loads(
        (results / "megabyte-tiny-seed0" / "scores-continuation.json").read_text()
    )
    prompts = [
        json.loads(x)
        for x in (results / "megabyte-tiny-seed0" / "samples-continuation" / "generation.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [u["id"] for u in continued["utterances"]] == [g["id"] for g in prompts]
    assert all(
        u["ref"] == g["normalized_text"]
        for u, g in zip(continued["utterances"], prompts, strict=True)
    )
    refs = table.set_index("run")[["wer", "cer"]]
    # bounds that a broken ASR (empty or hallucinated transcripts: WER and CER >= ~1) or a codec
    # decoding to noise would break (2 short sentences: one word is 10-20% WER)
    assert (refs.loc[["ground truth", "codec resynthesis"]] < 0.9).all().all(), refs
    assert (refs.loc[["ground truth", "codec resynthesis"], "cer"] < 0.5).all(), refs
    assert table["loop_rate"].between(0, 1).all()
    runs = table[table["preset"] == "tiny"]
    assert runs["wer"].notna().all() and (runs["wer"] >= 0).all()
    assert (runs["codes_seen"] > 0).all() and (runs["flops"] > 0).all()
    assert (runs["non_embedding_params_M"] < runs["params_M"]).all()
    assert runs["code_repetition_cb1"].between(0, 1).all()
    assert (runs["bits_per_code"] > 0).all() and (runs["params_M"] > 0).all()
    assert runs["text_reliance_bits"].notna().all() and runs["text_reliance_cb2"].notna().all()
    saved = pd.read_csv(results / "summary.csv")
    assert len(saved) == 5
    summary = (results / "summary.md").read_text()
    assert "| continuation |" in summary  # its own rows in the tables
    assert "Skipped run directories" in summary and "flat-tiny-seed0" in summary
    assert "tiny.en" in summary  # the ASR engine and model are recorded with the numbers
    page = (results / "report.html").read_text()
    assert page.count("<audio") >= 2 * 5 and page.count("<img") >= 4
    assert len(list((results / "plots").glob("*.png"))) >= 4

    check_in_browser(results / "report.html", audio=page.count("<audio"))

    # already scored with the same settings: not scored again
    scores = results / "megabyte-tiny-seed0" / "scores.json"
    before = scores.stat().st_mtime_ns
    score([str(results), "--data-root", "data"])
    assert scores.stat().st_mtime_ns == before
    assert json.loads(scores.read_text())["summary"]["utterances"] == 2
    score([str(results), "--data-root", "data", "--force"])
    assert scores.stat().st_mtime_ns != before
    assert json.loads(scores.read_text())["scored_on"]["cpu"] == machine()["cpu"]
    # on another machine (other arithmetic) the same audio gives other numbers: the folder's
    # scores are not replaced one by one (a folder half scored each way) unless asked
    forced = scores.stat().st_mtime_ns
    monkeypatch.setattr("eval.score.machine", lambda: {"cpu": "another CPU", "gpus": []})
    with pytest.raises(SystemExit) as refused:
        score([str(results), "--data-root", "data"])
    assert refused.value.code == 1
    said = capsys.readouterr().err
    assert "made another way" in said and "--rescore-others" in said
    assert f"on {machine()['cpu']} (" in said and "on another CPU (" in said
    assert scores.stat().st_mtime_ns == forced
    score([str(results), "--data-root", "data", "--rescore-others"])
    assert scores.stat().st_mtime_ns != forced
    assert json.loads(scores.read_text())["scored_on"]["cpu"] == "another CPU"
    again = scores.stat().st_mtime_ns  # scored here now: kept, and no refusal
    score([str(results), "--data-root", "data", "--rescore-others"])
    score([str(results), "--data-root", "data"])
    assert scores.stat().st_mtime_ns == again


def check_in_browser(page: Path, *, audio: int) -> None:
    """Open the report in headless Chromium: tables render, every image and clip loads."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run does)")
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        browser.set_script_timeout(60)
        browser.get(page.as_uri())
        assert browser.title == "PhoneLM report"
        assert browser.execute_script("return document.querySelectorAll('table').length") >= 3
        images = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
        )
        assert images and all(images)
        durations = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const clips = Array.from(document.querySelectorAll('audio'));
            Promise.all(clips.map(a => new Promise(resolve => {
                a.addEventListener('loadedmetadata', () => resolve(a.duration), {once: true});
                a.addEventListener('error', () => resolve(-1), {once: true});
                a.load();
            }))).then(done);
        """)
        assert len(durations) == audio and all(d > 0 for d in durations), durations
        # read at a glance, on a laptop and on a phone: the headline comes first, nothing is
        # wider than the window (wide tables scroll inside their own boxes), every sentence
        # shows its reference text above a grid of cards
        assert browser.execute_script("return document.querySelector('h2').textContent") == (
            "Headline"
        )
        for width in (1280, 390):
            browser.set_window_size(width, 900)
            inner, page_width = browser.execute_script(
                "return [window.innerWidth, document.documentElement.scrollWidth]"
            )
            assert page_width <= inner, (width, page_width, inner)
            if width == 1280:
                fits = browser.execute_script(
                    "const h = document.getElementById('headline');"
                    "return h.scrollWidth <= h.clientWidth"
                )
                assert fits, "the headline table needs no scrolling at 1280 px"
        refs = browser.execute_script("return document.querySelectorAll('.sentence .ref').length")
        cards = browser.execute_script("return document.querySelectorAll('.card').length")
        assert refs >= 1 and cards >= 3 * refs
    finally:
        browser.quit()


@pytest.mark.slow
def test_a_study_is_scored_per_folder_and_from_codes_when_wavs_are_gone(tmp_path):
    """Runs nested in folders of other settings are scored as separate groups (never averaged
    together); a run whose wavs were not kept (the study commits codes) is decoded again from
    its codes and scores as it did with them; the headline WER is the mean of per-utterance
    WERs."""
    study = tmp_path / "study"
    for folder, lr in (("a-k2", "1e-3"), ("b-k2", "3e-3")):
        run(
            ["--model", "delay", "--preset", "tiny", "--out", str(study / folder), "--steps", "2",
             "--set", f"data.root={tmp_path / 'data'}", "generate.limit=3",
             "generate.max_seconds=0.5", f"train.lr={lr}"]
        )  # fmt: skip
    first = score([str(study), "--data-root", "data"])
    gone = study / "b-k2" / "delay-tiny-seed0" / "samples"
    hyps = [u["hyp"] for u in json.loads((gone.parent / "scores.json").read_text())["utterances"]]
    for wav in gone.glob("*.wav"):
        wav.unlink()
    again = score([str(study), "--data-root", "data", "--force"])
    assert len(list(gone.glob("*.wav"))) == len(hyps) >= 2  # decoded again
    redone = json.loads((gone.parent / "scores.json").read_text())["utterances"]
    assert [u["hyp"] for u in redone] == hyps
    runs = again[again["preset"] == "tiny"].set_index("run")
    assert set(runs.index) == {"a-k2/delay-tiny-seed0", "b-k2/delay-tiny-seed0"}
    assert set(runs["group"]) == {"a-k2", "b-k2"}
    row = runs.loc["b-k2/delay-tiny-seed0"]
    assert row["wer_mean"] == pytest.approx(sum(u["wer"] for u in redone) / len(redone))
    assert row["wer_capped"] <= row["wer_mean"] + 1e-12 and row["mcd"] > 0
    assert list(first["wer_mean"]) == pytest.approx(list(again["wer_mean"]))
    summary = (study / "summary.md").read_text()
    assert "hierarchical-bootstrap" in summary and "a-k2" in summary and "b-k2" in summary
    refs = again[again["preset"].isna()].set_index("run")
    assert refs.loc["ground truth", "mcd"] == pytest.approx(0.0, abs=1e-3)
    assert refs.loc["codec resynthesis", "mcd"] > 0


def test_one_codec_checkpoint_at_two_paths_is_one_reference_group():
    """Reference rows are keyed by the codec's content: the same EnCodec checkpoint at two
    paths is scored once, another checkpoint apart."""
    from types import SimpleNamespace

    from eval.score import _reference_groups

    def run(path: str, sha: str):
        saved = {"name": "encodec", "bandwidth": 6.0, "weights": path,
                 "provenance": {"checkpoint_sha256": sha}}  # fmt: skip
        return SimpleNamespace(
            config={"data": {"corpus": "ljspeech", "root": "data"}},
            dir=SimpleNamespace(codec_config="codec.json", read_json=lambda _: dict(saved)),
            codec=lambda: SimpleNamespace(identity=lambda: f"checkpoint sha256:{sha[:16]}"),
            condition="tts",
            test_metrics={"eval_split": "test"},
        )

    same = [run("/a/encodec.th", "ab" * 32), run("/b/copy.th", "ab" * 32)]
    assert len(_reference_groups(same)) == 1
    assert len(_reference_groups([*same, run("/a/encodec.th", "cd" * 32)])) == 2


def test_a_run_with_one_training_log_line_has_no_measured_rate():
    # the step-1 line carries warm-up and is left out; with no other line the rate is blank
    import dataclasses
    import math

    from eval.report import headline_table
    from eval.runs import load_runs
    from eval.score import run_row

    study = Path(__file__).parents[1] / "results/study/confirm/pick-k4-1.8e14"
    (run,) = [r for r in load_runs(study / "delay-cpu-seed0") if r.condition == "tts"]
    scores = json.loads((run.path / "scores.json").read_text())
    rates = [m["train_codes_per_s"] for m in run.metrics if "train_codes_per_s" in m]
    full = run_row(run, scores)
    assert len(rates) > 2 and full["train_codes_per_s"] == pytest.approx(
        sum(rates[1:]) / (len(rates) - 1)
    )
    short = dataclasses.replace(run, metrics=[m for m in run.metrics if m.get("step") == 1])
    row = run_row(short, scores)
    assert math.isnan(row["train_codes_per_s"])
    table = pd.DataFrame([{**row, "entry": "delay", "preset": "cpu"}])
    assert headline_table(table, pd.DataFrame())["train codes/s"].tolist() == [""]


def test_processes_started_on_one_folder_score_each_run_once(tmp_path, monkeypatch):
    """The same command started twice on a folder shares its runs: a run the other process
    holds is left to it and read when it is free (from its cache: not forced again), and the
    others are scored here."""
    from types import SimpleNamespace

    from eval import score as scoring
    from phonelm.run_dir import RunDir

    runs = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        runs.append(SimpleNamespace(name=name, path=tmp_path / name, dir=RunDir(tmp_path / name)))
    calls = []
    monkeypatch.setattr(
        scoring,
        "score_run",
        lambda run, asr, key, force, second: calls.append((run.name, force)) or {"run": run.name},
    )
    other = runs[1].dir.lock()
    other.__enter__()  # another process is scoring b ...
    waits = []

    def wait(seconds):  # ... and is done with it while this one waits
        if not waits:
            other.__exit__(None, None, None)
        waits.append(seconds)

    monkeypatch.setattr(scoring.time, "sleep", wait)
    done, scores = scoring._score_runs(runs, None, None, "key", True, problems := [])
    assert calls == [("a", True), ("c", True), ("b", False)]
    assert [run.name for run in done] == ["a", "b", "c"] and set(scores) == {"a", "b", "c"}
    assert len(waits) == 1 and not problems
