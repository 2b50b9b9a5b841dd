"""EnCodec 24 kHz (the real codec): pretrained weights, a local checkpoint, or random weights.

Random weights are for tests and offline plumbing only: their codebooks are k-means-initialised on
calibration audio (`fit`) so codes are spread over the codebook, but they decode to noise.
"""

import dataclasses
import functools
import os
import sys
import types
from pathlib import Path

import julius
import torch

from phonelm.codecs.base import Codec, CodecError
from phonelm.codecs.kmeans import fit_residual_codebooks
from phonelm.io import file_digest

BANDWIDTHS = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}  # kbps -> codebooks


def _torchaudio_stand_in() -> types.ModuleType:
    """A module that provides what `import encodec` needs from torchaudio.

    encodec imports torchaudio at import time and uses only `transforms.Resample` (in
    `encodec.utils.convert_audio`, which phonelm never calls: phonelm resamples with julius).
    PyPI's torchaudio is a CUDA build that fails to import beside a CPU torch, so where the real
    torchaudio does not import, this stand-in (resampling with julius) takes its place.
    """

    class Resample(torch.nn.Module):
        def __init__(self, orig_freq: int, new_freq: int):
            super().__init__()
            self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)

        def forward(self, wav: torch.Tensor) -> torch.Tensor:
            return julius.resample_frac(wav, self.orig_freq, self.new_freq)

    module = types.ModuleType("torchaudio", "phonelm stand-in: only transforms.Resample")
    module.transforms = types.SimpleNamespace(Resample=Resample)
    return module


def import_encodec():
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        for name in [n for n in sys.modules if n.split(".")[0] == "torchaudio"]:
            del sys.modules[name]
        sys.modules["torchaudio"] = _torchaudio_stand_in()
    import encodec

    return encodec


