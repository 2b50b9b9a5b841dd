"""Speed of every backend and of two peers, measured side by side in one run.

    python bench/run.py                      # cpu preset + a 2x-wider size, peers, ~16 min
    python bench/run.py --smoke --out DIR    # seconds: tiny sizes, CI keeps it from rotting

Writes <out>/bench.md, bench.csv and bench_generation.png, each stamped with the command, the
machine, torch's version and the thread count. What is measured:

1. Training: median step time (forward + backward + AdamW, after `--warmup` steps) on real
   batches of the preset's cache; codes/s (K x real frames); model FLOPs/s (models/flops.py);
   MFU = model FLOPs/s / the peak of this machine, taken as a large fp32 matmul timed in the same
   run (its fastest repeat); the share of step time spent waiting for the next batch.
2. Generation: real-time factor (compute seconds / seconds of audio made, all items of the
   batch together) for `--seconds` of audio per item at each `--batches` size, KV-cached (the
   backends' own decoding, models/kv_cache.py), and uncached (the whole sequence recomputed
   every step) at batch 1 for `--peer-seconds` (first size only); the stop class is masked so
   every utterance runs to its length; cost growth = time(longest) / time(half of it), cached.
3. Memory: peak RSS during each phase (a sampling thread; CPU) or peak allocated (CUDA).
4. Data pipeline: seconds of audio per second that the cache build encodes (codec + g2p), read
   from the cache's manifest.
5. Peers at our sizes: lucidrains' MEGABYTE-pytorch (training step, generation without a cache,
   as it ships) against `megabyte`, and x-transformers' AutoregressiveWrapper (KV-cached) over the
   flat ordering against `flat`. Peers are bench-only extras: `pip install MEGABYTE-pytorch`.
CUDA timings synchronise; CPU runs pin the thread count.
"""

import argparse
import dataclasses
import math
import platform
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.presets import preset, resolve  # noqa: E402
from experiments.train import deterministic_algorithms, loader_for, optimizer_for  # noqa: E402
from models.blocks import heads_for  # noqa: E402
from models.flops import train_step_flops  # noqa: E402
from models.registry import BACKENDS, build_backend  # noqa: E402
from phonelm.dataset import prepare  # noqa: E402
from phonelm.sampling import Chooser, Sampling  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory in MiB while the block runs: allocated (CUDA) or RSS sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0.0

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def _poll(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self._rss())
            self._done.wait(0.005)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._done = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._done.set()
            self._thread.join()


