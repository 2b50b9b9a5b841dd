"""Run configs and the presets: `tiny` (tests, seconds), `cpu` (the CPU benchmark), `paper` (GPU).

Within a preset, backends are matched:
- in non-embedding parameters (±5%): everything but the code/phoneme embeddings and the output
  heads over codes, whose size follows the vocabulary, not the model. A preset states the
  shared shape and the reference backend's (megabyte's) depth; every other backend's depth
  settings (`Backend.depth_settings`) are derived to land nearest to its count
  (`matched_depths`), so adding a backend adds no line here; totals are reported beside them
  (tests/test_presets.py checks both). VALL-E's split comes out AR deeper than NAR (cpu: 3 + 2
  layers): its AR alone must learn the phoneme -> frame alignment and when to stop, while the
  NAR refines frames whose timing is set.
- in training compute: `cpu` ends every backend at the same `train.budget_flops` (model FLOPs
  counted from the real batches, models/flops.py), 21-26 minutes of training for each backend
  on 2 CPU cores at K = 2 (docs/recipe.md); `paper` at 3e18 FLOPs; `max_minutes` is only a
  safety cap.
- in data order (same seed, same sampler) and in decoding (one `Sampling` policy).
K is stated once per preset, on the codec; the model takes the codec's K.

The recipe of `cpu` and `paper`: aligned rotary positions (models/positions.py; the stride is
measured on the training split, docs/recipe.md) and each backend's input-code dropout as the
study's screens picked it (`STUDY_CODE_DROPOUT`; models/blocks.py `drop_codes`). `cpu` runs at
K = 2 (the mel-rvq codec's first two levels). The old `paper` setting is one override away:
`--set model.positions=sequence model.code_dropout=0`.
"""

import copy
import functools
import itertools
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import torch

from experiments.overrides import ConfigError
from experiments.train import PRECISIONS, TrainConfig
from models.base import ModelConfig
from models.blocks import CODE_DROPOUT_UNITS
from models.registry import BACKENDS, build_backend
from phonelm.codecs import CODECS, CodecError, codec_class
from phonelm.codecs.encodec import BANDWIDTHS
from phonelm.config import CodecConfig, DataConfig, project_path
from phonelm.corpus import SPLITS, EmbeddedSettings
from phonelm.dataset import CodeDataset
from phonelm.espeak import has_voice
from phonelm.run_dir import CONDITIONS, TTS
from phonelm.sampling import GroupSampling, Sampling
from phonelm.text import VOCAB


@dataclass
class GenerateConfig:
    split: str = "test"
    limit: int | None = None  # first N utterances of the split (None: all)
    batch_size: int = 8
    max_seconds: float = 20.0  # max-length guard, also capped by frames_per_phoneme
    frames_per_phoneme: float = 20.0  # ~4x what speech needs: past it, the output is a loop
    sampling: Sampling = field(default_factory=Sampling)  # the one policy, every backend
    # `tts`: text alone; `continuation`: text after an acoustic prompt (VALL-E's zero-shot
    # setting). The prompt of a test utterance is the next utterance of the split, whole, that
    # is at most prompt_seconds long: its text is known, so the continued part says exactly the
    # test sentence and is scored alone (experiments/generation.py `continuation_prompts`).
    conditions: list[str] = field(default_factory=lambda: [TTS])
    prompt_seconds: float = 3.0


@dataclass
class RunConfig:
    preset: str = "cpu"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


# Training compute of every backend at the `cpu` preset: 21-26 minutes of training each on 2 CPU
# cores at K = 2 (115-140 GFLOP/s, docs/recipe.md). The budget at which the shared recipe was
# confirmed (docs/recipe.md: 4 backends x 2 seeds).
CPU_BUDGET_FLOPS = 1.8e14

# Training compute of every backend at the `paper` preset: 100k steps of the cheapest orderings
# (delay, valle: ~3e13 FLOPs a 64-utterance step at LJSpeech's mean 6.6 s, K = 8, counted by
# models/flops.py); flat's step costs ~10x (its sequence is K times longer), so it gets ~10k
# steps and megabyte ~72k. Before, the preset matched 100k steps, i.e. 10x the FLOPs for flat.
PAPER_BUDGET_FLOPS = 3e18