class EncodecCodec(Codec):
    """EnCodec 24 kHz; `bandwidth` (kbps) or `n_codebooks` picks K; `weights` as below.

    weights: "pretrained" (encodec's own download/cache), a path to a state-dict checkpoint
    (`encodec_24khz-*.th`), or "random" (seeded random weights; call `fit` before use).
    """

    name = "encodec"
    sample_rate = 24_000
    hop_length = 320

    def __init__(
        self,
        *,
        weights: str = "pretrained",
        bandwidth: float | None = None,
        n_codebooks: int | None = None,
        seed: int = 0,
        calibration_frames: int = 20_000,
        device: str = "cpu",
    ):
        if bandwidth is None and n_codebooks is None:
            bandwidth = 6.0
        if bandwidth is not None:
            if float(bandwidth) not in BANDWIDTHS:
                raise CodecError(
                    f"EnCodec bandwidth must be one of {list(BANDWIDTHS)} kbps, got {bandwidth}"
                )
            k = BANDWIDTHS[float(bandwidth)]
            if n_codebooks is not None and n_codebooks != k:
                raise CodecError(
                    f"bandwidth {bandwidth} kbps means {k} codebooks, not {n_codebooks}"
                )
            n_codebooks = k
        by_k = {k: bw for bw, k in BANDWIDTHS.items()}
        if n_codebooks not in by_k:
            raise CodecError(f"EnCodec has {sorted(by_k)} codebooks, got n_codebooks={n_codebooks}")
        self.n_codebooks, self.bandwidth = n_codebooks, by_k[n_codebooks]
        self.weights, self.seed, self.calibration_frames = str(weights), seed, calibration_frames
        self.device = torch.device(device)
        self.model = self._build().to(self.device).eval()
        self.model.set_target_bandwidth(self.bandwidth)
        self.needs_fit = self.weights == "random"
        self._fitted = not self.needs_fit

    @classmethod
    def from_config(cls, cfg, *, device: str = "cpu") -> "EncodecCodec":
        cls.check_config(cfg)
        return cls(
            weights=cfg.weights,
            bandwidth=cfg.bandwidth,
            n_codebooks=cfg.n_codebooks,
            seed=cfg.seed,
            device=device,
        )

    @classmethod
    def check_config(cls, cfg) -> None:
        bandwidth, k = cfg.bandwidth, cfg.n_codebooks
        if bandwidth is not None and float(bandwidth) not in BANDWIDTHS:
            raise CodecError(f"codec.bandwidth={bandwidth}: EnCodec's are {list(BANDWIDTHS)} kbps")
        if bandwidth is not None and k is not None and k != BANDWIDTHS[float(bandwidth)]:
            raise CodecError(
                f"codec.bandwidth={bandwidth} kbps means {BANDWIDTHS[float(bandwidth)]} "
                f"codebooks, not codec.n_codebooks={k}: set one of them"
            )
        if k is not None and k not in BANDWIDTHS.values():
            raise CodecError(
                f"codec.n_codebooks={k}: EnCodec has {sorted(BANDWIDTHS.values())} codebooks"
            )
        if cfg.weights not in ("pretrained", "random") and not Path(cfg.weights).is_file():
            raise CodecError(
                f"codec.weights={cfg.weights!r}: no such checkpoint; expected 'pretrained', "
                "'random' or the path of a state-dict file such as encodec_24khz-d7cc33bc.th"
            )

    def _build(self):
        model_cls = import_encodec().EncodecModel
        if self.weights == "random":
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                return model_cls.encodec_model_24khz(pretrained=False)
        if self.weights == "pretrained":
            try:
                return model_cls.encodec_model_24khz(pretrained=True)
            except Exception as err:  # download failures surface as many exception types
                raise CodecError(
                    f"pretrained EnCodec 24 kHz weights are not available ({err}). Online, they "
                    "download to the torch hub cache on first use. Offline, copy "
                    "encodec_24khz-d7cc33bc.th from a machine that has it and set "
                    "codec.weights=/path/to/encodec_24khz-d7cc33bc.th, or use the offline "
                    "stand-in codec (codec.name=mel-rvq)."
                ) from err
        path = Path(self.weights)
        if not path.is_file():
            raise CodecError(
                f"EnCodec checkpoint {path} does not exist; expected a state-dict file "
                "such as encodec_24khz-d7cc33bc.th, 'pretrained' or 'random'"
            )
        model = model_cls.encodec_model_24khz(pretrained=False)
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:
            raise CodecError(f"{path} is not an EnCodec 24 kHz state dict: {err}") from err
        layers = model.quantizer.vq.layers[: self.n_codebooks]
        # a codebook's k-means initialisation happens in its first training step: a checkpoint
        # saved before it has all-zero codebooks, and every code would be 0
        books = [layer._codebook for layer in layers]
        empty = [i + 1 for i, b in enumerate(books) if not b.inited.any() and not b.embed.any()]
        if empty:
            raise CodecError(
                f"{path}: EnCodec codebooks {empty} were never initialised (weights saved before "
                "any training: all zero), so every code would be 0; use trained weights, or "
                "codec.weights=random (codebooks fitted on the corpus)"
            )
        return model

    def settings(self) -> dict:
        """A local checkpoint is named by its content, not its path: swapping the file
        changes the cache key, and the same weights elsewhere give the same key."""
        return {**super().settings(), "weights": self._weights_id, "seed": self.seed}

    @functools.cached_property
    def _weights_id(self) -> str:
        if self.weights in ("pretrained", "random"):
            return self.weights
        return f"checkpoint sha256:{self._checkpoint_sha256[:16]}"

    @functools.cached_property
    def _checkpoint_sha256(self) -> str:
        return file_digest(self.weights)

    @classmethod
    def relocate(cls, cfg, provenance: dict, *, where: str):
        if "checkpoint_sha256" not in provenance:
            return cfg
        found = locate_checkpoint(cfg.weights, provenance["checkpoint_sha256"], where=where)
        return dataclasses.replace(cfg, weights=found)

    def provenance(self) -> dict:
        """A local checkpoint's content hash: the run records it so that its codec can be
        rebuilt on a machine where the same file lies elsewhere (`locate_checkpoint`)."""
        if self.weights in ("pretrained", "random"):
            return {}
        return {"checkpoint_sha256": self._checkpoint_sha256}

    def _layers(self):
        return [layer._codebook for layer in self.model.quantizer.vq.layers[: self.n_codebooks]]

    def fit(self, wavs: list[torch.Tensor]) -> None:
        """k-means-initialise the codebooks of a random model on calibration audio."""
        if not self.needs_fit:
            return super().fit(wavs)
        with torch.no_grad():
            latents = [self.model.encoder(w.to(self.device)[None, None])[0].T for w in wavs]
        x = torch.cat(latents).cpu()  # [frames, D]
        gen = torch.Generator().manual_seed(self.seed)
        x = x[torch.randperm(len(x), generator=gen)[: self.calibration_frames]]
        books = fit_residual_codebooks(
            x, levels=self.n_codebooks, size=self.codebook_size, seed=self.seed
        )
        self.load_state({"codebooks": books})

    def state(self) -> dict[str, torch.Tensor]:
        if not self.needs_fit:
            return {}
        return {"codebooks": torch.stack([layer.embed for layer in self._layers()]).cpu()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        books = state["codebooks"]
        if books.shape[0] != self.n_codebooks:
            raise CodecError(
                f"saved EnCodec codebooks have K={books.shape[0]}, this codec K={self.n_codebooks}"
            )
        for layer, book in zip(self._layers(), books, strict=True):
            layer.embed.copy_(book)
            layer.embed_avg.copy_(book)
            layer.inited.fill_(1.0)
        self._fitted = True

    def _check_fitted(self):
        if not self._fitted:
            raise CodecError("random-weight EnCodec must be fitted (codec.fit) before use")

    @torch.no_grad()
    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        frames = self.model.encode(wav.to(self.device)[None, None])
        return torch.cat([codes for codes, _ in frames], dim=-1)[0].cpu()  # [K, F]

    @torch.no_grad()
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self.model.decode([(codes.to(self.device)[None], None)])[0, 0].cpu()


WEIGHTS_ENV = "PHONELM_ENCODEC_WEIGHTS"


def locate_checkpoint(recorded: str, sha256: str, *, where: str) -> str:
    """The path, on this machine, of the EnCodec checkpoint a run recorded at `recorded` with
    content `sha256`: the recorded path if its content is the same, else a file of that name
    (or the file itself) in $PHONELM_ENCODEC_WEIGHTS, else in torch hub's checkpoint folder.
    CodecError naming `where`, the file and where it looked when none has that content."""
    name = Path(recorded).name
    places = [Path(recorded)]
    if os.environ.get(WEIGHTS_ENV):
        given = Path(os.environ[WEIGHTS_ENV]).expanduser()
        places.append(given / name if given.is_dir() else given)
    places.append(Path(torch.hub.get_dir()) / "checkpoints" / name)
    for place in places:
        if place.is_file() and file_digest(place) == sha256:
            return str(place)
    looked = ", ".join(str(p) for p in places)
    raise CodecError(
        f"{where}: the run's EnCodec checkpoint {name} (sha256 {sha256[:16]}...) is not on "
        f"this machine (looked at {looked}); copy the same file there, or set "
        f"{WEIGHTS_ENV}=/path/to/{name} (or its folder)"
    )
