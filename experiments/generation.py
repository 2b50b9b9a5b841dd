"""Generation of a run's sentences: the length guard, the acoustic prompts of the continuation
condition, and one condition's samples (wavs, codes, one JSON line per utterance, a summary),
made again only when the settings they depend on change."""

import dataclasses
import json
import shutil
import time

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from experiments.overrides import ConfigError
from experiments.presets import GenerateConfig, RunConfig
from phonelm import distributed as dist
from phonelm.audio import save_audio
from phonelm.dataset import CodeDataset, open_corpus
from phonelm.run_dir import CONTINUATION, NOVEL, RunDir, RunDirError, Samples, atomic_save
from phonelm.sampling import utterance_seed
from phonelm.text import Phonemizer


def check_generation(cfg: RunConfig, prepared) -> None:
    """The guard allows a frame and the corpus has the sentences to generate."""
    frame_rate = prepared.codec.frame_rate
    if int(cfg.generate.max_seconds * frame_rate) < 1:
        raise ConfigError(
            f"generate.max_seconds={cfg.generate.max_seconds} allows no frame at "
            f"{frame_rate:g} frames/s: expected at least {1 / frame_rate:.3g} s"
        )
    counts = prepared.manifest.get("utterances", {})
    needed = {cfg.generate.split} | ({NOVEL} if NOVEL in cfg.generate.conditions else set())
    empty = sorted(s for s in needed if not counts.get(s))
    if empty:
        raise ConfigError(
            f"the corpus has no {' or '.join(map(repr, empty))} utterances to generate "
            f"(splits: {counts}); the `novel` split needs an embedded corpus with "
            "data.embedded.n_novel > 0 or a splits.csv naming it"
        )


def guard_frames(gen: GenerateConfig, phonemes: int, frame_rate: float) -> int:
    """The max-length guard of one utterance: generate.max_seconds, and at most
    generate.frames_per_phoneme frames per phoneme of its own text."""
    return max(1, min(int(gen.max_seconds * frame_rate), int(gen.frames_per_phoneme * phonemes)))


def continuation_prompts(ds: CodeDataset, ids: list[str], max_frames: int) -> dict[str, int]:
    """For each id of `ds`'s split, the index in `ds` of its acoustic prompt: the next utterance
    after it in the split (wrapping around) that is at most `max_frames` long, whole, so that
    its text is known and the continued part says exactly the test sentence (VALL-E's
    cross-utterance prompt). The same for every backend."""
    short = [i for i, n in enumerate(ds.frame_lengths) if 0 < n <= max_frames]
    where = {uid: i for i, uid in enumerate(ds.ids)}
    prompts = {}
    for uid in ids:
        others = [j for j in short if j != where[uid]]
        if not others:
            raise ConfigError(
                f"generate.prompt_seconds allows {max_frames} frames: no other utterance of the "
                f"split is that short (shortest {min(ds.frame_lengths)} frames); raise it"
            )
        prompts[uid] = next((j for j in others if j > where[uid]), others[0])
    return prompts


def _settings(gen: GenerateConfig, condition: str) -> dict:
    """The settings a condition's samples depend on (those of runs made before conditions
    existed, for tts): adding a condition, or another prompt length, leaves the tts samples."""
    skip = {"conditions"} | ({"prompt_seconds"} if condition != CONTINUATION else set())
    skip |= {"split"} if condition == NOVEL else set()
    return {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(gen))).items()
            if k not in skip}  # fmt: skip


def _finished(run: RunDir, samples: Samples, settings: dict, *, tidy: bool = True) -> dict | None:
    """The summary of samples already made with these settings, else None. With `tidy`,
    samples made with other settings (or a damaged summary) are removed; the finished batches
    of a generation stopped midway with these settings are kept (`_Batches`)."""
    if samples.generation.is_file() and samples.summary.is_file():
        try:
            summary = run.read_json(samples.summary)
        except RunDirError:
            summary = {}
        if summary.get("generate") == settings:
            return summary
    if tidy and samples.dir.is_dir() and _Batches(run, samples).settings() != settings:
        shutil.rmtree(samples.dir)
    return None


