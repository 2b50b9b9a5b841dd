"""Reading run directories (written by experiments/run.py) without importing any backend;
the layout and the reading of each file belong to phonelm/run_dir.py."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from phonelm.audio import save_audio
from phonelm.codecs import Codec
from phonelm.config import DataConfig, from_dict
from phonelm.dataset import open_corpus
from phonelm.run_dir import TTS, RunDir, RunDirError, Samples


class RunError(ValueError):
    """A run directory that is incomplete or corrupt; the message says what is wrong."""


@dataclass
class Run:
    """One generation condition of one run directory (a run with `tts` and `continuation`
    samples is two of these, sharing everything but the samples)."""

    dir: RunDir
    samples: Samples
    config: dict
    test_metrics: dict
    generation_summary: dict
    generations: list[dict]
    codes: dict[str, torch.Tensor]  # id -> [K, F]
    metrics: list[dict]  # metrics.jsonl
    group: str = "."  # the folder of runs it belongs to, relative to the scored root
    device: str = "cpu"  # where its codec decodes

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def condition(self) -> str:
        return self.samples.condition

    @property
    def name(self) -> str:
        """`<group>/<directory>` (the directory alone for a run directly under the scored
        root), then `/<condition>` for a condition other than `tts`."""
        name = self.dir.name if self.group == "." else f"{self.group}/{self.dir.name}"
        return name if self.condition == TTS else f"{name}/{self.condition}"

    def wav(self, uid: str) -> Path:
        """The generated audio of `uid`, decoded again from the run's codes with the run's codec
        when the file is missing (the study commits codes, not wavs)."""
        path = self.samples.wav(uid)
        if not path.is_file():
            codes = self.codes[uid]
            codec = self.codec()
            audio = codec.decode(codes) if codes.shape[1] else torch.zeros(0)
            save_audio(path, audio, codec.sample_rate)
        return path

    def corpus(self) -> dict:
        """utterance id -> corpus item (text, wav path) of the run's corpus."""
        data = from_dict(DataConfig, self.config["data"], where=f"{self.path}/config.json data",
                         strict=False)  # fmt: skip
        return {u.id: u for u in open_corpus(data).items}

    def codec(self) -> Codec:
        if "_codec" not in self.__dict__:
            self.__dict__["_codec"] = self.dir.codec(self.device)
        return self.__dict__["_codec"]


RUN_FILES = ("config.json", "env.json", "test_metrics.json", "checkpoints", "samples")
SCORER_FOLDERS = {"references", "plots"}


def find_runs(root: str | Path) -> list[Path]:
    """Candidate run directories under root, at any depth (a study nests them in folders of
    one K, budget and variant): a folder holding any file of a run is one, and is not searched
    further; any other folder directly under root is one too, so that load_runs reports it;
    the scorer's own folders (`references`, `plots`) are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []

    def walk(folder: Path, depth: int) -> None:
        for p in sorted(folder.iterdir()):
            if not p.is_dir() or p.name in SCORER_FOLDERS:
                continue
            if any((p / f).exists() for f in RUN_FILES):
                found.append(p)
            elif any(c.is_dir() for c in p.iterdir()):
                walk(p, depth + 1)
            elif depth == 0:
                found.append(p)

    walk(root, 0)
    return found


def group_of(path: Path, root: Path) -> str:
    """The folder of a run directory relative to the scored root ('.' directly under it)."""
    return str(Path(path).parent.relative_to(root)) or "."


def load_runs(
    path: str | Path, root: str | Path | None = None, *, device: str = "cpu"
) -> list[Run]:
    """One Run per generation condition that the directory has samples of (`root`: the scored
    folder, which names the run's group; `device`: where its codec decodes)."""
    run = RunDir(path)
    conditions = run.conditions()
    if not conditions:
        raise RunError(f"{run.path}: incomplete run directory, no samples of any condition")
    try:
        config = run.read_json(run.config)
        test_metrics = run.read_json(run.test_metrics)
        metrics = run.read_metrics()
    except RunDirError as err:
        raise RunError(f"{run.path}: incomplete or corrupt run directory ({err})") from err
    group = group_of(run.path, Path(root)) if root is not None else "."
    return [
        _load_condition(run, run.samples(c), config, test_metrics, metrics, group, device)
        for c in conditions
    ]


def _load_condition(
    run: RunDir, samples: Samples, config, test_metrics, metrics, group, device
) -> Run:
    needed = [run.codec_config, samples.generation, samples.codes, samples.summary]
    missing = [str(p.relative_to(run.path)) for p in needed if not p.is_file()]
    if missing:
        raise RunError(f"{run.path}: incomplete run directory, missing {missing}")
    try:
        summary = run.read_json(samples.summary)
        generations = [json.loads(x) for x in samples.generation.read_text().splitlines()]
        codes = {k: v.long() for k, v in load_file(str(samples.codes)).items()}
    except (json.JSONDecodeError, OSError, RuntimeError, ValueError, RunDirError,
            SafetensorError) as err:  # fmt: skip
        raise RunError(f"{run.path}: corrupt run directory ({err})") from err
    if {g["id"] for g in generations} != set(codes):
        raise RunError(
            f"{run.path}: {samples.codes.relative_to(run.path)} and "
            f"{samples.generation.relative_to(run.path)} disagree"
        )
    return Run(
        run, samples, config, test_metrics, summary, generations, codes, metrics, group, device
    )
