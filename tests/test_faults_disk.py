"""Kills and full or read-only disks (issue 25): a SIGKILL at any point of a checkpoint write, or
a full disk, followed by the same command, gives bitwise the uninterrupted result; what a
killed process left half-written is removed; a full disk during generation and a read-only
results folder during scoring are one line, exit 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.run import main as run
from phonelm.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent
RUN = "delay-tiny-seed0"


@pytest.fixture(scope="module")
def data_root(tiny_data_root) -> Path:
    return tiny_data_root


def tiny(out: Path, data_root: Path, *extra: str) -> list[str]:
    return ["--model", "delay", "--preset", "tiny", "--out", str(out), "--steps", "6", "--set",
            f"data.root={data_root}", "generate.limit=2", "generate.max_seconds=1.0",
            "train.eval_every=3", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    """The uninterrupted run: (its result, its generated codes' bytes)."""
    out = tmp_path_factory.mktemp("straight")
    [result] = run(tiny(out, data_root))
    return result, (out / RUN / "samples" / "codes.safetensors").read_bytes()


# The SIGKILL test's runs are each a fresh process with this environment: the pytest process's
# arithmetic may differ from a new one's in the last bit (seen on the CI machine, not here), and
# "the same command again" is a new process anyway.
THREADS = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=THREADS, timeout=600)


def _cli_run(out: Path, data_root: Path) -> dict:
    """experiments/run.py in a new process -> the run's result (its test_metrics.json)."""
    done = _cli(sys.executable, str(ROOT / "experiments" / "run.py"), *tiny(out, data_root))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / RUN / "test_metrics.json").read_text())


@pytest.fixture(scope="module")
def straight_cli(tmp_path_factory, data_root):
    """The uninterrupted run as a command of its own: (its result, its codes' bytes)."""
    out = tmp_path_factory.mktemp("straight_cli")
    result = _cli_run(out, data_root)
    return result, (out / RUN / "samples" / "codes.safetensors").read_bytes()


def _same_as(straight, out: Path, result: dict) -> None:
    expected, codes = straight
    assert result["best_step"] == expected["best_step"]
    assert result["test"]["bits_per_code"] == expected["test"]["bits_per_code"]
    assert (out / RUN / "samples" / "codes.safetensors").read_bytes() == codes


# A real SIGKILL inside the final step's checkpoint writes: torch.save writes `cut` of the bytes
# to the temp file and the process kills itself; or it is killed between the two renames (the
# old checkpoint moved to .prev, the verified .new not yet in place).
KILLER = """
import io, json, os, pathlib, signal, sys, torch
name, cut, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
real_save, real_replace = torch.save, pathlib.Path.replace

def save(obj, f, *a, **k):
    at = pathlib.Path(f).name.startswith(f".{name}.new.pt.") and obj["step"] == 6
    if cut != "renamed" and at:
        buffer = io.BytesIO()
        real_save(obj, buffer, *a, **k)
        data = buffer.getvalue()
        pathlib.Path(f).write_bytes(data[: int(len(data) * float(cut))])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)

def replace(self, target):
    if cut == "renamed" and self.name == f"{name}.new.pt":
        if torch.load(self, weights_only=True)["step"] == 6:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(self, target)

torch.save, pathlib.Path.replace = save, replace
sys.argv = ["run.py", *args]
from experiments.run import main
main(args)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, cut",  # a fraction of the temp file's bytes written, or between the renames
    [("best", "0.5"), ("best", "renamed"), ("last", "0.0"), ("last", "0.999"), ("last", "renamed")],
)
def test_a_sigkill_at_any_point_of_a_checkpoint_write_changes_no_result(
    name, cut, tmp_path, data_root, straight_cli
):
    proc = _cli(sys.executable, "-c", KILLER, name, cut, json.dumps(tiny(tmp_path, data_root)))
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed where it was meant to be
    assert not (tmp_path / RUN / "test_metrics.json").exists()
    again = _cli_run(tmp_path, data_root)  # the same command again
    _same_as(straight_cli, tmp_path, again)
    left = [p.name for p in (tmp_path / RUN).rglob("*") if p.name.endswith((".tmp", ".new.pt"))]
    assert left == []  # what the kill left half-written is gone


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    _tmpfs(disk, "64m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; -> the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 4096, 1):  # unbuffered: every byte that fits is written
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("name", ["best", "last"])
def test_a_full_disk_at_the_final_checkpoint_then_space_freed_gives_the_same_result(
    name, small_disk, data_root, straight, capsys, monkeypatch
):
    """On a real (tmpfs) disk that fills up just before the final best.pt or last.pt: one line
    naming the file, exit 1; space freed, the same command: bitwise the uninterrupted result."""
    real = RunDir.save_checkpoint
    filled = []

    def fill_first(self, which, state):
        if which == name and state["step"] == 6 and not filled:
            filled.append(_fill(small_disk))
        return real(self, which, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", fill_first)
    with pytest.raises(SystemExit) as exit_info:
        run(tiny(small_disk, data_root))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "no space left on the device" in err[-1] and f"{name}.new.pt" in err[-1], err[-3:]
    filled[0].unlink()
    monkeypatch.setattr(RunDir, "save_checkpoint", real)
    [again] = run(tiny(small_disk, data_root))
    _same_as(straight, small_disk, again)


@pytest.mark.slow
def test_a_full_disk_during_generation_is_one_line_and_the_rerun_finishes(
    small_disk, data_root, straight, capsys, monkeypatch
):
    import phonelm.audio as audio

    real = audio.save_audio
    filled = []

    def fill_first(path, wav, sr):
        if not filled:
            filled.append(_fill(small_disk))
        return real(path, wav, sr)

    monkeypatch.setattr("experiments.generation.save_audio", fill_first)
    with pytest.raises(SystemExit) as exit_info:
        run(tiny(small_disk, data_root))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "cannot write" in err[-1] and ".wav" in err[-1] and "Traceback" not in "".join(err)
    filled[0].unlink()
    monkeypatch.setattr("experiments.generation.save_audio", real)
    [again] = run(tiny(small_disk, data_root))
    _same_as(straight, small_disk, again)


@pytest.mark.slow
def test_scoring_a_read_only_results_folder_is_one_line(small_disk, data_root, capsys):
    from eval.score import main as score

    run(tiny(small_disk, data_root, "generate.limit=1"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(SystemExit) as exit_info:
        score([str(small_disk), "--data-root", str(data_root)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Read-only file system" in err[-1] and "cannot write the scores" in err[-1], err[-3:]


def test_a_run_directory_tidies_what_a_killed_process_left(tmp_path, data_root):
    """Temp files of atomic writes and an unverified `.new` checkpoint (left by a kill, which
    skips every cleanup) are removed when the next process takes the run directory."""
    run_dir = RunDir(tmp_path / RUN)
    stale = [
        run_dir.path / ".config.json.k1ll3d.tmp",
        run_dir.path / "checkpoints" / ".last.new.pt.abc123.tmp",
        run_dir.path / "checkpoints" / "best.new.pt",
        run_dir.path / "samples" / ".EMB00-00001.wav.xyz.tmp",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    with run_dir.lock():
        assert [p for p in stale if p.exists()] == []
