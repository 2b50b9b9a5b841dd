"""A run's config: built from the command line over its preset, and compared with the config
its run directory was made with (a directory belongs to one trained model)."""

import dataclasses
import json
from pathlib import Path

from experiments.overrides import ConfigError, apply
from experiments.presets import RunConfig, preset
from phonelm.config import ConfigFileError, from_dict
from phonelm.run_dir import RunDir


def run_config(args, model: str) -> RunConfig:
    """The preset's config of `model` with the command's flags and `--set` overrides."""
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


def check_config(run: RunDir, cfg: RunConfig) -> dict:
    """A run directory belongs to one trained model: resuming it with another data, codec,
    model, training config or seed is an error (nothing is written here). The `generate`
    section may change: the samples are then made again with the new settings. A saved config
    written before a setting existed reads as that setting's default.
    -> the resolved config as JSON."""
    resolved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if run.config.is_file():
        where = str(run.config)
        try:
            saved = from_dict(RunConfig, run.read_json(run.config), where=where)
        except ConfigFileError as err:
            raise ConfigError(f"{err}: use another --out or remove the directory") from err
        saved = json.loads(json.dumps(dataclasses.asdict(saved)))
        changed = sorted(k for k in resolved if k != "generate" and saved.get(k) != resolved[k])
        if changed:
            raise ConfigError(
                f"{run.path} was made with another config (sections {changed} differ); "
                "use another --out or remove the directory"
            )
    return resolved
