"""Reading run directories (written by experiments/run.py) without importing any backend."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from phonelm.codecs import Codec, build_codec
from phonelm.config import CodecConfig, DataConfig
from phonelm.corpus import EmbeddedSettings
from phonelm.dataset import open_corpus

REQUIRED = ["config.json", "test_metrics.json", "codec.json", "samples/generation.jsonl",
            "samples/codes.safetensors"]  # fmt: skip


class RunError(ValueError):
    """A run directory that is incomplete or corrupt; the message says what is wrong."""


@dataclass
class Run:
    path: Path
    config: dict
    test_metrics: dict
    generations: list[dict]
    codes: dict[str, torch.Tensor]  # id -> [K, F]
    metrics: list[dict]  # metrics.jsonl

    @property
    def name(self) -> str:
        return self.path.name

    def corpus(self) -> dict:
        """utterance id -> corpus item (text, wav path) of the run's corpus."""
        data = dict(self.config["data"])
        data["embedded"] = EmbeddedSettings(**data["embedded"])
        return {u.id: u for u in open_corpus(DataConfig(**data)).items}

    def codec(self) -> Codec:
        codec = build_codec(CodecConfig(**json.loads((self.path / "codec.json").read_text())))
        if codec.needs_fit:
            codec.load(self.path / "codec.safetensors")
        return codec


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under root: folders that hold a config.json."""
    return sorted(p.parent for p in Path(root).glob("*/config.json"))


def load_run(path: str | Path) -> Run:
    path = Path(path)
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise RunError(f"{path}: incomplete run directory, missing {missing}")
    try:
        config = json.loads((path / "config.json").read_text())
        test_metrics = json.loads((path / "test_metrics.json").read_text())
        generations = [
            json.loads(x) for x in (path / "samples" / "generation.jsonl").read_text().splitlines()
        ]
        codes = {
            k: v.long() for k, v in load_file(str(path / "samples" / "codes.safetensors")).items()
        }
        metrics_path = path / "metrics.jsonl"
        metrics = (
            [json.loads(x) for x in metrics_path.read_text().splitlines()]
            if metrics_path.is_file()
            else []
        )
    except (json.JSONDecodeError, OSError, RuntimeError, ValueError) as err:
        raise RunError(f"{path}: corrupt run directory ({err})") from err
    if {g["id"] for g in generations} != set(codes):
        raise RunError(f"{path}: samples/codes.safetensors and generation.jsonl disagree")
    return Run(path, config, test_metrics, generations, codes, metrics)