def peak_flops(device: torch.device, n: int, seconds: float = 0.25) -> float:
    """FLOP/s of an n x n x n fp32 matmul at its fastest of at least 5 repeats and `seconds` of
    them: the machine's practical peak for MFU. The fastest, not the median: other load only
    ever slows a repeat, and a small matmul (the smoke run's) lasts less than one time slice of
    a busy machine's scheduler, so its median there measured the load (MFU over 1 in a test
    run beside other tests)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times: list[float] = []
    while len(times) < 5 or sum(times) < seconds:
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


class NoStop(Chooser):
    """The run's sampling with codebook 1's stop class masked: every item runs to its limit."""

    def __init__(self, sampling: Sampling, seeds: torch.Tensor, stop: int):
        super().__init__(sampling, seeds)
        self.stop = stop

    def __call__(self, logits, k, frame, history):
        if k == 0 and logits.shape[-1] > self.stop:
            logits = logits.clone()
            logits[:, self.stop] = float("-inf")
        return super().__call__(logits, k, frame, history)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def train_rows(model, train_cfg, batches, device, peak, args) -> dict:
    opt = optimizer_for(model, train_cfg)
    model.train()
    steps, waits, codes, flops = [], [], 0, 0
    with PeakMemory(device) as mem, deterministic_algorithms(train_cfg.deterministic, device):
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            batch = next(batches).to(device)
            wait = time.perf_counter() - start

            def step(batch=batch):
                out = model(batch)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()

            seconds = timed(step, device)
            if i >= args.warmup:
                steps.append(seconds)
                waits.append(wait)
                codes += batch.codes.shape[1] * int(batch.code_lengths.sum())
                flops += train_step_flops(model, batch)
    total = sum(steps)
    return {
        "step_s": statistics.median(steps),
        "codes_per_s": codes / total,
        "gflops_per_s": flops / total / 1e9,
        "mfu": flops / total / peak,
        "data_wait_share": sum(waits) / (sum(waits) + total),
        "train_peak_mib": mem.peak,
    }


def gen_row(name, batch, seconds, took, cached, peak) -> dict:
    return {
        "name": name,
        "batch": batch,
        "audio_s": seconds,
        "gen_s": took,
        "rtf": took / (seconds * batch),  # compute seconds per second of audio made
        "cached": cached,
        "gen_peak_mib": peak,
    }


def generation_rows(name, model, phonemes, frame_rate, device, args, uncached) -> list[dict]:
    """Cached at every --batches x --seconds; if `uncached`, also without a cache (the whole
    sequence recomputed each step, as the MEGABYTE peer generates) at batch 1 and the peers'
    lengths."""
    model.eval()
    stop = model.cfg.codebook_size
    runs = [(b, s, True) for b in args.batches for s in args.seconds]
    runs += [(1, s, False) for s in args.peer_seconds] if uncached else []
    rows = []
    for batch, seconds, cached in runs:
        ph = [phonemes[i % len(phonemes)].to(device) for i in range(batch)]
        frames = max(1, round(seconds * frame_rate))
        limits = torch.full((batch,), frames, device=device)
        chooser = NoStop(Sampling(), torch.arange(batch, device=device), stop)
        decode = partial(model.decode, ph, limits=limits, choose=chooser, cached=cached)
        with PeakMemory(device) as mem, torch.no_grad():
            took = timed(decode, device)
        rows.append(gen_row(name, batch, seconds, took, cached, mem.peak))
    return rows


def peer_megabyte(cfg, batch, frames, device, args) -> tuple[dict, list[dict]]:
    """lucidrains' MEGABYTE at our megabyte's sizes: global dim x depth, local dim x depth."""
    from MEGABYTE_pytorch import MEGABYTE

    k, v = cfg.n_codebooks, cfg.codebook_size
    peer = MEGABYTE(
        num_tokens=v,
        dim=(cfg.dim, cfg.local_dim),
        depth=(cfg.depth, cfg.local_depth),
        max_seq_len=(frames, k),
        dim_head=cfg.dim_head,
        heads=heads_for(cfg.dim, cfg.dim_head),
        ff_mult=cfg.ff_mult,
        flash_attn=True,
    ).to(device)
    opt = torch.optim.AdamW(peer.parameters(), lr=1e-4)
    ids = batch.codes.clamp_min(0).transpose(1, 2).to(device)  # [B, F, K]

    def step():
        loss = peer(ids, return_loss=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    with PeakMemory(device) as mem:
        steps = [timed(step, device) for _ in range(args.steps)]
    train = {"step_s": statistics.median(steps), "train_peak_mib": mem.peak}
    rows = []
    peer.eval()
    for seconds in args.peer_seconds:
        n = max(1, round(seconds * 75))
        peer.max_seq_len = (n, k)
        with PeakMemory(device) as mem, torch.no_grad():
            took = timed(lambda: peer.generate(default_batch_size=1), device)
        rows.append(gen_row("peer: MEGABYTE-pytorch", 1, seconds, took, False, mem.peak))
    return train, rows


def peer_flat(cfg, phonemes, frame_rate, device, args) -> list[dict]:
    """x-transformers' AutoregressiveWrapper, KV-cached, at our flat's sizes and token count."""
    from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

    k, v = cfg.n_codebooks, cfg.codebook_size
    longest = round(max(args.seconds) * frame_rate) * k + len(phonemes[0]) + 1
    net = TransformerWrapper(
        num_tokens=k * v + cfg.n_phonemes,
        max_seq_len=longest,
        attn_layers=Decoder(
            dim=cfg.dim,
            depth=cfg.depth,
            heads=heads_for(cfg.dim, cfg.dim_head),
            attn_dim_head=cfg.dim_head,
            ff_mult=cfg.ff_mult,
            ff_glu=True,
            rotary_pos_emb=True,
            attn_flash=True,
        ),
    )
    wrapper = AutoregressiveWrapper(net).to(device).eval()
    rows = []
    for batch in args.batches:
        prompt = torch.stack([phonemes[0]] * batch).to(device) + k * v
        for seconds in args.seconds:
            tokens = round(seconds * frame_rate) * k
            with PeakMemory(device) as mem, torch.no_grad():
                took = timed(
                    lambda prompt=prompt, tokens=tokens: wrapper.generate(
                        prompt, tokens, cache_kv=True, temperature=1.0
                    ),
                    device,
                )
            rows.append(gen_row("peer: x-transformers flat", batch, seconds, took, True, mem.peak))
    return rows


def sizes(args) -> dict:
    """name -> (preset, model overrides): the preset's models and a 2x-wider size of them."""
    if args.smoke:
        return {"tiny": ("tiny", {})}
    return {"cpu": ("cpu", {}), "cpu-2x-width": ("cpu", {"dim": 384, "local_dim": 256})}


