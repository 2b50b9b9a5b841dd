"""The run directory: its layout and every read and write of it, in one place.

    <out>/<model>-<preset>-seed<seed>/
        config.json            resolved RunConfig (written once the run can start)
        env.json               git hash, versions, command, world size (later starts: restarts)
        codec.json             CodecConfig; codec.safetensors: fitted codec state
        data_manifest.json     the dataset cache's manifest
        metrics.jsonl          one JSON record per log line / validation
        tensorboard/
        checkpoints/           last.pt, last.prev.pt (the one before), best.pt
        samples/               <id>.wav, codes.safetensors, generation.jsonl (condition `tts`)
        generation_summary.json, scores.json                       (condition `tts`)
        samples-<condition>/, generation_summary-<condition>.json, scores-<condition>.json
                               any other generation condition (`continuation`)
        test_metrics.json

Writes are atomic (temp file + rename), so a kill leaves the old file or the new one. A
checkpoint is read back and checked before it replaces the previous one, which is kept as
`last.prev.pt`; loading falls back from a damaged checkpoint to the newest intact one and names
the damaged file. Readers treat every file as untrusted: a bad one is a `RunDirError` naming it.
"""

import contextlib
import errno
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from phonelm.codecs import Codec, build_codec, codec_class
from phonelm.config import CodecConfig, ConfigFileError, from_dict
from phonelm.io import Busy, FileLock, remove_stale_temps, write_text, write_with


class RunDirError(ValueError):
    """A run-directory file that is missing, damaged or cannot be written; names the file."""


def _no_space(err: Exception) -> bool:
    """ENOSPC, or how torch.save reports a short write: `enforce fail ... unexpected pos`."""
    text = str(err)
    return (
        getattr(err, "errno", None) == errno.ENOSPC
        or "unexpected pos" in text
        or ("No space left" in text)
    )


def atomic_save(path: Path, writer) -> None:
    """write_with, turning a full disk (which torch reports as `enforce fail ... unexpected
    pos`) into an error that names the file; the file that was there is left intact."""
    try:
        write_with(path, writer)
    except (OSError, RuntimeError) as err:
        if _no_space(err):
            raise RunDirError(f"no space left on the device to write {path}") from err
        raise


TTS = "tts"  # the generation condition of text alone; `continuation` adds an acoustic prompt
CONTINUATION = "continuation"
NOVEL = "novel"  # text alone, on the `novel` split: sentences of words never heard in training
CONDITIONS = (TTS, CONTINUATION, NOVEL)


