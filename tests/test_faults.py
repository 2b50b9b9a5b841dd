"""Fault cases, round two (issue 25): a bad setting fails before anything is written, a
non-finite loss stops a run, one process per run directory, and a kill between the two
checkpoint writes never changes a result."""

import json
from pathlib import Path

import pytest

import experiments.train as train_module
from experiments.run import main as run
from phonelm.run_dir import RunDir


@pytest.fixture(scope="module")
def data_root(tiny_data_root) -> Path:
    return tiny_data_root


class Killed(BaseException):
    """A kill, in process: nothing the run catches (a real SIGKILL ends it the same way)."""


def tiny(out: Path, data_root: Path, *extra: str, model: str = "delay") -> list[str]:
    return ["--model", model, "--preset", "tiny", "--out", str(out), "--steps", "6", "--set",
            f"data.root={data_root}", "generate.limit=2", "generate.max_seconds=1.0",
            "train.eval_every=3", *extra]  # fmt: skip


BAD = [  # (extra arguments, what the one line must say)
    (["train.lr=Infinity"], "train.lr=inf: expected a finite number"),
    (["train.lr=NaN"], "train.lr=nan: expected a finite number"),
    (["data.max_seconds=1e999"], "data.max_seconds=inf: expected a finite number"),
    (["generate.max_seconds=Infinity"], "generate.max_seconds=inf"),
    (["generate.frames_per_phoneme=Infinity"], "generate.frames_per_phoneme=inf"),
    (["generate.split=bogus"], "generate.split='bogus': expected one of"),
    (["model.codebook_size=16"], "model.codebook_size=16 differs from the codec's 1024"),
    (["model.n_phonemes=5"], "model.n_phonemes=5 differs from the phoneme vocabulary"),
    (["data.max_phonemes=1"], "the train split is empty after the length filters"),
    (["data.max_phonemes=1", "model.positions=aligned"], "leave no training utterance"),
    (["train.seed=-1"], "train.seed=-1: expected an integer seed"),
    (["train.seed=1"], "train.seed=1 differs from the run's seed 0: set every seed with --seed 1"),
    (["generate.sampling.seed=4294967296"], "generate.sampling.seed=4294967296"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_a_bad_setting_is_one_line_and_writes_nothing(extra, message, tmp_path, data_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(tiny(tmp_path / "out", data_root, *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_bad_seed_flag_is_refused_and_the_corrected_command_works(tmp_path, data_root, capsys):
    out = tmp_path / "out"
    for seed in ("-1", "4294967296"):
        with pytest.raises(SystemExit) as exit_info:
            run([*tiny(out, data_root), "--seed", seed])
        assert exit_info.value.code == 2 and "expected an integer seed" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        run(tiny(out, data_root, "model.codebook_size=16"))
    [result] = run(tiny(out, data_root))  # the corrected command, in the same --out
    assert result["steps"] == 6 and (out / "delay-tiny-seed0" / "test_metrics.json").is_file()


def test_a_non_finite_loss_stops_at_once_naming_the_step(tmp_path, data_root, capsys, monkeypatch):
    real_step = train_module.Trainer._train_step

    def nan_at_step_5(self, batches):
        out = real_step(self, batches)
        return {**out, "loss": float("nan")} if self.step == 5 else out

    monkeypatch.setattr(train_module.Trainer, "_train_step", nan_at_step_5)
    with pytest.raises(SystemExit) as exit_info:
        run(tiny(tmp_path, data_root))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    run_dir = tmp_path / "delay-tiny-seed0"
    assert (
        "training loss is nan at step 5" in err and str(run_dir / "checkpoints" / "last.pt") in err
    )
    assert RunDir(run_dir).load_checkpoint("last")["step"] == 3  # nothing written after it
    assert not (run_dir / "test_metrics.json").exists()


def test_a_second_process_on_a_run_directory_is_refused(tmp_path, data_root, capsys):
    run_dir = RunDir(tmp_path / "delay-tiny-seed0")
    with run_dir.lock():
        with pytest.raises(SystemExit) as exit_info:
            run(tiny(tmp_path, data_root))
    assert exit_info.value.code == 1
    assert "is in use by another process" in capsys.readouterr().err
    [result] = run(tiny(tmp_path, data_root))  # released: the run goes ahead
    assert result["steps"] == 6
    assert not run_dir.path.joinpath("config.json").read_text() == ""


def test_out_naming_a_file_is_one_line(tmp_path, data_root, capsys):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        run(tiny(tmp_path / "file", data_root))
    assert exit_info.value.code == 1
    assert "cannot write the run directory" in capsys.readouterr().err


@pytest.mark.parametrize("when", ["best", "last"])
def test_a_kill_between_the_checkpoint_writes_leaves_the_result_unchanged(
    when, tmp_path, data_root, monkeypatch
):
    """Killed while writing the final best.pt, or the final last.pt after it, then the same
    command: the same best step and bitwise the same held-out bits as an uninterrupted run."""
    [straight] = run(tiny(tmp_path / "a", data_root))
    real_save = RunDir.save_checkpoint

    def killed(self, name, state):
        if name == when and state["step"] == 6:
            raise Killed  # as a SIGKILL would, mid-write: nothing replaced
        return real_save(self, name, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", killed)
    with pytest.raises(Killed):
        run(tiny(tmp_path / "b", data_root))
    monkeypatch.setattr(RunDir, "save_checkpoint", real_save)
    [again] = run(tiny(tmp_path / "b", data_root))
    assert again["best_step"] == straight["best_step"]
    assert again["test"]["bits_per_code"] == straight["test"]["bits_per_code"]
    metrics = json.loads((tmp_path / "b" / "delay-tiny-seed0" / "test_metrics.json").read_text())
    assert metrics["best_step"] == straight["best_step"]


def test_an_offline_ljspeech_download_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    import socket
    import urllib.error

    import torch.hub

    from phonelm.corpus import CorpusError, download_ljspeech

    waited = []

    def offline(*args, **kwargs):
        waited.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(CorpusError, match="pass --corpus /path/to/LJSpeech-1.1"):
        download_ljspeech(tmp_path)
    assert waited == [60.0] and socket.getdefaulttimeout() == before  # a stall ends, not hangs


def test_corpus_flag_names_the_corpus_the_user_prepared(tmp_path):
    import argparse

    from experiments.run_config import run_config

    corpus = str(tmp_path / "LJSpeech-1.1")
    flags = dict(steps=None, budget_flops=None, max_minutes=None)
    args = argparse.Namespace(preset="paper", seed=0, corpus=corpus, set=[], **flags)
    assert run_config(args, "flat").data.corpus == corpus


def test_asr_weights_that_cannot_be_had_are_one_line_in_score(tmp_path, monkeypatch, capsys):
    import whisper

    from eval.score import main as score

    def offline(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -2]\n Name or service not known>")

    monkeypatch.setattr(whisper, "load_model", offline)
    (tmp_path / "r" / "x").mkdir(parents=True)
    (tmp_path / "r" / "x" / "config.json").write_text("{}")
    monkeypatch.setattr("eval.score.load_runs", lambda *a, **k: [object()])
    with pytest.raises(SystemExit) as exit_info:
        score([str(tmp_path / "r"), "--asr", "large-v3"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Whisper 'large-v3' weights are not available" in err[0]


@pytest.mark.slow
def test_scoring_names_a_damaged_file_skips_that_run_and_scores_the_rest(tmp_path, data_root):
    """Each kind of damage in one of two runs: the other is still scored, the damaged one is
    named in summary.md."""
    from eval.score import main as score

    results = tmp_path / "results"
    for model in ("delay", "flat"):
        run(tiny(results, data_root, "generate.limit=1", model=model))
    flat = results / "flat-tiny-seed0"
    damage = {
        "samples/codes.safetensors": b"",  # empty
        "codec.safetensors": b"garbage, not a safetensors file",
        "config.json": b"[1, 2, 3]",  # valid JSON, not an object
    }
    for name, content in damage.items():
        saved = (flat / name).read_bytes()
        (flat / name).write_bytes(content)
        table = score([str(results), "--data-root", str(data_root), "--force"])
        assert "delay-tiny-seed0" in set(table["run"]) and "flat-tiny-seed0" not in set(
            table["run"]
        )
        summary = (results / "summary.md").read_text()
        assert "Skipped run directories" in summary and "flat-tiny-seed0" in summary, name
        (flat / name).write_bytes(saved)


def test_a_checkpoint_resumes_only_the_settings_it_was_trained_with(tmp_path, data_root, capsys):
    """config.json deleted, then the command with another learning rate: refused (the
    checkpoint's own config decides), not continued under a config.json that lies."""
    with pytest.raises(Killed):
        real = train_module.Trainer._train_step

        def stop_at_4(self, batches):
            if self.step == 4:
                raise Killed
            return real(self, batches)

        train_module.Trainer._train_step = stop_at_4
        try:
            run(tiny(tmp_path, data_root))
        finally:
            train_module.Trainer._train_step = real
    (tmp_path / "delay-tiny-seed0" / "config.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        run(tiny(tmp_path, data_root, "train.lr=0.5"))
    assert exit_info.value.code == 2
    assert "was trained with other train settings (lr=" in capsys.readouterr().err
    [result] = run(tiny(tmp_path, data_root))  # the command it was made with resumes
    assert result["steps"] == 6


def test_configs_from_a_newer_version_name_their_unknown_keys(tmp_path, capsys):
    from models.base import ModelConfig
    from phonelm.config import ConfigFileError, DataConfig, from_dict

    with pytest.raises(
        ConfigFileError, match=r"model: keys this version does not know: \['wings'\]"
    ):
        from_dict(ModelConfig, {"dim": 8, "wings": 2}, where="model")
    data = from_dict(DataConfig, {"root": "x", "embedded": {"n_sentences": 5, "moons": 1},
                                  "future": 1}, where="data", strict=False)  # fmt: skip
    assert data.root == "x" and data.embedded.n_sentences == 5
    assert "future" in capsys.readouterr().err
    with pytest.raises(ConfigFileError, match="expected a JSON object"):
        from_dict(ModelConfig, [1, 2], where="model")


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_generation_stops_with_a_message_and_its_exit_code(
    signum, code, tmp_path, data_root
):
    """SIGTERM / SIGINT during generation: one message, exit 128 + signal, and the same command
    then finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    # one sentence a batch: after the first wav, the other batches are still to come; each
    # batch takes seconds (an untrained model speaks to max_seconds), so that the signal lands
    # in one even on a loaded machine
    generate = ("generate.limit=none", "generate.batch_size=1", "generate.max_seconds=4.0")
    args = [sys.executable, str(root / "experiments" / "run.py"),
            *tiny(tmp_path, data_root, *generate)]  # fmt: skip

    # SIGINT at its default in the child: a shell's background job (`cmd &`) starts with it
    # ignored, and Python then installs no KeyboardInterrupt handler (so the run exited 0)
    def default_sigint():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=default_sigint)  # fmt: skip
    samples = tmp_path / "delay-tiny-seed0" / "samples"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(samples.glob("*.wav")):
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert f"{signum}: stopped" in err and "Traceback" not in err
    [result] = run(tiny(tmp_path, data_root, *generate))
    assert result["generation"]["tts"]["utterances"] >= 2


def test_a_garbage_line_inside_metrics_is_a_bad_file_exit_1(tmp_path, data_root, capsys):
    run(tiny(tmp_path, data_root))
    metrics = tmp_path / "delay-tiny-seed0" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage{", *lines[1:]]) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        run(tiny(tmp_path, data_root, "generate.limit=1"))  # generation settings may change
    assert exit_info.value.code == 1
    assert "metrics.jsonl:2 is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_scoring_stops_with_a_message_and_its_exit_code(
    signum, code, tmp_path, data_root, capsys, monkeypatch
):
    """A real SIGTERM (or Ctrl-C) while a run is being scored: one message, exit 128 + signal,
    no traceback; the same command then scores everything."""
    import signal

    import eval.score as score_module

    run(tiny(tmp_path, data_root, "generate.limit=1"))
    real = score_module.score_run

    def interrupted(*args, **kwargs):
        if signum == "SIGINT":
            raise KeyboardInterrupt  # how Python delivers Ctrl-C
        # to this thread: os.kill may hand it to a torch worker thread, and Python then runs
        # the handler only later, somewhere else
        signal.raise_signal(getattr(signal, signum))
        return real(*args, **kwargs)

    monkeypatch.setattr(score_module, "score_run", interrupted)
    argv = [str(tmp_path), "--data-root", str(data_root)]
    with pytest.raises(SystemExit) as exit_info:
        score_module.main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert f"{signum}: stopped" in err and "Traceback" not in err
    monkeypatch.setattr(score_module, "score_run", real)
    table = score_module.main(argv)
    assert "delay-tiny-seed0" in set(table["run"])


def test_shape_settings_that_do_not_fit_together_fail_before_the_run_directory(
    tmp_path, data_root, capsys
):
    """model.dim_head=64 over the tiny preset's local_dim 32: every range check passes, and the
    backend cannot run; one line, exit 2, nothing written, then the corrected command runs."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run(tiny(out, data_root, "model.dim=64", "model.dim_head=64", model="megabyte"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit together" in err[0], err
    assert not out.exists()
    [result] = run(tiny(out, data_root, "model.dim=64", model="megabyte"))
    assert result["steps"] == 6


def test_a_generation_stopped_midway_goes_on_from_its_finished_batches(
    tmp_path, data_root, monkeypatch
):
    """Killed after two of the split's batches: the same command generates only the rest,
    and the samples are bitwise those of an uninterrupted run."""
    import experiments.generation as generation
    from models.base import Backend

    args = ("generate.split=train", "generate.limit=4", "generate.batch_size=1")
    [straight] = run(tiny(tmp_path / "a", data_root, *args))
    batches = straight["generation"]["tts"]["utterances"]
    assert batches >= 3
    real_save = generation.save_audio
    saved = []

    def killed_at_the_third(path, wav, sr):
        if len(saved) == 2:
            raise Killed
        saved.append(path)
        return real_save(path, wav, sr)

    monkeypatch.setattr(generation, "save_audio", killed_at_the_third)
    with pytest.raises(Killed):
        run(tiny(tmp_path / "b", data_root, *args))
    monkeypatch.setattr(generation, "save_audio", real_save)
    calls = []
    real_generate = Backend.generate

    def counted(self, *a, **k):
        calls.append(1)
        return real_generate(self, *a, **k)

    monkeypatch.setattr(Backend, "generate", counted)
    run(tiny(tmp_path / "b", data_root, *args))
    assert len(calls) == batches - 2  # the two finished batches were not generated again
    a, b = (tmp_path / x / "delay-tiny-seed0" / "samples" for x in "ab")
    assert (a / "codes.safetensors").read_bytes() == (b / "codes.safetensors").read_bytes()
    ids = [[json.loads(line)["id"] for line in (d / "generation.jsonl").open()] for d in (a, b)]
    assert ids[0] == ids[1] and not (b / "partial").exists()


def test_a_run_cut_by_the_wall_clock_cap_says_it_is_not_compute_matched(
    tmp_path, data_root, capsys
):
    """`train.max_minutes` is a safety cap: on a loaded machine it can end a FLOPs-budgeted run
    early, which then must not pass for a compute-matched one."""
    [result] = run(
        tiny(tmp_path, data_root, "train.max_minutes=0.00001") + ["--budget-flops", "1e15"]
    )
    assert result["stopped_by"] == "max_minutes" and result["steps"] < 6
    err = capsys.readouterr().err
    assert "warning: train.max_minutes=1e-05 ended training at step" in err
    assert "of its 1e+15 FLOPs: this run is not compute-matched" in err