class _Batches:
    """The finished batches of a generation in progress (samples/partial/): each batch's codes
    and JSON lines, written once its wavs are, so that a stopped generation goes on from the
    next batch. Each utterance's sampling is seeded by its id and batches are the same, so the
    samples are bitwise those of an uninterrupted generation."""

    def __init__(self, run: RunDir, samples: Samples):
        self.run, self.dir = run, samples.dir / "partial"

    def settings(self) -> dict | None:
        try:
            return self.run.read_json(self.dir / "settings.json")
        except RunDirError:  # missing or damaged: nothing to go on from
            return None

    def begin(self, settings: dict) -> None:
        if self.settings() != settings:
            self.run.write_json(self.dir / "settings.json", settings)

    def load(self, start: int) -> tuple[list[dict], dict] | None:
        """-> (records, codes) of the batch at `start` if it was finished, else None."""
        from safetensors.torch import load_file

        try:
            records = self.run.read_json(self.dir / f"{start:06d}.json")["records"]
            return records, load_file(str(self.dir / f"{start:06d}.safetensors"))
        except Exception:  # noqa: BLE001 - missing, torn or damaged: made again
            return None

    def save(self, start: int, records: list[dict], codes: dict) -> None:
        atomic_save(self.dir / f"{start:06d}.safetensors", lambda tmp: save_file(codes, str(tmp)))
        self.run.write_json(self.dir / f"{start:06d}.json", {"records": records})

    def end(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _Sentences:
    """The split's sentences of one condition, with their texts and (continuation) prompts."""

    def __init__(self, cfg: RunConfig, prepared, condition: str):
        gen = cfg.generate
        self.ds = CodeDataset(prepared.cache_dir, NOVEL if condition == NOVEL else gen.split)
        self.texts = {u.id: u for u in open_corpus(cfg.data).items}
        self.ids = self.ds.ids[: gen.limit]
        self.phonemizer, self.rate = Phonemizer(), prepared.codec.frame_rate
        self.prompts = {}
        if condition == CONTINUATION:
            frames = int(gen.prompt_seconds * self.rate)
            self.prompts = {
                u: self.ds[i] for u, i in continuation_prompts(self.ds, self.ids, frames).items()
            }

    def phonemes(self, uid: str) -> tuple[list[int], int]:
        """-> (the phoneme ids the model reads, how many are the sentence's own): a prompt's
        text then the sentence's, phonemised as one text."""
        own = self.phonemizer(self.texts[uid].normalized_text).ids
        if uid not in self.prompts:
            return own, len(own)
        lead = self.texts[self.prompts[uid].id].normalized_text + " "
        return self.phonemizer(lead + self.texts[uid].normalized_text).ids, len(own)

    def record(self, uid: str, n: int, out, guard: int, seconds: float) -> dict:
        frames = out.codes.shape[1]
        prompt = self.prompts.get(uid)
        return {
            "id": uid,
            "text": self.texts[uid].text,
            "normalized_text": self.texts[uid].normalized_text,
            "phonemes": n,
            "frames": frames,
            "stopped": out.stopped,
            "guard_frames": guard,
            "audio_seconds": frames / self.rate,
            "generate_seconds": seconds,
            "real_time_factor": seconds / max(frames / self.rate, 1e-9),
            **({"prompt_id": prompt.id, "prompt_frames": prompt.codes.shape[1]} if prompt else {}),
        }


def _batch(model, sentences: _Sentences, chunk: list[str], gen: GenerateConfig, device):
    """Generate one batch -> [(uid, own phonemes, output, guard, seconds)]: the batch's time
    split by frames."""
    targets = [sentences.phonemes(uid) for uid in chunk]
    guards = [guard_frames(gen, n, sentences.rate) for _, n in targets]  # the sentence's own
    prompts = sentences.prompts
    t0 = time.perf_counter()
    outs = model.generate(
        [torch.tensor(ids, device=device) for ids, _ in targets],
        max_frames=guards,
        sampling=gen.sampling,
        seeds=[utterance_seed(gen.sampling.seed, uid) for uid in chunk],
        prompts=[prompts[u].codes.to(device) for u in chunk] if prompts else None,
    )
    seconds = time.perf_counter() - t0
    frames_total = max(1, sum(o.codes.shape[1] for o in outs))
    return [
        (uid, n, out, guard, seconds * out.codes.shape[1] / frames_total)
        for uid, (_, n), out, guard in zip(chunk, targets, outs, guards, strict=True)
    ]


@torch.no_grad()
def generate_split(
    model, cfg: RunConfig, prepared, run: RunDir, device, condition: str
) -> dict | None:
    """Generate the split's sentences under one condition (`tts`: from the text alone;
    `continuation`: after another utterance's codes, given its text + the sentence; `novel`:
    the `novel` split's sentences, of words held out of training, from the text alone): wavs
    of the generated part, codes and one JSON line per utterance -> the summary (None on
    ranks other than 0). Under torchrun every rank generates a share of the batches (batch i
    on rank i % world) and rank 0 gathers them: bitwise the samples of one process, since
    each utterance's sampling is seeded by its id."""
    gen, samples = cfg.generate, run.samples(condition)
    settings = _settings(gen, condition)
    summary = dist.main_first(lambda: _finished(run, samples, settings, tidy=dist.is_main()))
    if summary is not None:
        return summary if dist.is_main() else None
    sentences, batches = _Sentences(cfg, prepared, condition), _Batches(run, samples)
    dist.main_first(lambda: batches.begin(settings) if dist.is_main() else None)
    model.eval()
    starts = range(0, len(sentences.ids), gen.batch_size)
    mine = starts[dist.rank() :: dist.world()]
    for start in tqdm(mine, desc=f"generate {condition}", unit="batch", disable=not dist.is_main()):
        if batches.load(start) is None:
            chunk = sentences.ids[start : start + gen.batch_size]
            batches.save(
                start, *_generated(model, sentences, chunk, gen, device, samples, prepared)
            )
    dist.barrier()
    summary = (
        _gather(run, samples, batches, starts, settings, condition) if dist.is_main() else None
    )
    dist.barrier()
    return summary


def _generated(model, sentences, chunk, gen, device, samples: Samples, prepared):
    """One batch generated and its wavs written -> (its JSON lines, its codes by id)."""
    codec, records, codes = prepared.codec, [], {}
    for uid, n, out, guard, seconds in _batch(model, sentences, chunk, gen, device):
        audio = codec.decode(out.codes) if out.codes.shape[1] else torch.zeros(0)
        save_audio(samples.wav(uid), audio, codec.sample_rate)
        codes[uid] = out.codes.to(torch.int16).contiguous()
        records.append(sentences.record(uid, n, out, guard, seconds))
    return records, codes


def _gather(run: RunDir, samples: Samples, batches, starts, settings: dict, condition: str):
    """Every finished batch, in order, into the condition's codes, lines and summary."""
    records, codes = [], {}
    for start in starts:
        done = batches.load(start)
        if done is None:
            raise RunDirError(f"{batches.dir}: the batch at {start} was not written")
        records += done[0]
        codes.update(done[1])
    atomic_save(samples.codes, lambda tmp: save_file(codes, str(tmp)))
    audio_s = sum(r["audio_seconds"] for r in records)
    gen_s = sum(r["generate_seconds"] for r in records)
    summary = {
        "condition": condition,
        "utterances": len(records),
        "stopped": sum(r["stopped"] for r in records),
        "guard_fired": sum(not r["stopped"] for r in records),
        "audio_seconds": audio_s,
        "generate_seconds": gen_s,
        "real_time_factor": gen_s / max(audio_s, 1e-9),
        "generate": settings,
    }
    run.write_json(samples.summary, summary)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    atomic_save(samples.generation, lambda tmp: tmp.write_text(lines))
    batches.end()
    return summary
