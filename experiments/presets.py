"""Run configs and the presets: `tiny` (tests, seconds), `cpu` (the CPU benchmark), `paper` (GPU).

Backends are matched in parameter count (±5%) within a preset: each backend's depth is set so
that its total, embeddings and heads included, lands on the preset's budget (printed at start;
tests/test_presets.py checks it).
"""

from dataclasses import dataclass, field, replace

from models.base import ModelConfig
from phonelm.config import CodecConfig, DataConfig
from phonelm.corpus import EmbeddedSettings
from phonelm.sampling import Sampling
from phonelm.train import TrainConfig


@dataclass
class GenerateConfig:
    split: str = "test"
    limit: int | None = None  # first N utterances of the split (None: all)
    batch_size: int = 8
    max_seconds: float = 20.0  # max-length guard, also capped by frames_per_phoneme
    frames_per_phoneme: float = 20.0  # ~4x what speech needs: past it, the output is a loop
    sampling: Sampling = field(default_factory=lambda: Sampling(top_k=50, top_p=0.95))


@dataclass
class RunConfig:
    preset: str = "cpu"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


# Per preset: the shared model shape, then each backend's own depths (matched parameter counts).
_MODELS = {
    "tiny": (
        ModelConfig(dim=32, heads=1, dim_head=32, ff_mult=2, local_dim=32, local_depth=1),
        {"megabyte": {"depth": 2}, "valle": {"depth": 1, "nar_depth": 1}, "flat": {"depth": 9}},
    ),
    "cpu": (
        ModelConfig(dim=192, dim_head=48, ff_mult=4, local_dim=128, local_depth=2),
        {"megabyte": {"depth": 4}, "valle": {"depth": 2, "nar_depth": 2}, "flat": {"depth": 5}},
    ),
    "paper": (
        ModelConfig(dim=768, dim_head=64, ff_mult=4, local_dim=384, local_depth=4, dropout=0.1),
        {"megabyte": {"depth": 11}, "valle": {"depth": 6, "nar_depth": 6}, "flat": {"depth": 12}},
    ),
}


def preset(name: str, model: str, seed: int = 0) -> RunConfig:
    if name not in _MODELS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(_MODELS)}")
    base, per_model = _MODELS[name]
    if model not in per_model:
        raise ValueError(f"unknown model {model!r}; valid models: {sorted(per_model)}")
    model_cfg = replace(base, name=model, **per_model[model])
    if name == "tiny":
        return RunConfig(
            preset=name,
            seed=seed,
            data=DataConfig(embedded=EmbeddedSettings(n_sentences=48), fit_seconds=60),
            codec=CodecConfig(name="mel-rvq", n_codebooks=2),
            model=replace(model_cfg, n_codebooks=2),
            train=TrainConfig(
                steps=20,
                batch_size=4,
                micro_batch_size=4,
                warmup_steps=5,
                eval_every=10,
                log_every=5,
                max_seconds=6.0,
                seed=seed,
            ),
            generate=GenerateConfig(limit=3, batch_size=3, max_seconds=4.0),
        )
    if name == "cpu":
        return RunConfig(
            preset=name,
            seed=seed,
            data=DataConfig(),
            codec=CodecConfig(name="mel-rvq", n_codebooks=4),
            model=replace(model_cfg, n_codebooks=4),
            train=TrainConfig(
                steps=3000,
                batch_size=8,
                micro_batch_size=8,
                lr=2e-3,
                warmup_steps=30,
                eval_every=100,
                max_minutes=15.0,
                seed=seed,
            ),
            generate=GenerateConfig(limit=40),
        )
    return RunConfig(
        preset=name,
        seed=seed,
        data=DataConfig(corpus="ljspeech", max_seconds=15.0),
        codec=CodecConfig(name="encodec", weights="pretrained", bandwidth=6.0),
        model=replace(model_cfg, n_codebooks=8),
        train=TrainConfig(
            steps=100_000,
            batch_size=64,
            micro_batch_size=16,
            lr=3e-4,
            warmup_steps=2000,
            eval_every=2000,
            seed=seed,
        ),
        generate=GenerateConfig(limit=None),
    )
