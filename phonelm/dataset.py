"""Cached dataset: (phoneme ids, codes [K, F]) per utterance, built once, then batched.

Cache layout: `<root>/cache/<key>/shard-NNNNN.safetensors` + `manifest.json`. The key hashes the
corpus fingerprint, the codec identity (settings and fitted state), the front-end version and the
split fractions, so any change builds a new cache and nothing stale is reused. Shards are written
atomically and skipped when present, so an interrupted build resumes where it stopped.
"""

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from phonelm import distributed as dist
from phonelm.audio import conform, load_audio
from phonelm.codecs import Codec, build_codec
from phonelm.config import CodecConfig, DataConfig, project_path, shown_path
from phonelm.corpus import (
    SPLITS,
    Corpus,
    CorpusError,
    build_embedded,
    download_ljspeech,
    read_ljspeech,
)
from phonelm.io import digest, remove_stale_temps, write_json, write_with
from phonelm.text import Phonemizer, TextError

DATASET_VERSION = 1


def open_corpus(cfg: DataConfig) -> Corpus:
    root = project_path(cfg.root)
    if cfg.corpus == "embedded":
        return build_embedded(root, cfg.embedded)
    if cfg.corpus == "ljspeech":
        return read_ljspeech(download_ljspeech(root))
    return read_ljspeech(cfg.corpus)


def split_for(cfg: DataConfig, corpus: Corpus, u) -> str:
    """The split of an utterance of `corpus` under this config's fractions."""
    return corpus.split(u, valid=cfg.valid_fraction, test=cfg.test_fraction)


def readable_audio(path: Path, codec: Codec) -> torch.Tensor:
    """Mono audio at the codec's rate; ValueError naming the file if it cannot be used (too short
    for one frame: an empty or truncated recording)."""
    raw, sr = load_audio(path)
    if raw.shape[-1] * codec.sample_rate < codec.hop_length * sr:  # checked before resampling
        raise ValueError(
            f"{path}: audio too short ({raw.shape[-1]} samples at {sr} Hz; one codec frame "
            f"needs {codec.hop_length / codec.sample_rate * 1000:.1f} ms)"
        )
    wav = conform(raw, sr, codec.sample_rate)
    if wav.shape[-1] < codec.hop_length:
        raise ValueError(
            f"{path}: audio too short ({wav.shape[-1]} samples at {codec.sample_rate} Hz; one "
            f"frame needs {codec.hop_length})"
        )
    return wav


def _device_part(device) -> list[str]:
    """What a cache key adds for codes computed off the CPU (another device's arithmetic may
    round a code the other way); nothing on the CPU, so CPU keys stay as they were."""
    device = torch.device(device)
    return [] if device.type == "cpu" else [f"computed on {device.type}"]


def fitted_codec_path(cfg: DataConfig, codec: Codec, corpus: Corpus, device="cpu") -> Path:
    """Where the fit of `codec` (its settings) on this corpus is kept: a file there is loaded
    instead of fitting (experiments/pin_codec.py puts another machine's fit there)."""
    key = digest(codec.settings(), corpus.fingerprint(), cfg.fit_seconds, *_device_part(device))
    return project_path(cfg.root) / "codecs" / f"{codec.name}-{key}.safetensors"


def fitted_codec(cfg: DataConfig, codec_cfg: CodecConfig, corpus: Corpus, device="cpu") -> Codec:
    """Build the codec on `device`; fit it on the training split once (cached by content) if
    it needs it."""
    codec = build_codec(codec_cfg, device=device)
    if not codec.needs_fit:
        return codec
    train = [u for u in corpus.items if split_for(cfg, corpus, u) == "train"]
    path = fitted_codec_path(cfg, codec, corpus, device)
    if path.is_file():
        try:
            codec.load(path)
            return codec
        except Exception as err:  # noqa: BLE001 - any unreadable state: fit it again
            warn_damaged(path, err)
            codec = build_codec(codec_cfg, device=device)
    wavs, seconds = [], 0.0
    for u in train:
        if seconds >= cfg.fit_seconds:
            break
        try:
            wav = readable_audio(u.wav, codec)
        except ValueError:
            continue  # reported by the cache build
        wavs.append(wav)
        seconds += wav.shape[-1] / codec.sample_rate
    if not wavs:
        raise CorpusError(f"no readable training audio in {corpus.root} to fit codec {codec.name}")
    codec.fit(wavs)
    codec.save(path)
    return codec


@dataclass
class Prepared:
    cache_dir: Path
    codec: Codec
    manifest: dict = field(default_factory=dict)


