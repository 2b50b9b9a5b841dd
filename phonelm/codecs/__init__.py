"""Codec registry: name -> class. `build_codec(config)` makes one from a CodecConfig."""

from phonelm.codecs.base import Codec, CodecError
from phonelm.codecs.encodec import EncodecCodec

CODECS: dict[str, type[Codec]] = {"encodec": EncodecCodec}


def codec_class(name: str) -> type[Codec]:
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; valid codecs: {sorted(CODECS)}")
    return CODECS[name]


__all__ = ["CODECS", "Codec", "CodecError", "codec_class"]