# Each backend's input-code dropout (p, unit), picked by the study's screens on `valid` (K = 4,
# 9e13 FLOPs, one seed, the same three trials for every backend; the rule in docs/study.md, the
# table "Picks of `screens`" in results/study/RESULTS.md, which tests/test_presets.py checks this
# against). A backend the screens have not picked for gets the shared 0.5 per code.
STUDY_CODE_DROPOUT = {
    "delay": (0.5, "frame"),
    "flat": (0.3, "frame"),
    "megabyte": (0.5, "code"),
    "valle": (0.3, "frame"),
}
SHARED_CODE_DROPOUT = (0.5, "code")


def study_recipe(model: str) -> dict:
    p, unit = STUDY_CODE_DROPOUT.get(model, SHARED_CODE_DROPOUT)
    return {"positions": "aligned", "code_dropout": p, "code_dropout_unit": unit}


# Per preset: the shared model shape with the reference backend's depth; every other backend's
# depths are derived from it (matched_depths), so a new backend needs no line here.
REFERENCE = "megabyte"
_MODELS = {
    "tiny": ModelConfig(dim=32, dim_head=32, ff_mult=2, local_dim=32, local_depth=1, depth=4),
    "cpu": ModelConfig(
        dim=192,
        dim_head=48,
        ff_mult=4,
        local_dim=128,
        local_depth=2,
        depth=4,
    ),
    "paper": ModelConfig(
        dim=768, dim_head=64, ff_mult=4, local_dim=384, local_depth=4, depth=11, dropout=0.1
    ),
}
# K is stated once per preset, on its codec
_CODECS = {
    "tiny": CodecConfig(name="mel-rvq", n_codebooks=2),
    # the first two levels of the mel-rvq fit: half the frame's codes, so ~2.5x the steps per
    # FLOP for flat; the recipe was confirmed at K = 2 (docs/recipe.md)
    "cpu": CodecConfig(name="mel-rvq", n_codebooks=2),
    "paper": CodecConfig(name="encodec", weights="pretrained", bandwidth=6.0),
}


def _codec_k(codec: CodecConfig) -> int:
    return BANDWIDTHS[codec.bandwidth] if codec.bandwidth is not None else codec.n_codebooks


def _non_embedding(cfg: ModelConfig) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return build_backend(cfg).num_params(non_embedding=True)


@functools.cache
def matched_depths(preset_name: str, model: str) -> dict[str, int]:
    """The depth settings (`Backend.depth_settings`) of `model` whose non-embedding parameter
    count is nearest to the reference backend's at preset `preset_name`; among equals, the
    most even split, then the deeper first setting (VALL-E: AR 3 + NAR 2, not 2 + 3 or 4 + 1)."""
    k = _codec_k(_CODECS[preset_name])
    base = replace(_MODELS[preset_name], n_codebooks=k, phoneme_stride=1.0)
    target = _non_embedding(replace(base, name=REFERENCE))
    settings = BACKENDS[model].depth_settings
    if model == REFERENCE:
        return {key: getattr(base, key) for key in settings}

    def count(values) -> int:
        return _non_embedding(replace(base, name=model, **dict(zip(settings, values, strict=True))))

    # each layer adds a fixed count, so the count is linear in the depths: measure each slope
    ones = (1,) * len(settings)
    floor = count(ones)
    slopes = [count(ones[:i] + (2,) + ones[i + 1 :]) - floor for i in range(len(settings))]
    candidates = itertools.product(range(1, 3 * base.depth + 1), repeat=len(settings))

    def rank(values):
        predicted = floor + sum(s * (v - 1) for s, v in zip(slopes, values, strict=True))
        return abs(predicted - target), max(values) - min(values), [-v for v in values]

    best = min(candidates, key=rank)
    return dict(zip(settings, best, strict=True))


def _positive(v) -> bool:
    return v > 0


def _at_least_one(v) -> bool:
    return v >= 1