def prepare(
    cfg: DataConfig, codec_cfg: CodecConfig, *, progress: bool = True, device="cpu"
) -> Prepared:
    """Build (or reuse) the dataset cache for this corpus + codec + front-end, encoding on
    `device`. Under torchrun every process calls it: rank 0 builds the corpus and fits the
    codec, every rank then encodes its share of the shards (shard i on rank i % world), and
    rank 0 writes the manifest that the others read."""

    def corpus_and_codec():
        corpus = open_corpus(cfg)
        return corpus, fitted_codec(cfg, codec_cfg, corpus, device)

    corpus, codec = dist.main_first(corpus_and_codec)
    phonemizer = Phonemizer()
    key = digest(
        DATASET_VERSION,
        corpus.fingerprint(),
        codec.identity(),
        phonemizer.version,
        cfg.valid_fraction,
        cfg.test_fraction,
        cfg.shard_size,
        *_device_part(device),
    )
    cache_dir = project_path(cfg.root) / "cache" / key
    manifest_path = cache_dir / "manifest.json"
    items = sorted(corpus.items, key=lambda u: u.id)
    shards = [items[i : i + cfg.shard_size] for i in range(0, len(items), cfg.shard_size)]
    if (manifest := _intact_manifest(manifest_path, len(shards))) is not None:
        return Prepared(cache_dir, codec, manifest)
    start = time.perf_counter()
    dist.main_first(lambda: remove_stale_temps(cache_dir) if dist.is_main() else None)
    mine = range(dist.rank(), len(shards), dist.world())
    shown = progress and dist.is_main()
    bar = tqdm(total=sum(len(shards[i]) for i in mine), desc="dataset cache", unit="utt",
               disable=not shown)  # fmt: skip
    for index in mine:
        path = cache_dir / f"shard-{index:05d}.safetensors"
        if not _intact_shard(path):
            shard = shards[index]
            _write_shard(path, shard, [split_for(cfg, corpus, u) for u in shard], codec, phonemizer)
        bar.update(len(shards[index]))
    bar.close()
    dist.barrier()
    if dist.is_main():
        manifest = _manifest(cache_dir, len(shards), corpus, codec, phonemizer)
        manifest["build_seconds"] = time.perf_counter() - start
        write_json(manifest_path, manifest)
    dist.barrier()
    if not dist.is_main():
        manifest = _intact_manifest(manifest_path, len(shards))
    return Prepared(cache_dir, codec, manifest)


def _manifest(cache_dir: Path, n_shards: int, corpus: Corpus, codec: Codec, phonemizer) -> dict:
    metas = [_shard_meta(cache_dir / f"shard-{i:05d}.safetensors") for i in range(n_shards)]
    seconds = {s: 0.0 for s in SPLITS}
    counts = dict.fromkeys(seconds, 0)
    for meta in metas:
        for split, sec in zip(meta["splits"], meta["seconds"], strict=True):
            seconds[split] += sec
            counts[split] += 1
    return {
        "version": DATASET_VERSION,
        "corpus": shown_path(corpus.root),
        "corpus_fingerprint": corpus.fingerprint(),
        "codec": codec.settings(),
        "codec_identity": codec.identity(),
        "frame_rate": codec.frame_rate,
        "frontend": phonemizer.version,
        "tagger": phonemizer.tagger,
        "shards": n_shards,
        "utterances": counts,
        "hours": {k: v / 3600 for k, v in seconds.items()},
        "skipped": corpus.skipped + [s for m in metas for s in m["skipped"]],
    }


def _write_shard(path: Path, shard, shard_splits, codec: Codec, phonemizer: Phonemizer):
    ids, splits, seconds, skipped, phonemes, codes = [], [], [], [], [], []
    for u, split in zip(shard, shard_splits, strict=True):
        try:
            ph = phonemizer(u.normalized_text).ids
            wav, sr = readable_audio(u.wav, codec), codec.sample_rate
            c = codec.encode(wav, sr)  # [K, F]
        except (TextError, ValueError) as err:
            skipped.append({"id": u.id, "reason": str(err)})
            continue
        ids.append(u.id)
        splits.append(split)
        seconds.append(wav.shape[-1] / sr)
        phonemes.append(torch.tensor(ph, dtype=torch.int16))
        codes.append(c.to(torch.int16))
    k = codec.n_codebooks
    tensors = {
        "phonemes": torch.cat(phonemes) if phonemes else torch.zeros(0, dtype=torch.int16),
        "phoneme_offsets": _offsets([len(p) for p in phonemes]),
        "codes": torch.cat(codes, dim=1) if codes else torch.zeros(k, 0, dtype=torch.int16),
        "code_offsets": _offsets([c.shape[1] for c in codes]),
    }
    meta = {"ids": ids, "splits": splits, "seconds": seconds, "skipped": skipped}
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)}))


