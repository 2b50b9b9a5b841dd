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
from pathlib import Path

from experiments.generation import check_generation, generate_split
from experiments.held_out import HeldOut
from experiments.overrides import ConfigError
from experiments.presets import RunConfig, check, check_builds, resolve
from experiments.provenance import environment
from experiments.run_config import check_config, run_config
from experiments.train import Trainer, seed_everything
from models.registry import BACKENDS, build_backend
from phonelm import distributed as dist
from phonelm.codecs import CodecError
from phonelm.corpus import CorpusError
from phonelm.dataset import prepare
from phonelm.run_dir import RunDir, RunDirError
from phonelm.stopping import Terminated, sigterm_raises, stopped
from phonelm.text import TextError


def run_one(args, model_name: str) -> dict:
    """Check everything, then train, evaluate and generate. Nothing is written to the run
    directory until the config, the data, the model and the trainer have all been checked."""
    cfg = run_config(args, model_name)
    check(cfg)
    run = RunDir(Path(args.out) / f"{model_name}-{cfg.preset}-seed{cfg.seed}")
    seed_everything(cfg.seed)
    prepared = prepare(cfg.data, cfg.codec, device=dist.device())  # every rank a share
    cfg = resolve(cfg, prepared)
    check_generation(cfg, prepared)
    resolved = check_config(run, cfg)
    with run.lock() if dist.is_main() else contextlib.nullcontext():  # one process per run
        return train_and_generate(cfg, run, prepared, resolved)


def train_and_generate(cfg: RunConfig, run: RunDir, prepared, resolved: dict) -> dict:
    """Build the model, trainer and held-out loaders (a setting they cannot use is a
    ConfigError, before the run directory is written), train, evaluate the best checkpoint on
    the generated split and generate."""
    model, rate = build_backend(cfg.model), prepared.codec.frame_rate
    check_builds(model, cfg)
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
        held_out = HeldOut(prepared.cache_dir, cfg.generate.split, cfg.train, cfg.data, rate)
    except RunDirError:  # a damaged file of the run (exit 1), not a setting
        raise
    except ValueError as err:  # a batch split or a length filter that cannot work
        raise ConfigError(str(err)) from err
    if dist.is_main():  # the run can start: now it gets its directory
        run.write_json(run.config, resolved)
        run.write_json(run.env, environment(run.read_json(run.env) if run.env.exists() else None))
        run.save_codec(dataclasses.asdict(cfg.codec), prepared.codec)
        run.write_json(run.manifest, prepared.manifest)
        print(f"[{cfg.model.name}] {params / 1e6:.3f}M parameters ({non_embedding / 1e6:.3f}M "
              f"non-embedding), preset {cfg.preset}, K={prepared.codec.n_codebooks}, run dir "
              f"{run.path}", flush=True)  # fmt: skip
    result = {
        "model": cfg.model.name,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "params": params,
        "params_non_embedding": non_embedding,
        "frame_rate": rate,
    }
    result.update(trainer.fit())
    best = run.load_checkpoint("best")
    model.load_state_dict(best["model"])
    result["test"] = held_out.measure(model, trainer.device)  # collective: every rank
    result["best_step"], result["eval_split"] = best["step"], cfg.generate.split
    generation = {  # every rank a share of the sentences
        c: generate_split(model, cfg, prepared, run, trainer.device, c)
        for c in cfg.generate.conditions
    }
    if dist.is_main():
        result["generation"] = generation
        run.write_json(run.test_metrics, result)
    dist.barrier()
    return result


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, help=f"one of {sorted(BACKENDS)} or 'all'")
    ap.add_argument("--preset", default="cpu", help="tiny | cpu | paper")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (preset default)")
    ap.add_argument("--budget-flops", type=float, default=None,
                    help="training compute budget (model FLOPs)")  # fmt: skip
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="safety cap on training minutes")  # fmt: skip
    ap.add_argument("--out", default="results", help="parent of the run directories")
    ap.add_argument("--corpus", default=None,
                    help="an LJSpeech-layout folder (e.g. /data/LJSpeech-1.1), 'embedded' or "
                    "'ljspeech' (download); the preset's corpus by default")  # fmt: skip
    ap.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help="dotted overrides, e.g. train.lr=3e-4 model.dim=128 data.root=/data "
                    "(a second --set adds to the first)")  # fmt: skip
    return ap


def main(argv: list[str] | None = None) -> list[dict]:
    ap = arguments()
    args = ap.parse_args(argv)
    models = sorted(BACKENDS) if args.model == "all" else [args.model]
    if unknown := [m for m in models if m not in BACKENDS]:
        ap.error(f"unknown model {unknown[0]!r}; valid models: {sorted(BACKENDS)} or 'all'")
    dist.init()
    main_process = dist.is_main()  # asked before cleanup, after which every rank looks like 0
    try:
        with sigterm_raises():
            results = [run_one(args, m) for m in models]
    except ConfigError as err:  # a usage error: exit 2, one line, no traceback
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    except (RunDirError, CorpusError, CodecError, TextError, OSError) as err:  # a file: exit 1
        ap.exit(1, f"{ap.prog}: error: {err}\n")
    except (KeyboardInterrupt, Terminated) as err:  # outside training (which checkpoints)
        code, name = stopped(err)
        kept = "the dataset cache, checkpoints, finished samples"
        ap.exit(code, f"{ap.prog}: {name}: stopped; what is written is kept ({kept}): run the "
                "same command to go on\n")  # fmt: skip
    finally:
        dist.cleanup()
    if main_process:
        for r in results:
            print(one_line(r))
    return results


def one_line(r: dict) -> str:
    """A finished run in one line: size, budget, held-out bits, generation speed."""
    bits = r.get("test", {}).get("bits_per_code", float("nan"))
    rtf = next(iter(r.get("generation", {}).values()), {}).get("real_time_factor", float("nan"))
    return (
        f"{r['model']:>9}: {r['params_non_embedding'] / 1e6:.3f}M non-embedding params, "
        f"{r['steps']} steps, {r['codes_seen']} codes, {r['flops']:.3g} FLOPs in "
        f"{r['train_seconds']:.0f} s, held-out bits/code {bits:.3f}, generation RTF {rtf:.2f}"
    )


if __name__ == "__main__":
    main()