@dataclass(frozen=True)
class Samples:
    """The outputs of one generation condition of a run: `tts` in samples/ (the layout of runs
    made before conditions existed), any other condition in samples-<condition>/."""

    run: Path
    condition: str = TTS

    @property
    def _suffix(self) -> str:
        return "" if self.condition == TTS else f"-{self.condition}"

    dir = property(lambda self: self.run / f"samples{self._suffix}")
    generation = property(lambda self: self.dir / "generation.jsonl")
    codes = property(lambda self: self.dir / "codes.safetensors")
    summary = property(lambda self: self.run / f"generation_summary{self._suffix}.json")
    scores = property(lambda self: self.run / f"scores{self._suffix}.json")

    def wav(self, uid: str) -> Path:
        return self.dir / f"{uid}.wav"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- paths ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / "config.json")
    env = property(lambda self: self.path / "env.json")
    codec_config = property(lambda self: self.path / "codec.json")
    codec_state = property(lambda self: self.path / "codec.safetensors")
    manifest = property(lambda self: self.path / "data_manifest.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    tensorboard = property(lambda self: self.path / "tensorboard")
    checkpoints = property(lambda self: self.path / "checkpoints")
    test_metrics = property(lambda self: self.path / "test_metrics.json")

    def samples(self, condition: str = TTS) -> Samples:
        return Samples(self.path, condition)

    def conditions(self) -> list[str]:
        """The generation conditions whose samples this run has."""
        return [c for c in CONDITIONS if self.samples(c).generation.is_file()]

    @contextlib.contextmanager
    def lock(self):
        """Hold the run directory for this process: a second process on the same directory
        (the same command started twice) is refused with a RunDirError instead of both
        writing into it. A directory that holds nothing else when released is removed (a
        start that failed its checks leaves nothing behind)."""
        path = self.path / ".lock"
        made = [p for p in (self.path, *self.path.parents) if not p.exists()]  # to tidy up
        held = FileLock(path, wait=False)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            held.acquire()
        except Busy:
            raise RunDirError(
                f"{self.path} is in use by another process (the same run started twice?): "
                "wait for it to end, or use another --out"
            ) from None
        except OSError as err:  # --out names a file, or a read-only place
            raise RunDirError(f"cannot write the run directory {self.path} ({err})") from err
        # held: whatever a killed process of this run left half-written goes (it is never
        # read: every write is a temp file renamed, a checkpoint `.new` until verified)
        remove_stale_temps(self.path, older_than=0)
        for stale in self.path.joinpath("checkpoints").glob("*.new.pt"):
            stale.unlink()
        try:
            yield
        finally:
            held.release()
            if [p.name for p in self.path.iterdir()] == [".lock"]:
                path.unlink()
                for folder in made:  # innermost first: the folders this lock made, if empty
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / f"{name}.pt"

    # -- JSON -------------------------------------------------------------------------------
    def read_json(self, path: Path) -> dict:
        """A JSON object from one of the run's files; RunDirError naming it otherwise."""
        try:
            value = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise RunDirError(f"{path} is missing") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunDirError(f"{path} is not valid JSON ({err})") from err
        if not isinstance(value, dict):
            raise RunDirError(f"{path} holds a JSON {type(value).__name__}, expected an object")
        return value

    def write_json(self, path: Path, obj) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
        atomic_save(path, lambda tmp: tmp.write_text(text))

    # -- metrics log ------------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        """Every complete record; a torn last line (a kill mid-write) is left out."""
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_text().splitlines()
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if i == len(lines) - 1:
                    break  # torn by a kill
                raise RunDirError(f"{self.metrics}:{i + 1} is not valid JSON ({err})") from err
        return records

    def truncate_metrics(self, step: int) -> None:
        """Keep the records up to `step` (a resume from the checkpoint of that step)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict) -> Path:
        """Write, read back, then replace: the previous `name` checkpoint is kept as
        `name.prev` until the new one is verified."""
        path, prev = self.checkpoint(name), self.checkpoint(f"{name}.prev")
        new = self.checkpoint(f"{name}.new")
        atomic_save(new, lambda tmp: torch.save(state, tmp))
        try:
            torch.load(new, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure to read back means a bad file
            new.unlink(missing_ok=True)
            raise RunDirError(f"checkpoint {new} did not read back ({err})") from err
        if path.is_file():
            path.replace(prev)
        new.replace(path)
        return path

    def load_checkpoint(self, name: str = "last") -> dict | None:
        """The newest intact of `name`, `name.prev` (and `best` for `last`), its tensors on the
        CPU (load_state_dict moves weights and optimizer state to their device; the RNG states
        must stay CPU ByteTensors); None if there is none at all. Damaged files are named on
        stderr and skipped."""
        candidates = [name, f"{name}.prev"] + (["best"] if name == "last" else [])
        for candidate in candidates:
            path = self.checkpoint(candidate)
            if not path.is_file():
                continue
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - a damaged file: try the next one
                print(f"warning: checkpoint {path} is damaged ({err}); trying an older one",
                      file=sys.stderr)  # fmt: skip
        return None

    # -- codec ------------------------------------------------------------------------------
    def save_codec(self, cfg: dict, codec: Codec) -> None:
        """codec.json: the CodecConfig, and under "provenance" what rebuilds it elsewhere (a
        local checkpoint's content hash); codec.safetensors: a fitted codec's state."""
        provenance = codec.provenance()
        self.write_json(
            self.codec_config, {**cfg, **({"provenance": provenance} if provenance else {})}
        )
        codec.save(self.codec_state)

    def codec(self, device: str = "cpu") -> Codec:
        """The run's codec, rebuilt from codec.json (+ codec.safetensors for a fitted one) on
        any machine that has what it names; RunDirError naming the file when either is
        damaged, CodecError when its weights are not here."""
        saved = dict(self.read_json(self.codec_config))
        provenance, where = saved.pop("provenance", {}), str(self.codec_config)
        try:
            cfg = from_dict(CodecConfig, saved, where=where)
        except ConfigFileError as err:
            raise RunDirError(str(err)) from err
        cfg = codec_class(cfg.name).relocate(cfg, provenance, where=where)
        codec = build_codec(cfg, device=device)
        if codec.needs_fit:
            try:
                codec.load(self.codec_state)
            except (OSError, SafetensorError, KeyError, RuntimeError, ValueError) as err:
                raise RunDirError(f"{self.codec_state} is damaged or missing ({err})") from err
        return codec