def warn_damaged(path: Path, err: Exception) -> None:
    reason = " ".join(str(err).split())[:200]
    print(f"warning: {path} is damaged ({reason}); making it again", file=sys.stderr)


def _intact_shard(path: Path) -> bool:
    """Whether the shard at `path` exists and reads (header, metadata, every tensor's bytes:
    safetensors refuses a file its header does not exactly cover). A damaged one is named,
    removed and built again: shards are derived files, the same from the same corpus."""
    if not path.is_file():
        return False
    try:
        meta = _shard_meta(path)
        if not isinstance(meta, dict) or not isinstance(meta.get("ids"), list):
            raise ValueError("its metadata is not a shard's")
    except Exception as err:  # noqa: BLE001 - empty, truncated, garbage: all the same here
        warn_damaged(path, err)
        path.unlink()
        return False
    return True


def _intact_manifest(path: Path, n_shards: int) -> dict | None:
    """The cache's manifest if it and every shard it lists are intact, else None (the damaged
    file named, the cache then completed again around its intact shards)."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("shards") != n_shards:
            raise ValueError(f"expected a JSON object listing {n_shards} shards")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        warn_damaged(path, err)
        path.unlink()
        return None
    shard_paths = [path.parent / f"shard-{i:05d}.safetensors" for i in range(n_shards)]
    if not all([_intact_shard(p) for p in shard_paths]):  # every one checked, named, removed
        path.unlink()
        return None
    return manifest


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)


def _shard_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["meta"])


@dataclass
class Item:
    id: str
    phonemes: torch.Tensor  # [P] int64
    codes: torch.Tensor  # [K, F] int64


class CodeDataset(Dataset):
    """One split of a prepared cache, filtered by length; `report` counts what was dropped."""

    def __init__(
        self,
        cache_dir: str | Path,
        split: str,
        *,
        max_frames: int | None = None,
        max_phonemes: int | None = None,
    ):
        cache_dir = Path(cache_dir)
        manifest = json.loads((cache_dir / "manifest.json").read_text())
        self.frame_rate = manifest["frame_rate"]
        self.ids: list[str] = []
        self._phonemes: list[torch.Tensor] = []
        self._codes: list[torch.Tensor] = []
        self.report = {"split": split, "kept": 0, "too_many_frames": 0, "too_many_phonemes": 0}
        for index in range(manifest["shards"]):
            path = cache_dir / f"shard-{index:05d}.safetensors"
            t, meta = load_file(str(path)), _shard_meta(path)
            po, co = t["phoneme_offsets"], t["code_offsets"]
            for j, (uid, s) in enumerate(zip(meta["ids"], meta["splits"], strict=True)):
                if s != split:
                    continue
                n_frames, n_ph = int(co[j + 1] - co[j]), int(po[j + 1] - po[j])
                if max_frames is not None and n_frames > max_frames:
                    self.report["too_many_frames"] += 1
                elif max_phonemes is not None and n_ph > max_phonemes:
                    self.report["too_many_phonemes"] += 1
                else:
                    self.ids.append(uid)
                    self._phonemes.append(t["phonemes"][po[j] : po[j + 1]])
                    self._codes.append(t["codes"][:, co[j] : co[j + 1]])
        self.report["kept"] = len(self.ids)
        if not self.ids:
            raise ValueError(
                f"split {split!r} of {cache_dir} is empty after filtering: {self.report}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Item:
        return Item(self.ids[i], self._phonemes[i].long(), self._codes[i].long())

    @property
    def frame_lengths(self) -> list[int]:
        return [c.shape[1] for c in self._codes]

    @property
    def frames_per_phoneme(self) -> float:
        """Mean audio frames per phoneme over the split (total frames / total phonemes)."""
        return sum(self.frame_lengths) / max(1, sum(len(p) for p in self._phonemes))


class OtherText(Dataset):
    """A split in which item i keeps its own codes but takes the phonemes of item i + 1 (the
    last item takes the first's): teacher-forced bits on it minus bits on the split itself say
    how much a model reads the text ("text reliance"). Frame lengths, so batches, are the
    split's own."""

    def __init__(self, ds: CodeDataset):
        if len(ds) < 2:
            raise ValueError(f"another utterance's text needs >= 2 utterances, got {len(ds)}")
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Item:
        return replace(self.ds[i], phonemes=self.ds[(i + 1) % len(self.ds)].phonemes)

    @property
    def frame_lengths(self) -> list[int]:
        return self.ds.frame_lengths
