"""Speak arbitrary text with a trained run: its best checkpoint, its codec and, unless a flag
says otherwise, its saved generation settings (decoding policy and length guard).

python experiments/synthesize.py RUN_DIR "Any text you like." -o out.wav
python experiments/synthesize.py RUN_DIR --file lines.txt -o out_dir/ --coarse-temperature 0.8
python experiments/synthesize.py RUN_DIR "and then it continues." --prompt-wav p.wav \
    --prompt-text "What the prompt says,"      # VALL-E's continuation: the wav is the continuation
"""

import argparse
import sys
import typing
from dataclasses import fields, replace
from pathlib import Path

import torch

from experiments.generation import guard_frames
from experiments.presets import GenerateConfig
from models.base import ModelConfig
from models.registry import build_backend
from phonelm.audio import load_audio, save_audio
from phonelm.config import ConfigFileError, from_dict
from phonelm.run_dir import RunDir, RunDirError
from phonelm.sampling import GroupSampling, Sampling, utterance_seed
from phonelm.text import Phonemizer, TextError


def load_trained(path: str | Path):
    """-> (backend with the best checkpoint, codec, saved GenerateConfig) of a run directory."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunDirError(
            f"{run.path} does not exist: expected a run directory of experiments/run.py"
        )
    state = run.load_checkpoint("best")
    if state is None:
        raise RunDirError(
            f"{run.checkpoint('best')} not found: is {run.path} a trained run directory?"
        )
    checkpoint = run.checkpoint("best")
    try:
        model_cfg = from_dict(ModelConfig, state["model_config"], where=f"{checkpoint} model")
        generate = from_dict(
            GenerateConfig, run.read_json(run.config).get("generate", {}),
            where=f"{run.config} generate", strict=False,
        )  # fmt: skip
    except ConfigFileError as err:
        raise RunDirError(str(err)) from err
    model = build_backend(model_cfg)
    model.load_state_dict(state["model"])
    return model.eval(), run.codec(), generate


def _parser(hint):
    """str -> value for a field typed `hint` (int, float, or either | None)."""
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]

    def parse(text: str):
        if text.lower() == "none" and type(None) in typing.get_args(hint):
            return None
        return kinds[0](text)

    parse.__name__ = kinds[0].__name__  # argparse names the type in its errors
    return parse


def _add_sampling_flags(ap: argparse.ArgumentParser) -> None:
    """One flag per decoding setting; each defaults to the run's saved value."""
    hints = typing.get_type_hints(GroupSampling)
    for group, what in (("coarse", "codebook 1"), ("fine", "codebooks 2..K")):
        for f in fields(GroupSampling):
            flag = f"--{group}-{f.name.replace('_', '-')}"
            ap.add_argument(flag, type=_parser(hints[f.name]), help=f"{f.name} for {what}")
    ap.add_argument("--repetition-aware", action=argparse.BooleanOptionalAction)
    hints = typing.get_type_hints(Sampling)
    for name in ("ras_window", "ras_ratio", "seed"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=_parser(hints[name]))


def _sampling(saved: Sampling, args) -> Sampling:
    """The saved policy with every flag that was given applied."""

    def override(obj, prefix: str = ""):
        given = {f.name: getattr(args, prefix + f.name, None) for f in fields(obj)}
        return replace(obj, **{k: v for k, v in given.items() if v is not None})

    return replace(
        override(saved),
        coarse=override(saved.coarse, "coarse_"),
        fine=override(saved.fine, "fine_"),
    )


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("text", nargs="?", help="text to speak (or --file)")
    ap.add_argument("--file", help="one utterance per line")
    ap.add_argument("-o", "--output", default="out.wav", help="wav file (text) or folder (--file)")
    ap.add_argument("--max-seconds", type=float, help="length guard (default: the run's)")
    ap.add_argument("--prompt-wav", help="acoustic prompt to continue (with --prompt-text)")
    ap.add_argument("--prompt-text", help="what the prompt wav says")
    _add_sampling_flags(ap)
    args = ap.parse_args(argv)
    if (args.text is None) == (args.file is None):
        ap.error("give either TEXT or --file")
    if (args.prompt_wav is None) != (args.prompt_text is None):
        ap.error("--prompt-wav and --prompt-text go together")
    try:
        lines = [args.text] if args.file is None else Path(args.file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        ap.exit(1, f"cannot read --file {args.file}: {err}\n")
    lines = [line for line in lines if line.strip()] if args.file else lines
    phonemizer = Phonemizer()
    lead = "" if args.prompt_text is None else args.prompt_text.strip() + " "
    try:
        phonemes = [torch.tensor(phonemizer(lead + line).ids) for line in lines]
        model, codec, generate = load_trained(args.run_dir)
        prompts = None
        if args.prompt_wav is not None:
            prompts = [codec.encode(*load_audio(args.prompt_wav))] * len(lines)
    except (TextError, RunDirError, ValueError) as err:
        ap.exit(1, f"cannot synthesise: {err}\n")
    if args.max_seconds is not None:
        generate = replace(generate, max_seconds=args.max_seconds)
    sampling = _sampling(generate.sampling, args)
    outs = model.generate(
        phonemes,
        max_frames=[guard_frames(generate, len(p), codec.frame_rate) for p in phonemes],
        sampling=sampling,
        seeds=[utterance_seed(sampling.seed, line) for line in lines],
        prompts=prompts,
    )
    out = Path(args.output)
    paths = [out] if args.file is None else [out / f"{i:04d}.wav" for i in range(len(lines))]
    for path, line, gen in zip(paths, lines, outs, strict=True):
        if gen.codes.shape[1] == 0:
            print(
                f"warning: the model stopped at once for {line!r}; wrote silence", file=sys.stderr
            )
        audio = codec.decode(gen.codes) if gen.codes.shape[1] else torch.zeros(codec.hop_length)
        save_audio(path, audio, codec.sample_rate)
        note = "" if gen.stopped else " (max-length guard fired: no stop decision)"
        print(f"{path}: {gen.codes.shape[1] / codec.frame_rate:.2f} s{note}")
    return paths


if __name__ == "__main__":
    main()
