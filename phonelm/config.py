"""Typed configs for the data pipeline (corpus, codec, cache, batching)."""

from dataclasses import dataclass, field

from phonelm.corpus import EmbeddedSettings


@dataclass
class CodecConfig:
    name: str = "encodec"
    n_codebooks: int | None = None  # K; for EnCodec also set by `bandwidth`
    bandwidth: float | None = None  # EnCodec only: kbps (1.5/3/6/12/24 -> K = 2/4/8/16/32)
    weights: str = "pretrained"  # EnCodec: "pretrained" | "random" | path to a checkpoint
    seed: int = 0


@dataclass
class DataConfig:
    corpus: str = "embedded"  # "embedded" | "ljspeech" (download) | path to an LJSpeech layout
    root: str = "data"  # corpora, fitted codecs and dataset caches live here
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    fit_seconds: float = 900.0  # training audio used to fit a codec that needs fitting
    shard_size: int = 256  # utterances per cache shard (the unit of resumption)
    max_seconds: float = 15.0  # utterances longer than this are filtered out (counted)
    max_phonemes: int = 400
