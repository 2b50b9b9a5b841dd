"""Reading run directories (written by experiments/run.py) without importing any backend;
the layout and the reading of each file belong to phonelm/run_dir.py."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from phonelm.codecs import Codec
from phonelm.config import DataConfig
from phonelm.corpus import EmbeddedSettings
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

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def condition(self) -> str:
        return self.samples.condition

    @property
    def name(self) -> str:
        """The directory's name; `<name>/<condition>` for a condition other than `tts`."""
        return self.dir.name if self.condition == TTS else f"{self.dir.name}/{self.condition}"

    def corpus(self) -> dict:
        """utterance id -> corpus item (text, wav path) of the run's corpus."""
        data = dict(self.config["data"])
        data["embedded"] = EmbeddedSettings(**data["embedded"])
        return {u.id: u for u in open_corpus(DataConfig(**data)).items}

    def codec(self) -> Codec:
        return self.dir.codec()


def find_runs(root: str | Path) -> list[Path]:
    """Candidate run directories under root: every folder in it except the scorer's own
    (`references`, `plots`); those that are not complete runs are reported by load_runs."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in {"references", "plots"})


def load_runs(path: str | Path) -> list[Run]:
    """One Run per generation condition that the directory has samples of."""
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
    return [_load_condition(run, run.samples(c), config, test_metrics, metrics) for c in conditions]


def _load_condition(run: RunDir, samples: Samples, config, test_metrics, metrics) -> Run:
    needed = [run.codec_config, samples.generation, samples.codes, samples.summary]
    missing = [str(p.relative_to(run.path)) for p in needed if not p.is_file()]
    if missing:
        raise RunError(f"{run.path}: incomplete run directory, missing {missing}")
    try:
        summary = run.read_json(samples.summary)
        generations = [json.loads(x) for x in samples.generation.read_text().splitlines()]
        codes = {k: v.long() for k, v in load_file(str(samples.codes)).items()}
    except (json.JSONDecodeError, OSError, RuntimeError, ValueError, RunDirError) as err:
        raise RunError(f"{run.path}: corrupt run directory ({err})") from err
    if {g["id"] for g in generations} != set(codes):
        raise RunError(
            f"{run.path}: {samples.codes.relative_to(run.path)} and "
            f"{samples.generation.relative_to(run.path)} disagree"
        )
    return Run(run, samples, config, test_metrics, summary, generations, codes, metrics)
