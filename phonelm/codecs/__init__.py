"""Codec registry: name -> class. `build_codec(config)` makes one from a CodecConfig."""

from phonelm.codecs.base import Codec, CodecError
from phonelm.codecs.encodec import EncodecCodec
from phonelm.codecs.mel_rvq import MelRvqCodec

CODECS: dict[str, type[Codec]] = {"encodec": EncodecCodec, "mel-rvq": MelRvqCodec}


def codec_class(name: str) -> type[Codec]:
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; valid codecs: {sorted(CODECS)}")
    return CODECS[name]


def build_codec(cfg, *, device: str = "cpu") -> Codec:
    """Build the codec a CodecConfig names, on `device` (fitted codecs still need `fit` or
    `load`)."""
    return codec_class(cfg.name).from_config(cfg, device=str(device))


__all__ = [
    "CODECS",
    "Codec",
    "CodecError",
    "EncodecCodec",
    "MelRvqCodec",
    "build_codec",
    "codec_class",
]
