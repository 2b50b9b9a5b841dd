"""Train a backend, generate the test sentences, and write a run directory.

    python experiments/run.py --model megabyte            # also valle, flat, all
    python experiments/run.py --model all --preset tiny --steps 50 --set train.lr=3e-3
    torchrun --standalone --nproc_per_node=2 experiments/run.py --model flat

The run directory (<out>/<model>-<preset>-seed<seed>/) holds config.json (resolved), env.json
(git hash, versions, command), metrics.jsonl, tensorboard/, checkpoints/ (last.pt, best.pt),
codec.json + codec.safetensors (decode anywhere), samples/ (wav, codes, generation.jsonl; with
`--set generate.conditions='["tts","continuation"]'` also samples-continuation/) and
test_metrics.json. Re-running the same command resumes it.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from experiments.overrides import ConfigError, apply
from experiments.presets import GenerateConfig, RunConfig, check, preset, resolve
from experiments.train import Trainer, evaluate, loader_for, loader_over, seed_everything
from models.registry import BACKENDS, build_backend
from phonelm import distributed as dist
from phonelm.audio import save_audio
from phonelm.codecs import CodecError
from phonelm.corpus import CorpusError
from phonelm.dataset import CodeDataset, OtherText, prepare
from phonelm.run_dir import CONTINUATION, NOVEL, RunDir, RunDirError, atomic_save
from phonelm.sampling import utterance_seed
from phonelm.text import Phonemizer, TextError


def git_hash() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# read when the process starts, with its code: the tree may change while a long run prepares
# its data, and env.json is written after that
GIT_AT_START = git_hash()


def machine() -> dict:
    """The CPU model and count (and GPU names): durations are only comparable on one kind."""
    model = platform.processor()
    try:
        names = [x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                 if x.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu": model, "cpus": os.cpu_count(), "gpus": gpus}


def environment() -> dict:
    from importlib.metadata import version

    packages = ["torch", "x-transformers", "encodec", "openai-whisper", "g2p_en", "numpy"]
    return {
        "git": GIT_AT_START,
        "command": sys.argv,
        "python": platform.python_version(),
        "versions": {name: version(name) for name in packages},
        "platform": platform.platform(),
        "world_size": dist.world(),
        "device": str(dist.device()),
        "machine": machine(),
        "threads": torch.get_num_threads(),
    }


def run_config(args, model: str) -> RunConfig:
    cfg = preset(args.preset, model, seed=args.seed)
    flags = {
        "steps": args.steps,
        "budget_flops": args.budget_flops,
        "max_minutes": args.max_minutes,
    }
    extra = [f"train.{key}={value}" for key, value in flags.items() if value is not None]
    if args.corpus is not None:  # a path on the command line means the working directory's
        named = args.corpus in ("embedded", "ljspeech")
        extra.append(f"data.corpus={args.corpus if named else Path(args.corpus).resolve()}")
    cfg = apply(cfg, extra + list(args.set))
    if cfg.model.name != model:  # the run directory is named by --model
        raise ConfigError(
            f"model.name={cfg.model.name!r} differs from --model {model}: choose the backend "
            "with --model"
        )
    return cfg


def with_new_defaults(saved: dict, current) -> dict:
    """`saved` (a config written by an earlier version) with every field added since then set
    to its dataclass default, so that a new setting left at its default resumes an old run."""
    out = dict(saved)
    for f in dataclasses.fields(current):
        value = getattr(current, f.name)
        if f.name not in out:
            if f.default is not dataclasses.MISSING:
                out[f.name] = json.loads(json.dumps(f.default))
            elif f.default_factory is not dataclasses.MISSING:
                made = f.default_factory()
                made = dataclasses.asdict(made) if dataclasses.is_dataclass(made) else made
                out[f.name] = json.loads(json.dumps(made))
        elif dataclasses.is_dataclass(value) and isinstance(out[f.name], dict):
            out[f.name] = with_new_defaults(out[f.name], value)
    return out


def check_config(run: RunDir, cfg: RunConfig) -> dict:
    """A run directory belongs to one trained model: resuming it with another data, codec,
    model, training config or seed is an error (nothing is written here). The `generate`
    section may change: the samples are then made again with the new settings.
    -> the resolved config as JSON."""
    resolved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if run.config.is_file():
        saved = with_new_defaults(run.read_json(run.config), cfg)
        changed = sorted(k for k in resolved if k != "generate" and saved.get(k) != resolved[k])
        if changed:
            raise ConfigError(
                f"{run.path} was made with another config (sections {changed} differ); "
                "use another --out or remove the directory"
            )
    return resolved


def text_reliance(own: dict, other_text: dict) -> dict:
    """Test bits per code lost when every utterance is scored with another one's text (the
    next in the split), in total and per codebook: ~0 for a model that ignores the text."""
    return {
        "text_reliance_bits": other_text["bits_per_code"] - own["bits_per_code"],
        "text_reliance_bits_by_codebook": [
            o - s
            for o, s in zip(
                other_text["bits_per_code_by_codebook"],
                own["bits_per_code_by_codebook"],
                strict=True,
            )
        ],
    }


def check_generation(cfg: RunConfig, prepared) -> None:
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


@torch.no_grad()
def generate_split(model, cfg: RunConfig, prepared, run: RunDir, device, condition: str) -> dict:
    """Generate the split's sentences under one condition (`tts`: from the text alone;
    `continuation`: after another utterance's codes, given its text + the sentence; `novel`:
    the `novel` split's sentences, of words held out of training, from the text alone): wavs
    of the generated part, codes and one JSON line per utterance."""
    from phonelm.dataset import open_corpus

    gen, samples = cfg.generate, run.samples(condition)
    # the settings these samples depend on (those of runs made before conditions existed, for
    # tts): adding a condition, or another prompt length, leaves the tts samples as they are
    skip = {"conditions"} | ({"prompt_seconds"} if condition != CONTINUATION else set())
    skip |= {"split"} if condition == NOVEL else set()
    settings = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(gen))).items()
                if k not in skip}  # fmt: skip
    if samples.generation.is_file() and samples.summary.is_file():
        try:
            summary = run.read_json(samples.summary)
        except RunDirError:
            summary = {}  # damaged: made again
        if summary.get("generate") == settings:
            return summary
    if samples.dir.is_dir():
        shutil.rmtree(samples.dir)  # made with other generation settings
    ds = CodeDataset(prepared.cache_dir, NOVEL if condition == NOVEL else gen.split)
    texts = {u.id: u for u in open_corpus(cfg.data).items}
    ids = ds.ids[: gen.limit]
    phonemizer, codec = Phonemizer(), prepared.codec
    rate = codec.frame_rate
    prompts = {}
    if condition == CONTINUATION:
        prompts = {
            u: ds[i]
            for u, i in continuation_prompts(ds, ids, int(gen.prompt_seconds * rate)).items()
        }
    records, codes_out = [], {}
    model.eval()
    for start in tqdm(
        range(0, len(ids), gen.batch_size), desc=f"generate {condition}", unit="batch"
    ):
        chunk = ids[start : start + gen.batch_size]
        targets = [phonemizer(texts[i].normalized_text).ids for i in chunk]
        own = [len(ids) for ids in targets]
        if prompts:  # the prompt's text, then the sentence's, phonemised as one text
            lead = [texts[prompts[i].id].normalized_text + " " for i in chunk]
            targets = [
                phonemizer(t + texts[i].normalized_text).ids
                for t, i in zip(lead, chunk, strict=True)
            ]
        phonemes = [torch.tensor(ids, device=device) for ids in targets]
        guards = [guard_frames(gen, n, rate) for n in own]  # the continued part's own guard
        seeds = [utterance_seed(gen.sampling.seed, uid) for uid in chunk]
        given = [prompts[i].codes.to(device) for i in chunk] if prompts else None
        t0 = time.perf_counter()
        outs = model.generate(
            phonemes, max_frames=guards, sampling=gen.sampling, seeds=seeds, prompts=given
        )
        seconds = time.perf_counter() - t0
        frames_total = max(1, sum(o.codes.shape[1] for o in outs))
        for uid, n, out, guard in zip(chunk, own, outs, guards, strict=True):
            audio = codec.decode(out.codes) if out.codes.shape[1] else torch.zeros(0)
            save_audio(samples.wav(uid), audio, codec.sample_rate)
            codes_out[uid] = out.codes.to(torch.int16).contiguous()
            share = seconds * out.codes.shape[1] / frames_total  # batch time, split by frames
            records.append(
                {
                    "id": uid,
                    "text": texts[uid].text,
                    "normalized_text": texts[uid].normalized_text,
                    "phonemes": n,
                    "frames": out.codes.shape[1],
                    "stopped": out.stopped,
                    "guard_frames": guard,
                    "audio_seconds": out.codes.shape[1] / rate,
                    "generate_seconds": share,
                    "real_time_factor": share / max(out.codes.shape[1] / rate, 1e-9),
                    **(
                        {"prompt_id": prompts[uid].id, "prompt_frames": prompts[uid].codes.shape[1]}
                        if prompts
                        else {}
                    ),
                }
            )
    atomic_save(samples.codes, lambda tmp: save_file(codes_out, str(tmp)))
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
    return summary


def run_one(args, model_name: str) -> dict:
    """Check everything, then train, evaluate and generate. Nothing is written to the run
    directory until the config, the data, the model and the trainer have all been checked."""
    cfg = run_config(args, model_name)
    check(cfg)
    run = RunDir(Path(args.out) / f"{model_name}-{cfg.preset}-seed{cfg.seed}")
    seed_everything(cfg.seed)
    if dist.is_main():
        prepared = prepare(cfg.data, cfg.codec)
    dist.barrier()
    if not dist.is_main():
        prepared = prepare(cfg.data, cfg.codec, progress=False)  # rank 0 built it: reuse
    cfg = resolve(cfg, prepared)
    check_generation(cfg, prepared)
    resolved = check_config(run, cfg)
    with run.lock() if dist.is_main() else contextlib.nullcontext():  # one process per run
        return train_and_generate(cfg, run, prepared, resolved)


def train_and_generate(cfg: RunConfig, run: RunDir, prepared, resolved: dict) -> dict:
    """Build the model and trainer (a setting they cannot use is a ConfigError, before the run
    directory is written), train, evaluate the best checkpoint and generate."""
    model_name, rate = cfg.model.name, prepared.codec.frame_rate
    model = build_backend(cfg.model)
    params, non_embedding = model.num_params(), model.num_params(non_embedding=True)
    try:
        trainer = Trainer(
            model,
            cfg.train,
            cache_dir=prepared.cache_dir,
            run_dir=run.path,
            data=cfg.data,
            frame_rate=rate,
            extra_state={"params": params},
        )
        # held-out bits and the text-reliance control on the split that is generated: `valid`
        # for screens and recipe choices, `test` only for the study's final runs
        test_set, _, test_loader = loader_for(
            prepared.cache_dir, cfg.generate.split, cfg.train, cfg.data, rate, shuffle=False
        )
        # the text-reliance control: each utterance's codes with the next one's phonemes
        other_text_loader = (
            loader_over(OtherText(test_set), cfg.train, shuffle=False)[1]
            if len(test_set) > 1
            else None
        )
    except RunDirError:  # a damaged file of the run (exit 1), not a setting
        raise
    except ValueError as err:  # a batch split or a length filter that cannot work
        raise ConfigError(str(err)) from err
    if dist.is_main():  # the run can start: now it gets its directory
        run.write_json(run.config, resolved)
        run.write_json(run.env, environment())
        run.save_codec(dataclasses.asdict(cfg.codec), prepared.codec)
        run.write_json(run.manifest, prepared.manifest)
        print(
            f"[{model_name}] {params / 1e6:.3f}M parameters ({non_embedding / 1e6:.3f}M "
            f"non-embedding), preset {cfg.preset}, K={prepared.codec.n_codebooks}, "
            f"run dir {run.path}",
            flush=True,
        )
    summary = trainer.fit()
    result = {
        "model": model_name,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "params": params,
        "params_non_embedding": non_embedding,
        "frame_rate": rate,
        **summary,
    }
    best = run.load_checkpoint("best")
    model.load_state_dict(best["model"])
    result["test"] = evaluate(model, test_loader, trainer.device)  # collective: every rank
    if other_text_loader is not None:
        result["test"].update(
            text_reliance(result["test"], evaluate(model, other_text_loader, trainer.device))
        )
    result["best_step"] = best["step"]
    result["eval_split"] = cfg.generate.split
    if dist.is_main():
        result["generation"] = {
            c: generate_split(model, cfg, prepared, run, trainer.device, c)
            for c in cfg.generate.conditions
        }
        run.write_json(run.test_metrics, result)
    dist.barrier()
    return result


class Terminated(Exception):
    """SIGTERM outside the training loop (data preparation, evaluation, generation)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminated(signum, frame):
    raise Terminated(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, help=f"one of {sorted(BACKENDS)} or 'all'")
    ap.add_argument("--preset", default="cpu", help="tiny | cpu | paper")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (preset default)")
    ap.add_argument(
        "--budget-flops", type=float, default=None, help="training compute budget (model FLOPs)"
    )
    ap.add_argument(
        "--max-minutes", type=float, default=None, help="safety cap on training minutes"
    )
    ap.add_argument("--out", default="results", help="parent of the run directories")
    ap.add_argument(
        "--corpus",
        default=None,
        help="an LJSpeech-layout folder (e.g. /data/LJSpeech-1.1), 'embedded' or 'ljspeech' "
        "(download); the preset's corpus by default",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        action="extend",  # a second --set adds to the first
        default=[],
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.lr=3e-4 model.dim=128 data.root=/data",
    )
    args = ap.parse_args(argv)
    models = sorted(BACKENDS) if args.model == "all" else [args.model]
    unknown = [m for m in models if m not in BACKENDS]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r}; valid models: {sorted(BACKENDS)} or 'all'")
    dist.init()
    main_process = dist.is_main()  # asked before cleanup, after which every rank looks like 0
    previous = signal.signal(signal.SIGTERM, _terminated) if _main_thread() else None
    try:
        results = [run_one(args, m) for m in models]
    except ConfigError as err:  # a usage error: exit 2, one line, no traceback
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    except (RunDirError, CorpusError, CodecError, TextError, OSError) as err:  # a file: exit 1
        ap.exit(1, f"{ap.prog}: error: {err}\n")
    except (KeyboardInterrupt, Terminated) as err:  # outside training (which checkpoints)
        signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
        ap.exit(
            128 + int(signum),
            f"{ap.prog}: {signal.Signals(signum).name}: stopped; what is written is kept (the "
            "dataset cache, checkpoints, finished samples): run the same command to go on\n",
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        dist.cleanup()
    if main_process:
        for r in results:
            bits = r.get("test", {}).get("bits_per_code", float("nan"))
            rtf = next(iter(r.get("generation", {}).values()), {}).get(
                "real_time_factor", float("nan")
            )
            print(
                f"{r['model']:>9}: {r['params_non_embedding'] / 1e6:.3f}M non-embedding params, "
                f"{r['steps']} steps, {r['codes_seen']} codes, {r['flops']:.3g} FLOPs in "
                f"{r['train_seconds']:.0f} s, test bits/code {bits:.3f}, generation RTF {rtf:.2f}"
            )
    return results


if __name__ == "__main__":
    main()
