"""Corpora in the LJSpeech layout (`metadata.csv` = `id|text|normalized_text`, `wavs/<id>.wav`).

- `read_ljspeech(root)`: a user's LJSpeech copy (or anything in its layout).
- `download_ljspeech(dest)`: the canonical LJSpeech-1.1 archive, checksum-verified.
- `build_embedded(root)`: the offline default, generated here from text with eSpeak NG.
- `split_of(text)`: deterministic, text-disjoint train/valid/test assignment.
- `splits.csv` (optional, `id|split` lines): splits fixed by the corpus, e.g. the embedded
  corpus's `novel` split (sentences of words never heard in train, valid or test).
"""

import hashlib
import multiprocessing
import re
import socket
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from phonelm.audio import conform, save_audio, wav_bytes
from phonelm.io import digest, write_json, write_text

LJSPEECH_URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
LJSPEECH_SHA256 = "be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5"
EMBEDDED_VERSION = 1
# `novel`: the generalisation control, only ever fixed by a corpus's splits.csv
SPLITS = ("train", "valid", "test", "novel")
SPLITS_FILE = "splits.csv"


class CorpusError(ValueError):
    """Corpus input that cannot be read; the message names the file (and line) at fault."""


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    normalized_text: str
    wav: Path


@dataclass
class Corpus:
    root: Path
    items: list[Utterance]
    skipped: list[dict]  # {"id", "reason"} for items that cannot be used
    fixed_splits: dict[str, str] = field(default_factory=dict)  # id -> split (splits.csv)

    def split(self, u: Utterance, *, valid: float, test: float) -> str:
        """The utterance's split: fixed by the corpus, else from a hash of its text."""
        return self.fixed_splits.get(u.id) or split_of(u.normalized_text, valid=valid, test=test)

    def fingerprint(self) -> str:
        """Changes when the metadata, the fixed splits or any wav file (name, size, mtime)
        changes."""
        h = hashlib.sha256((self.root / "metadata.csv").read_bytes())
        if self.fixed_splits:
            h.update((self.root / SPLITS_FILE).read_bytes())
        for u in self.items:
            st = u.wav.stat()
            h.update(f"{u.id}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def split_of(text: str, *, valid: float = 0.05, test: float = 0.05) -> str:
    """'train' | 'valid' | 'test' from a hash of the text's words: equal texts share a split."""
    key = " ".join(re.findall(r"[a-z0-9']+", text.lower()))
    u = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12
    return "test" if u < test else "valid" if u < test + valid else "train"


def read_ljspeech(root: str | Path) -> Corpus:
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise CorpusError(
            f"{meta} not found; expected an LJSpeech-layout corpus "
            "(metadata.csv with 'id|text|normalized_text' and wavs/<id>.wav)"
        )
    items, skipped, seen = [], [], set()
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 3 or not fields[0].strip() or not fields[1].strip():
            raise CorpusError(f"{meta}:{lineno}: expected 'id|text|normalized_text', got {line!r}")
        uid, text, norm = (f.strip() for f in fields)
        if uid in seen:
            raise CorpusError(f"{meta}:{lineno}: duplicate id {uid!r}")
        seen.add(uid)
        wav = root / "wavs" / f"{uid}.wav"
        if not wav.is_file():
            skipped.append({"id": uid, "reason": f"missing audio file {wav}"})
            continue
        items.append(Utterance(uid, text, norm or text, wav))
    if not items:
        raise CorpusError(f"{meta}: no usable utterances ({len(skipped)} skipped)")
    return Corpus(root, items, skipped, _read_splits(root / SPLITS_FILE, seen))


def _read_splits(path: Path, ids: set[str]) -> dict[str, str]:
    """splits.csv (`id|split` lines) -> {id: split}; {} when there is none."""
    if not path.is_file():
        return {}
    fixed = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 2 or fields[1] not in SPLITS or fields[0] not in ids:
            raise CorpusError(
                f"{path}:{lineno}: expected 'id|split' with an id of metadata.csv and a split "
                f"in {list(SPLITS)}, got {line!r}"
            )
        fixed[fields[0]] = fields[1]
    return fixed


DOWNLOAD_TIMEOUT_S = 60.0  # seconds without a byte before the download fails


def download_ljspeech(dest: str | Path) -> Path:
    """Download and unpack LJSpeech-1.1 into dest (needs internet); returns the corpus root."""
    from torch.hub import download_url_to_file

    dest = Path(dest)
    root = dest / "LJSpeech-1.1"
    if (root / "metadata.csv").is_file():
        return root
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "LJSpeech-1.1.tar.bz2"
    if not archive.is_file():
        before = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a stalled connection ends, not hangs
        try:
            download_url_to_file(LJSPEECH_URL, str(archive), hash_prefix=LJSPEECH_SHA256)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash RuntimeError
            raise CorpusError(
                f"could not download LJSpeech-1.1 into {dest} ({err}); download and unpack it "
                "yourself, then pass --corpus /path/to/LJSpeech-1.1 (or data.corpus=...)"
            ) from err
        finally:
            socket.setdefaulttimeout(before)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return root


@dataclass
class EmbeddedSettings:
    n_sentences: int = 3000
    # the `novel` split: sentences of held-out words (phonelm/sentences.py); 0 (none) is what
    # corpora made before it had, so their saved configs name the same corpus
    n_novel: int = 0
    seed: int = 0
    voice: str = "en-us"  # most intelligible of the voices tried (docs/data.md)
    rate: int = 150  # words per minute
    sample_rate: int = 24_000


def build_embedded(parent: str | Path, settings: EmbeddedSettings | None = None) -> Corpus:
    """Generate (once) the embedded corpus in the LJSpeech layout under parent/<settings id>/.

    The folder is named by a hash of the settings, so other settings never reuse its audio.
    Each wav is written atomically and metadata.csv last: an interrupted build resumes.
    The synthesiser reads the normalised text, so the audio says exactly what the phonemes say.
    eSpeak NG carries state from one utterance to the next, so the audio is spoken by a fresh
    process, every utterance in order, also when resuming or when another process builds the
    same folder at once: the wavs are those of one uninterrupted build, whatever came before.
    """
    from phonelm.sentences import novel_sentences, sentences
    from phonelm.text import normalize

    settings = settings or EmbeddedSettings()
    stamp = {"version": EMBEDDED_VERSION, **asdict(settings)}
    if not settings.n_novel:  # named as before the novel split existed: the same corpus
        del stamp["n_novel"]
    root = Path(parent) / f"embedded-{digest(stamp)}"
    if (root / "corpus.json").is_file() and (root / "metadata.csv").is_file():
        return read_ljspeech(root)
    novel = []
    texts = [
        (f"EMB{settings.seed:02d}-{i:05d}", text)
        for i, text in enumerate(sentences(settings.n_sentences, seed=settings.seed))
    ]
    if settings.n_novel:  # spoken after the others, so their audio is as without them
        novel = [
            (f"EMB{settings.seed:02d}-N{i:04d}", text)
            for i, text in enumerate(novel_sentences(settings.n_novel, seed=settings.seed))
        ]
    spoken = [(uid, text, normalize(text)) for uid, text in texts + novel]
    _speak_in_a_fresh_process(root, settings, spoken)
    write_text(root / SPLITS_FILE, "".join(f"{uid}|novel\n" for uid, _ in novel))
    write_text(root / "metadata.csv", "".join("|".join(fields) + "\n" for fields in spoken))
    write_json(root / "corpus.json", {"settings": stamp})
    return read_ljspeech(root)


def _speak_in_a_fresh_process(
    root: Path, settings: EmbeddedSettings, lines: list[tuple[str, str, str]]
):
    """Run _speak_all in a new interpreter (whose eSpeak has spoken nothing yet)."""
    process = multiprocessing.get_context("spawn").Process(
        target=_speak_all, args=(root, settings, lines)
    )
    process.start()
    try:
        process.join()
    finally:  # stopped meanwhile (Ctrl-C, SIGTERM): the speaker stops too
        if process.is_alive():
            process.terminate()
            process.join()
    if process.exitcode != 0:
        raise CorpusError(f"{root}: building the embedded corpus failed (speaker exit code "
                          f"{process.exitcode}; its error is printed above)")  # fmt: skip


def _speak_all(root: Path, settings: EmbeddedSettings, lines: list[tuple[str, str, str]]) -> None:
    """Speak every (id, text, normalised text) in order and write each wav that is missing or
    differs (an earlier build's, made in another order); a wav that is already right is left
    as it is (its mtime is part of the corpus fingerprint)."""
    from phonelm.espeak import synthesize

    for uid, _, norm in tqdm(lines, desc="embedded corpus", unit="utt"):
        wav, sr = synthesize(norm, voice=settings.voice, rate=settings.rate)
        wav = conform(wav, sr, settings.sample_rate)
        path = root / "wavs" / f"{uid}.wav"
        if not path.is_file() or wav_bytes(wav, settings.sample_rate) != path.read_bytes():
            save_audio(path, wav, settings.sample_rate)