# (setting, test, what is expected); None always passes (unset optional settings)
_CHECKS = [
    *((f"model.{f}", _at_least_one, "an integer >= 1") for f in
      ("dim", "depth", "dim_head", "ff_mult", "local_dim", "local_depth", "codebook_size")),
    ("model.nar_depth", lambda v: v >= 0, "an integer >= 0 (0: the same as model.depth)"),
    ("model.positions", lambda v: v in ("sequence", "aligned"), "'sequence' or 'aligned'"),
    ("model.prefix", lambda v: v in ("causal", "bidirectional"), "'causal' or 'bidirectional'"),
    ("model.phoneme_stride", _positive, "frames per phoneme > 0, or none to measure it"),
    ("model.dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("model.code_dropout", lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    ("model.code_dropout_unit", lambda v: v in CODE_DROPOUT_UNITS, f"one of {CODE_DROPOUT_UNITS}"),
    *((f"train.{f}", _at_least_one, "an integer >= 1") for f in
      ("steps", "batch_size", "micro_batch_size", "eval_every", "log_every")),
    *((f"train.{f}", _positive, "a number > 0") for f in
      ("lr", "budget_flops", "max_minutes", "grad_clip")),
    ("train.warmup_steps", lambda v: v >= 0, "an integer >= 0"),
    ("train.weight_decay", lambda v: v >= 0, "a number >= 0"),
    *((f"train.{f}", lambda v: 0 <= v < 1, "a number in [0, 1)") for f in ("beta1", "beta2")),
    ("train.num_workers", lambda v: v >= 0, "an integer >= 0 (0: load in the main process)"),
    ("train.prompt_fraction", lambda v: 0 <= v <= 1, "a share in [0, 1]"),
    ("train.min_lr_ratio", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("train.precision", lambda v: v in PRECISIONS, f"one of {PRECISIONS}"),
    ("train.checkpoint_every", lambda v: v >= 0, "an integer >= 0 (0: at evaluations only)"),
    ("train.checkpoint_minutes", lambda v: v >= 0, "minutes >= 0 (0: at evaluations only)"),
    ("data.embedded.n_sentences", lambda v: v >= 20, "an integer >= 20 (three splits)"),
    ("data.embedded.n_novel", lambda v: v >= 0, "an integer >= 0 (0: no novel split)"),
    ("data.embedded.rate", lambda v: 80 <= v <= 450, "espeak-ng words per minute in [80, 450]"),
    ("data.embedded.sample_rate", lambda v: v >= 8000, "an integer rate in Hz >= 8000"),
    ("data.fit_seconds", _positive, "a number of seconds > 0"),
    ("data.shard_size", _at_least_one, "an integer >= 1"),
    ("data.max_seconds", _positive, "a number of seconds > 0"),
    ("data.max_phonemes", _at_least_one, "an integer >= 1"),
    *((f"data.{f}", lambda v: 0 < v < 0.5, "a fraction in (0, 0.5)") for f in
      ("valid_fraction", "test_fraction")),
    ("generate.split", lambda v: v in SPLITS, f"one of {list(SPLITS)}"),
    ("generate.limit", _at_least_one, "an integer >= 1, or none for the whole split"),
    ("generate.batch_size", _at_least_one, "an integer >= 1"),
    ("generate.max_seconds", _positive, "a number of seconds > 0"),
    ("generate.frames_per_phoneme", _positive, "a number > 0"),
    ("generate.conditions", lambda v: isinstance(v, list) and v and len(set(v)) == len(v)
     and set(v) <= set(CONDITIONS), f"a non-empty list of distinct names from {list(CONDITIONS)}"),
    ("generate.prompt_seconds", _positive, "a number of seconds > 0"),
    ("generate.sampling.ras_window", _at_least_one, "an integer >= 1 (frames)"),
    ("generate.sampling.ras_ratio", lambda v: 0 < v <= 1, "a share in (0, 1]"),
    ("codec.n_codebooks", _at_least_one, "an integer >= 1, or none for the codec's default"),
]  # fmt: skip


SEED_RANGE = range(0, 2**32)  # what numpy's and torch's generators take


def _fields(node, prefix: str = ""):
    """(dotted key, value) of every setting of a nested config."""
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def check(cfg: RunConfig) -> None:
    """Every setting a run uses, checked before anything is built or written: ConfigError
    naming the first bad one and what was expected."""
    for key, value in _fields(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        if key.endswith("seed") and (isinstance(value, bool) or value not in SEED_RANGE):
            raise ConfigError(f"{key}={value!r}: expected an integer seed in [0, 2**32)")
    for key, value in (("train.seed", cfg.train.seed), ("generate.sampling.seed",
                                                         cfg.generate.sampling.seed)):  # fmt: skip
        if value != cfg.seed:  # the run directory is named by the run's seed
            raise ConfigError(
                f"{key}={value} differs from the run's seed {cfg.seed}: set every seed with "
                f"--seed {value}"
            )
    for key, ok, expected in _CHECKS:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}={value!r}: expected {expected}")
    for group in ("coarse", "fine"):
        try:
            GroupSampling(**asdict(getattr(cfg.generate.sampling, group)))
        except ValueError as err:
            raise ConfigError(f"generate.sampling.{group}: {err}") from err
    _check_names(cfg)
    _check_paths(cfg.data)


def _check_names(cfg: RunConfig) -> None:
    """The preset, backend and codec a run names exist, and the codec can use its settings."""
    if cfg.preset not in _MODELS:
        raise ConfigError(f"preset={cfg.preset!r}: expected one of {sorted(_MODELS)} (--preset)")
    if cfg.model.name not in BACKENDS:
        raise ConfigError(f"model.name={cfg.model.name!r}: expected one of {sorted(BACKENDS)}")
    if cfg.codec.name not in CODECS:
        raise ConfigError(f"codec.name={cfg.codec.name!r}: expected one of {sorted(CODECS)}")
    try:
        codec_class(cfg.codec.name).check_config(cfg.codec)
    except CodecError as err:
        raise ConfigError(str(err)) from err
    if cfg.data.corpus == "embedded" and not has_voice(cfg.data.embedded.voice):
        raise ConfigError(
            f"data.embedded.voice={cfg.data.embedded.voice!r}: espeak-ng has no such voice "
            "(e.g. 'en-us', 'en-us+f3')"
        )


def _check_paths(data: DataConfig) -> None:
    """A corpus folder that exists; a data root that is, or can become, a folder."""
    if data.corpus not in ("embedded", "ljspeech") and not Path(data.corpus).is_dir():
        raise ConfigError(
            f"data.corpus={data.corpus!r}: no such folder; expected 'embedded', 'ljspeech' "
            "(download) or an LJSpeech-layout folder (metadata.csv + wavs/)"
        )
    place = project_path(data.root)
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise ConfigError(f"data.root={data.root!r}: {place} is a file, not a folder")


def _check_sizes(cfg: RunConfig, codec) -> None:
    """Settings that are facts of the codec and the phoneme vocabulary: any other value is an
    error before anything is written (it would fail at the first step, or silently drop
    codes)."""
    if cfg.model.codebook_size != codec.codebook_size:
        raise ConfigError(
            f"model.codebook_size={cfg.model.codebook_size} differs from the codec's "
            f"{codec.codebook_size} codes per codebook (codec {codec.name}): leave it unset"
        )
    if cfg.model.n_phonemes != len(VOCAB):
        raise ConfigError(
            f"model.n_phonemes={cfg.model.n_phonemes} differs from the phoneme vocabulary's "
            f"{len(VOCAB)} symbols (phonelm/text.py): leave it unset"
        )


def _resolve_codebooks(cfg: RunConfig, codec_k: int) -> RunConfig:
    """The model takes the codec's K; a model K set to anything else is an error."""
    if cfg.model.n_codebooks not in (None, codec_k):
        raise ConfigError(
            f"model.n_codebooks={cfg.model.n_codebooks} differs from the codec's K={codec_k} "
            f"(codec {cfg.codec.name}, codec.n_codebooks={cfg.codec.n_codebooks}, "
            f"codec.bandwidth={cfg.codec.bandwidth}): set K on the codec only"
        )
    return replace(cfg, model=replace(cfg.model, n_codebooks=codec_k))


def _resolve_stride(cfg: RunConfig, prepared) -> RunConfig:
    """Aligned positions with no stride given: the training split's mean frames per phoneme
    (after the length filters), stored in the resolved config."""
    if cfg.model.positions != "aligned" or cfg.model.phoneme_stride is not None:
        return cfg
    try:
        train = CodeDataset(
            prepared.cache_dir,
            "train",
            max_frames=int(cfg.data.max_seconds * prepared.codec.frame_rate),
            max_phonemes=cfg.data.max_phonemes,
        )
    except ValueError as err:  # every utterance filtered out: name the settings
        raise ConfigError(
            f"data.max_seconds={cfg.data.max_seconds} and data.max_phonemes="
            f"{cfg.data.max_phonemes} leave no training utterance ({err})"
        ) from err
    stride = round(train.frames_per_phoneme, 4)
    return replace(cfg, model=replace(cfg.model, phoneme_stride=stride))


def check_builds(model, cfg: RunConfig) -> None:
    """One forward pass of the built backend on a dummy utterance (3 phonemes, 4 frames), so
    that shape settings which pass every range check but do not fit together (e.g.
    model.dim_head above model.local_dim) fail here, before the run directory is written, not
    at step 1. No random state is used up: the run's numbers are as without it."""
    from phonelm.batching import collate
    from phonelm.dataset import Item

    k = cfg.model.n_codebooks
    probe = Item("probe", torch.ones(3, dtype=torch.long), torch.zeros(k, 4, dtype=torch.long))
    was_training = model.training
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model.eval()
        try:
            model(collate([probe]))
        except (RuntimeError, ValueError, IndexError) as err:
            shape = {f: getattr(cfg.model, f) for f in ("dim", "dim_head", "local_dim", "depth")}
            reason = " ".join(str(err).split())[:200]
            raise ConfigError(
                f"model settings {shape} do not fit together ({reason}): e.g. model.dim_head "
                "must not exceed model.dim or model.local_dim"
            ) from err
        finally:
            model.train(was_training)


def resolve(cfg: RunConfig, prepared) -> RunConfig:
    """The settings a run takes from its prepared data (phonelm.dataset.Prepared): K from the
    codec, and the phoneme stride of aligned positions from the training split."""
    _check_sizes(cfg, prepared.codec)
    return _resolve_stride(_resolve_codebooks(cfg, prepared.codec.n_codebooks), prepared)


def preset(name: str, model: str, seed: int = 0) -> RunConfig:
    """The resolved config of `model` at preset `name`; `seed` seeds the model, the data order
    and the decoding randomness (each utterance's stream derives from it and the utterance id)."""
    cfg = _preset(name, model, seed)
    cfg.generate.sampling = replace(cfg.generate.sampling, seed=seed)
    return cfg


_DATA = {
    "tiny": DataConfig(
        embedded=EmbeddedSettings(n_sentences=48, n_novel=4), fit_seconds=60, max_seconds=6.0
    ),
    # 100 sentences of words held out of train, valid and test: the `novel` condition
    "cpu": DataConfig(embedded=EmbeddedSettings(n_novel=100)),
    "paper": DataConfig(corpus="ljspeech", max_seconds=15.0),
}
_TRAIN = {
    "tiny": TrainConfig(
        steps=20, batch_size=4, micro_batch_size=4, warmup_steps=5, eval_every=10, log_every=5
    ),
    "cpu": TrainConfig(
        steps=100_000,
        budget_flops=CPU_BUDGET_FLOPS,  # ends training before the steps do
        batch_size=8,
        micro_batch_size=8,
        lr=2e-3,
        warmup_steps=30,
        eval_every=100,
        max_minutes=90.0,  # a safety cap only
    ),
    "paper": TrainConfig(
        steps=1_000_000,  # the FLOPs budget ends training first
        budget_flops=PAPER_BUDGET_FLOPS,
        # 64 utterances a step (~7 min of LJSpeech), 16 a forward pass on each GPU
        batch_size=64,
        micro_batch_size=16,
        lr=3e-4,
        warmup_steps=2000,
        eval_every=2000,  # also a checkpoint; train.checkpoint_minutes adds more
    ),
}
_GENERATE = {
    "tiny": GenerateConfig(limit=3, batch_size=3, max_seconds=4.0),
    "cpu": GenerateConfig(limit=40),
    "paper": GenerateConfig(limit=None),
}


def _preset(name: str, model: str, seed: int) -> RunConfig:
    if name not in _MODELS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {sorted(_MODELS)}")
    if model not in BACKENDS:
        raise ConfigError(f"unknown model {model!r}; valid models: {sorted(BACKENDS)}")
    return RunConfig(
        preset=name,
        seed=seed,
        data=copy.deepcopy(_DATA[name]),
        codec=replace(_CODECS[name]),
        model=replace(
            _MODELS[name],
            name=model,
            **matched_depths(name, model),
            **(study_recipe(model) if name in ("cpu", "paper") else {}),
        ),
        train=replace(_TRAIN[name], seed=seed),
        generate=copy.deepcopy(_GENERATE[name]),
    )
