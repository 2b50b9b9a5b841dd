"""Backend speed side by side in one run: training throughput and generation real-time factor.

    python bench/backend_speed.py --preset cpu [--steps 5] [--frames 150] [--batch 4]

Training: codes/s (K x real frames) and model FLOPs/s (models/flops.py) over `steps` optimiser
steps on real batches of the preset's cached dataset.
Generation: an untrained model of each backend (it does not stop early) generates `frames`
frames for `batch` test sentences with KV caching; RTF = compute seconds / audio seconds.
"""

import argparse
import dataclasses
import time

import torch

from experiments.presets import preset
from experiments.train import loader_for, optimizer_for
from models.flops import train_step_flops
from models.registry import BACKENDS, build_backend
from phonelm.dataset import prepare
from phonelm.sampling import Sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in sorted(BACKENDS):
        cfg = preset(args.preset, name)
        prepared = prepare(cfg.data, cfg.codec, progress=False)
        torch.manual_seed(0)
        model = build_backend(
            dataclasses.replace(cfg.model, n_codebooks=prepared.codec.n_codebooks)
        )
        opt = optimizer_for(model, cfg.train)
        ds, _, loader = loader_for(
            prepared.cache_dir,
            "train",
            cfg.train,
            cfg.data,
            prepared.codec.frame_rate,
            shuffle=True,
        )
        batches = iter(loader)
        next(batches)  # warm-up batch excluded
        codes, flops, start = 0, 0, time.perf_counter()
        for _ in range(args.steps):
            batch = next(batches)
            out = model(batch)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            codes += batch.codes.shape[1] * int(batch.code_lengths.sum())  # K x real frames
            flops += train_step_flops(model, batch)
        seconds = time.perf_counter() - start
        train_rate, flop_rate = codes / seconds, flops / seconds
        model.eval()
        phonemes = [ds[i].phonemes for i in range(args.batch)]
        start = time.perf_counter()
        outs = model.generate(
            phonemes, max_frames=args.frames, sampling=Sampling(), seeds=list(range(args.batch))
        )
        seconds = time.perf_counter() - start
        audio = sum(o.codes.shape[1] for o in outs) / prepared.codec.frame_rate
        rtf = seconds / max(audio, 1e-9)
        rows.append((name, model.num_params(non_embedding=True), train_rate, flop_rate, rtf))
    base = rows[[r[0] for r in rows].index("valle")]
    print(
        f"preset {args.preset}, {args.threads} threads, generation of {args.batch} x "
        f"{args.frames} frames"
    )
    print(
        f"{'backend':>9} {'non-emb params':>15} {'train codes/s':>14} {'train GFLOP/s':>14} "
        f"{'gen RTF':>8} {'train vs valle':>15} {'gen vs valle':>13}"
    )
    for name, params, rate, flop_rate, rtf in rows:
        print(
            f"{name:>9} {params / 1e6:>14.2f}M {rate:>14.0f} {flop_rate / 1e9:>14.2f} {rtf:>8.2f} "
            f"{rate / base[2]:>14.2f}x {base[4] / rtf:>12.2f}x"
        )


if __name__ == "__main__":
    main()