def _arguments(argv) -> argparse.Namespace:
    """The command line, checked, with the smoke or full defaults filled in."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds in all (CI)")
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--seconds", type=float, nargs="+", default=None, help="audio lengths")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--peer-seconds", type=float, nargs="+", default=None)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--matmul", type=int, default=None, help="n of the peak-FLOPs matmul")
    args = ap.parse_args(argv)
    positive = {"--threads": [args.threads], "--steps": [args.steps], "--matmul": [args.matmul],
                "--seconds": args.seconds, "--batches": args.batches,
                "--peer-seconds": args.peer_seconds}  # fmt: skip
    for flag, values in positive.items():
        bad = [v for v in values or [] if v is not None and not (v > 0 and math.isfinite(v))]
        if bad:
            ap.error(f"{flag} takes numbers > 0, got {bad[0]}")
    if args.warmup is not None and args.warmup < 0:
        ap.error(f"--warmup takes a number >= 0, got {args.warmup}")
    args.argv = sys.argv[1:] if argv is None else list(argv)
    smoke = args.smoke
    args.steps = args.steps or (2 if smoke else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)
    args.seconds = args.seconds or ([0.1, 0.2] if smoke else [5.0, 10.0, 20.0])
    args.batches = args.batches or ([1, 2] if smoke else [1, 8])
    args.peer_seconds = args.peer_seconds or ([0.1] if smoke else [2.5, 5.0, 10.0])
    return args


def peer_rows(name, model_cfg, batches, phonemes, rate, device, args, size):
    """The published peers' (train rows, generation rows) beside megabyte and flat."""
    train, gen = [], []
    try:
        if name == "megabyte":
            batch = next(batches)
            peer_train, rows = peer_megabyte(model_cfg, batch, batch.codes.shape[-1], device, args)
            train.append({"size": size, "name": "peer: MEGABYTE-pytorch", **peer_train})
            gen += [{"size": size, **r} for r in rows]
        if name == "flat":
            gen += [{"size": size, **r} for r in peer_flat(model_cfg, phonemes, rate, device, args)]
    except ImportError as err:
        print(f"peer skipped ({err}): pip install MEGABYTE-pytorch", file=sys.stderr)
    return train, gen


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = _arguments(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    peak = peak_flops(device, args.matmul or (256 if args.smoke else 2048))
    train, gen, cache = [], [], {}
    for size, (preset_name, changes) in sizes(args).items():
        for name in sorted(BACKENDS):
            cfg = preset(preset_name, name)
            cfg.data.root = args.data_root
            prepared = prepare(cfg.data, cfg.codec, progress=False)
            rate = prepared.codec.frame_rate
            m = prepared.manifest
            cache[size] = sum(m["hours"].values()) * 3600 / max(m["build_seconds"], 1e-9)
            model_cfg = dataclasses.replace(resolve(cfg, prepared).model, **changes)
            torch.manual_seed(0)
            model = build_backend(model_cfg).to(device)
            ds, _, loader = loader_for(
                prepared.cache_dir, "train", cfg.train, cfg.data, rate, shuffle=True
            )
            batches = iter(loader)
            row = train_rows(model, cfg.train, batches, device, peak, args)
            train.append({"size": size, "name": name, **row})
            phonemes = [ds[i].phonemes for i in range(8)]
            first = size == next(iter(sizes(args)))
            for r in generation_rows(name, model, phonemes, rate, device, args, first):
                gen.append({"size": size, **r})
            if first and not args.no_peers:
                peers = peer_rows(name, model_cfg, batches, phonemes, rate, device, args, size)
                train, gen = train + peers[0], gen + peers[1]
    gen = pd.DataFrame(gen)
    gen.attrs["cache"] = cache
    return report(args, device, peak, pd.DataFrame(train), gen)


def stamp(args, device, peak) -> str:
    return (
        f"command: `{' '.join(['python', 'bench/run.py', *args.argv])}`; machine: "
        f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads), "
        f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
        f"torch {torch.__version__}; peak fp32 matmul {peak / 1e9:.1f} GFLOP/s"
    )


