"""The one codec interface: mono audio at any rate <-> codes [K, F] with values in [0, size)."""

import math
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from phonelm.audio import conform
from phonelm.io import bytes_digest, digest, write_with


class CodecError(RuntimeError):
    """A codec that cannot be built or used as asked; the message says how to fix it."""


class Codec(ABC):
    name: str
    sample_rate: int
    hop_length: int  # samples per frame
    n_codebooks: int
    codebook_size: int = 1024

    @classmethod
    @abstractmethod
    def from_config(cls, cfg, *, device: str = "cpu") -> "Codec":
        """Build from a phonelm.config.CodecConfig, to encode and decode on `device` (a
        codec whose arithmetic is small may stay on the CPU)."""

    @classmethod
    def check_config(cls, cfg) -> None:
        """CodecError naming a CodecConfig setting this codec cannot use, without building it
        (a run checks every setting before anything is loaded or written)."""
        return  # a codec with no settings of its own to check

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def n_frames(self, n_samples: int) -> int:
        """Frames that encode() returns for n_samples at the codec's rate (at least one)."""
        return max(1, math.ceil(n_samples / self.hop_length))

    def encode(self, wav: torch.Tensor, sr: int) -> torch.Tensor:
        """wav [T] or [C, T] at `sr` -> codes [K, F] (int64); any rate, any channel count."""
        wav = conform(wav, sr, self.sample_rate)
        frames = self.n_frames(wav.shape[-1])
        wav = torch.nn.functional.pad(wav, (0, frames * self.hop_length - wav.shape[-1]))
        codes = self._encode(wav)[:, :frames]
        assert codes.shape == (self.n_codebooks, frames), codes.shape
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [K, F] -> wav [F * hop_length] at `sample_rate`."""
        if codes.dim() != 2 or codes.shape[0] != self.n_codebooks:
            raise ValueError(
                f"{self.name} decodes codes [{self.n_codebooks}, F], got {tuple(codes.shape)}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        return self._decode(codes.long())[: codes.shape[1] * self.hop_length]

    @abstractmethod
    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [T] (T a multiple of hop_length) -> codes [K, >= T / hop_length]."""

    @abstractmethod
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [K, F] -> wav [>= F * hop_length]."""

    # --- fitting (codecs whose codebooks are learnt from the corpus) ---------------------------
    needs_fit: bool = False

    def fit(self, wavs: list[torch.Tensor]) -> None:
        """Fit on training audio (mono, at `sample_rate`). Only for codecs with needs_fit."""
        raise CodecError(f"codec {self.name} has nothing to fit")

    def settings(self) -> dict:
        """Everything that changes the codes, for cache keys."""
        return {"name": self.name, "n_codebooks": self.n_codebooks}

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors that, with settings(), rebuild this codec exactly (fitted codecs only)."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        raise CodecError(f"codec {self.name} has no state to load")

    def provenance(self) -> dict:
        """What a run records beside its CodecConfig to rebuild this codec on another machine
        (e.g. a local checkpoint's content hash); nothing for most codecs."""
        return {}

    @classmethod
    def relocate(cls, cfg, provenance: dict, *, where: str):
        """The CodecConfig a run saved (with its `provenance`), pointed at this machine's
        copies of what it names; CodecError naming `where` when they are not here."""
        return cfg

    def identity(self) -> str:
        """Hash of settings and fitted state: equal identities give equal codes."""
        tensors = {k: bytes_digest(v.cpu().numpy().tobytes()) for k, v in self.state().items()}
        return digest(self.settings(), tensors)

    def save(self, path: str | Path) -> None:
        meta = {"identity": self.identity()}
        state = {k: v.contiguous().cpu() for k, v in self.state().items()}
        write_with(path, lambda tmp: save_file(state, str(tmp), metadata=meta))

    def load(self, path: str | Path) -> None:
        self.load_state(load_file(str(path)))
