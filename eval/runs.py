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
from phonelm.run_dir import RunDir, RunDirError


class RunError(ValueError):
    """A run directory that is incomplete or corrupt; the message says what is wrong."""


@dataclass
class Run:
    dir: RunDir
    config: dict
    test_metrics: dict
    generations: list[dict]
    codes: dict[str, torch.Tensor]  # id -> [K, F]
    metrics: list[dict]  # metrics.jsonl

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def name(self) -> str:
        return self.dir.name

    def corpus(self) -> dict:
        """utterance id -> corpus item (text, wav path) of the run's corpus."""
        data = dict(self.config["data"])
        data["embedded"] = EmbeddedSettings(**data["embedded"])
        return {u.id: u for u in open_corpus(DataConfig(**data)).items}

    def codec(self) -> Codec:
        return self.dir.codec()


def find_runs(root: str | Path) -> list[Path]:
    """Candidate run directories under root: every folder in it except the scorer's own
    (`references`, `plots`); those that are not complete runs are reported by load_run."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in {"references", "plots"})


def load_run(path: str | Path) -> Run:
    run = RunDir(path)
    needed = [run.config, run.test_metrics, run.codec_config, run.generation, run.codes]
    missing = [str(p.relative_to(run.path)) for p in needed if not p.is_file()]
    if missing:
        raise RunError(f"{run.path}: incomplete run directory, missing {missing}")
    try:
        config = run.read_json(run.config)
        test_metrics = run.read_json(run.test_metrics)
        generations = [json.loads(x) for x in run.generation.read_text().splitlines()]
        codes = {k: v.long() for k, v in load_file(str(run.codes)).items()}
        metrics = run.read_metrics()
    except (json.JSONDecodeError, OSError, RuntimeError, ValueError, RunDirError) as err:
        raise RunError(f"{run.path}: corrupt run directory ({err})") from err
    if {g["id"] for g in generations} != set(codes):
        raise RunError(f"{run.path}: samples/codes.safetensors and generation.jsonl disagree")
    return Run(run, config, test_metrics, generations, codes, metrics)