def targets(train: pd.DataFrame, gen: pd.DataFrame, growth: pd.DataFrame, seconds: float):
    """Issue 10's targets at the first size, as (target, measured, met) rows."""
    size = train["size"].iloc[0]
    train, gen = train[train["size"] == size], gen[gen["size"] == size]
    rows = []

    def add(what, value, ok):
        rows.append({"target": what, "measured": f"{value:.3g}", "met": "yes" if ok else "no"})

    step = dict(zip(train.name, train.step_s, strict=True))
    if "megabyte" in step and "peer: MEGABYTE-pytorch" in step:
        ratio = step["megabyte"] / step["peer: MEGABYTE-pytorch"]
        add("megabyte training step / MEGABYTE-pytorch's <= 0.8", ratio, ratio <= 0.8)
    for name, mfu in zip(train.name, train.mfu, strict=True):
        if not name.startswith("peer") and mfu == mfu:
            add(f"{name} training MFU >= 30%", 100 * mfu, mfu >= 0.3)
    one = gen[(gen.batch == 1) & gen.cached & (gen.audio_s == seconds)]
    rtf = dict(zip(one.name, one.rtf, strict=True))
    for name, limit in (("megabyte", 0.3), ("valle", 0.3), ("delay", 0.3), ("flat", 1.0)):
        if name in rtf:
            add(f"{name} batch-1 RTF at {seconds:g} s <= {limit:g}", rtf[name], rtf[name] <= limit)
    peers = gen[(gen.batch == 1) & (gen.audio_s == 10.0)]
    took = {(n, c): t for n, c, t in zip(peers.name, peers.cached, peers.gen_s, strict=True)}
    for ours, peer, cached, goal in (
        ("megabyte", "peer: MEGABYTE-pytorch", False, 10.0),
        ("flat", "peer: x-transformers flat", True, None),  # reported, no target
    ):
        if (ours, True) in took and (peer, cached) in took:
            speedup = took[(peer, cached)] / took[(ours, True)]
            what = f"{peer[6:]} / {ours} time for 10 s of audio"
            if goal is None:
                rows.append({"target": f"{what} (no target)", "measured": f"{speedup:.3g}"})
            else:
                add(f"{what} >= {goal:g}", speedup, speedup >= goal)
    for g in growth[growth["size"] == size].itertuples() if len(growth) else []:
        if not g.name.startswith("peer"):
            add(f"{g.name} batch-{g.batch} cost growth <= 2.2", g.growth, g.growth <= 2.2)
    return pd.DataFrame(rows)


def cost_growth(gen: pd.DataFrame, longest: float, half: float) -> pd.DataFrame:
    """Cached generation's time at the longest audio over its time at half of it."""
    growth = []
    for (size, name, batch), g in gen[gen.cached].groupby(["size", "name", "batch"]):
        t = dict(zip(g.audio_s, g.gen_s, strict=True))
        if longest in t and half in t:
            growth.append(
                {"size": size, "name": name, "batch": batch, "growth": t[longest] / t[half]}
            )
    return pd.DataFrame(growth)


def report_lines(head: str, train: pd.DataFrame, gen: pd.DataFrame, longest: float) -> list[str]:
    """bench.md, a line a list entry."""
    half = longest / 2
    growth = cost_growth(gen, longest, half)
    goals = targets(train, gen, growth, longest)
    md = [
        "# PhoneLM speed benchmark", "", head, "",
        "## Training", "", train.to_markdown(index=False, floatfmt=".3g"), "",
        "## Generation", "", gen.to_markdown(index=False, floatfmt=".3g"), "",
        f"## Cost growth: time({longest:g} s) / time({half:g} s)", "",
        growth.to_markdown(index=False, floatfmt=".3g") if len(growth) else "(n/a)", "",
        "## Targets (issue 10)", "", goals.to_markdown(index=False) if len(goals) else "(n/a)", "",
        "## Data pipeline", "",
        *(
            f"- {size}: cache build encoded {audio:.0f} s of audio per second (codec + g2p)"
            for size, audio in gen.attrs.get("cache", {}).items()
        ),
    ]  # fmt: skip
    mb = train[train.name == "megabyte"].head(1)
    peer = train[train.name == "peer: MEGABYTE-pytorch"]
    if len(mb) and len(peer):
        ratio = float(mb.step_s.iloc[0] / peer.step_s.iloc[0])
        md += ["", f"megabyte / MEGABYTE-pytorch training step time: {ratio:.2f}"]
    return md


def report(args, device, peak, train: pd.DataFrame, gen: pd.DataFrame) -> pd.DataFrame:
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = stamp(args, device, peak)
    md = report_lines(head, train, gen, max(args.seconds))
    (out / "bench.md").write_text("\n".join(md) + "\n")
    both = pd.concat([train.assign(kind="train"), gen.assign(kind="generate")])
    both.to_csv(out / "bench.csv", index=False)
    plot = sns.relplot(data=gen, x="audio_s", y="gen_s", hue="name", style="batch", col="size",
                       kind="line", marker="o")  # fmt: skip
    plot.set(yscale="log", xlabel="audio seconds", ylabel="generation seconds")
    plot.figure.suptitle(head[:160], fontsize=7, y=1.02)
    plot.savefig(out / "bench_generation.png", dpi=110, bbox_inches="tight")
    print("\n".join(md))
    return both


if __name__ == "__main__":
    main()
