import os
import warnings
from pathlib import Path

import pytest
import torch

from phonelm.audio import conform, save_audio
from phonelm.espeak import synthesize

warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
# Two threads in one pytest process; one in each of pytest-xdist's workers (scripts/test.sh runs
# one worker per core). Tests that run a command set its threads themselves.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

SENTENCES = [
    "The old clock stopped at noon.",
    "Anna found three keys near the station.",
    "Why did the farmer paint the bridge?",
    "Dr. Smith paid $5.20 for two apples.",
    "A quiet river ran behind the church.",
    "In 1999, the ship returned.",
]
PLAIN_SENTENCES = [  # all but the first and the eighth fall in the train split
    "The old clock stopped at noon.",
    "Anna found three keys near the station.",
    "Why did the farmer paint the bridge?",
    "A quiet river ran behind the church.",
    "We will meet at the harbour this morning.",
    "She opened the window and looked at the garden.",
    "The children walked home along the river.",
    "My brother bought a new bicycle last week.",
    "Please bring the green book to the kitchen.",
]


def write_ljspeech(root: Path, sentences: list[str], *, sr: int = 22_050) -> Path:
    """A tiny LJSpeech-layout corpus spoken by espeak-ng (at LJSpeech's own 22.05 kHz)."""
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(sentences):
        uid = f"T-{i:03d}"
        wav, wav_sr = synthesize(text)
        save_audio(root / "wavs" / f"{uid}.wav", conform(wav, wav_sr, sr), sr)
        lines.append(f"{uid}|{text}|{text}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def ljspeech_fixture(tmp_path) -> Path:
    return write_ljspeech(tmp_path / "LJ", SENTENCES)


@pytest.fixture
def plain_ljspeech_fixture(tmp_path) -> Path:
    """Plain words only (no numbers or abbreviations, whose normalisation tiny.en gets wrong in
    ways that flip between machines): for tests that bound a WER."""
    return write_ljspeech(tmp_path / "LJ", PLAIN_SENTENCES)


@pytest.fixture(scope="session")
def speech() -> torch.Tensor:
    """About 2 s of real (synthetic) speech at 24 kHz."""
    wav, sr = synthesize("Anna found three keys near the old station.")
    return conform(wav, sr, 24_000)


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """The tiny preset's corpus, codec and cache, built once for the session, for tests that
    only read it (so their stderr holds only what the run says)."""
    from experiments.presets import preset
    from phonelm.dataset import prepare

    root = tmp_path_factory.mktemp("tiny_data")
    cfg = preset("tiny", "delay")
    cfg.data.root = str(root)
    prepare(cfg.data, cfg.codec, progress=False)
    return root
