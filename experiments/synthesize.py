"""Speak arbitrary text with a trained run: its best checkpoint and its codec.

python experiments/synthesize.py RUN_DIR "Any text you like." -o out.wav
python experiments/synthesize.py RUN_DIR --file lines.txt -o out_dir/ --temperature 0.8
"""

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import torch

from models.base import ModelConfig
from models.registry import build_backend
from phonelm.audio import save_audio
from phonelm.codecs import build_codec
from phonelm.config import CodecConfig
from phonelm.sampling import Sampling
from phonelm.text import Phonemizer, TextError
from phonelm.train import load_checkpoint


def load_run(run_dir: str | Path):
    """-> (backend with the best checkpoint, codec) of a run directory."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} not found: is {run_dir} a finished run directory?")
    state = load_checkpoint(ckpt)
    model = build_backend(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    codec_cfg = CodecConfig(**json.loads((run_dir / "codec.json").read_text()))
    codec = build_codec(codec_cfg)
    if codec.needs_fit:
        codec.load(run_dir / "codec.safetensors")
    return model.eval(), codec


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("text", nargs="?", help="text to speak (or --file)")
    ap.add_argument("--file", help="one utterance per line")
    ap.add_argument("-o", "--output", default="out.wav", help="wav file (text) or folder (--file)")
    ap.add_argument("--max-seconds", type=float, default=20.0)
    defaults = Sampling()
    for f in fields(Sampling):
        kind = type(getattr(defaults, f.name))
        if kind is bool:
            ap.add_argument(f"--{f.name.replace('_', '-')}", action="store_true")
        else:
            ap.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=float if kind is float else int,
                default=getattr(defaults, f.name),
            )
    args = ap.parse_args(argv)
    if (args.text is None) == (args.file is None):
        ap.error("give either TEXT or --file")
    lines = [args.text] if args.file is None else Path(args.file).read_text().splitlines()
    lines = [line for line in lines if line.strip()] if args.file else lines
    phonemizer = Phonemizer()
    try:
        phonemes = [torch.tensor(phonemizer(line).ids) for line in lines]
    except TextError as err:
        sys.exit(f"cannot synthesise: {err}")
    sampling = Sampling(**{f.name: getattr(args, f.name) for f in fields(Sampling)})
    model, codec = load_run(args.run_dir)
    outs = model.generate(
        phonemes, max_frames=int(args.max_seconds * codec.frame_rate), sampling=sampling
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
