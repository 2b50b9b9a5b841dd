"""Typed configs for the data pipeline (corpus, codec, cache, batching)."""

import os
from dataclasses import dataclass, field
from pathlib import Path

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
    root: str = "data"  # corpora, fitted codecs and dataset caches; relative: to the project
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    fit_seconds: float = 900.0  # training audio used to fit a codec that needs fitting
    shard_size: int = 256  # utterances per cache shard (the unit of resumption)
    max_seconds: float = 15.0  # utterances longer than this are filtered out (counted)
    max_phonemes: int = 400


# The checkout this package lives in (its pyproject.toml beside the package); an installed copy
# has none, and its relative data paths mean the working directory's.
PROJECT = Path(__file__).resolve().parent.parent


def project_path(path: str | os.PathLike) -> Path:
    """`path` as the pipeline reads it: absolute as given; relative to the project's checkout
    (not the working directory), so that `data` is the same folder wherever a script is started
    and a run's saved `data.root` finds the data it was made from."""
    path = Path(path).expanduser()
    if path.is_absolute() or not (PROJECT / "pyproject.toml").is_file():
        return path
    return PROJECT / path


def shown_path(path: Path) -> str:
    """`path` relative to the project when inside it (how manifests record it: the same on
    every machine), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT))
    except ValueError:
        return str(path)


class ConfigFileError(ValueError):
    """A saved config that this version cannot rebuild; the message names it and the keys."""


def from_dict(cls, data, *, where: str, strict: bool = True):
    """The dataclass `cls` rebuilt from saved JSON (`where` names the file and section), nested
    dataclasses included; the one way every script reads a saved config. Missing keys take
    their defaults (files written before a setting existed). Keys this version does not know
    (a newer version's file) are an error naming them with `strict` (sections that change what
    is built: model, codec), else a warning on stderr."""
    import dataclasses
    import sys
    import types
    import typing

    if not isinstance(data, dict):
        raise ConfigFileError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        message = f"{where}: keys this version does not know: {unknown} (a newer version's file?)"
        if strict:
            raise ConfigFileError(message)
        print(f"warning: {message}; ignored", file=sys.stderr)
    values = {}
    for key in names & set(data):
        hint, value = hints[key], data[key]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        nested = [t for t in options if dataclasses.is_dataclass(t)]
        if nested and isinstance(value, dict):
            value = from_dict(nested[0], value, where=f"{where}.{key}", strict=strict)
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:  # a dataclass's own check
        raise ConfigFileError(f"{where}: {err}") from err
