"""The one trainer for every backend: same data, optimiser, schedule, logging and checkpoints.

AdamW (weight decay on weight matrices and embeddings only), linear warmup + cosine decay to the
end of the budget, gradient clipping, gradient accumulation from a global batch size, a
precision setting (bf16 autocast on CUDA and fp32 on CPU by default; fp16 with loss scaling),
periodic validation (loss and bits-per-code per codebook), metrics.jsonl + TensorBoard, atomic
checkpoints that carry their config (last and best; last also every N steps or minutes if
asked), resume from the run directory. Distributed with DistributedDataParallel under torchrun; only
rank 0 writes.

Budgets: training ends at `steps` optimiser steps or `budget_flops` model FLOPs (counted by
models/flops.py from every real batch, summed over processes), whichever comes first, and the
learning-rate schedule ends there too. `max_minutes` is a safety cap on training time, not the
matching rule. Time and FLOPs count only training steps (data loading, forward, backward,
optimiser): evaluation, checkpoints and logging count against nothing. Every log line and the
summary carry steps, codes seen (the code targets trained on), FLOPs, training wall time and
process CPU time.
"""

import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.base import Backend
from models.flops import train_step_flops
from phonelm import distributed as dist
from phonelm.batching import LengthBucketSampler, collate
from phonelm.config import DataConfig
from phonelm.dataset import CodeDataset
from phonelm.run_dir import RunDir


@dataclass
class TrainConfig:
    steps: int = 2000  # optimiser steps at most
    budget_flops: float | None = None  # model FLOPs (forward + backward) at most
    max_minutes: float | None = None  # safety cap on training time (not a matching rule)
    batch_size: int = 16  # global: utterances per optimiser step, over all processes
    micro_batch_size: int = 16  # per process and forward pass (the rest is accumulation)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 250
    log_every: int = 10
    num_workers: int = 0
    seed: int = 0
    # share of micro-batches whose utterances' leading 10-50% is an acoustic prompt, without
    # loss (VALL-E's continuation; phonelm/batching.py `Batch.with_prompts`); 0: none
    prompt_fraction: float = 0.0
    # the training steps' arithmetic: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "bf16",
    # "fp16" (autocast with loss scaling) or "fp32" (no autocast, and on CUDA no TF32 either;
    # the others allow TF32 matmuls). Evaluation and generation run in fp32 (TF32 as here).
    precision: str = "auto"
    # last.pt also every this many steps / minutes of training, between evaluations (a
    # preemptible job loses at most that much); 0: at evaluations only (every eval_every)
    checkpoint_every: int = 0
    checkpoint_minutes: float = 0.0
    # torch.use_deterministic_algorithms while training, so that the same command gives
    # bitwise the same weights again at the same thread count and device (without it, CPU
    # training of delay and valle with 2 threads differed from run to run; False: faster on
    # some CUDA kernels, reproducible only up to reduction order)
    deterministic: bool = True


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype training steps autocast to (None: plain fp32) for train.precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r}: expected one of {PRECISIONS}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def allow_tf32(precision: str, device: torch.device) -> bool:
    """TF32 matmuls and convolutions on CUDA unless train.precision is fp32 (-> whether on)."""
    on = device.type == "cuda" and precision != "fp32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    return on


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms(on: bool, device: torch.device):
    """torch.use_deterministic_algorithms(on) inside the block, the previous mode after it.
    warn_only: an op without a deterministic kernel warns instead of stopping the run."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if on and device.type == "cuda":  # cuBLAS reads it when it starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def budget_used(step: int, flops: float, cfg: TrainConfig) -> float:
    """The fraction of the budget spent: of cfg.steps, or of cfg.budget_flops if that is nearer."""
    used = step / max(1, cfg.steps)
    return max(used, flops / cfg.budget_flops) if cfg.budget_flops else used


def lr_at(step: int, cfg: TrainConfig, used: float = 0.0) -> float:
    """Linear warmup over cfg.warmup_steps to cfg.lr, then cosine decay to cfg.lr *
    min_lr_ratio at the end of the budget (`used`: the fraction spent, from budget_used)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, used)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def optimizer_for(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Decay on tensors with >= 2 dims (weights, embeddings); none on biases, norms, vectors."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def rng_state() -> dict:
    """Every random stream training may draw from: torch (CPU and CUDA), Python, NumPy; in
    types a weights-only checkpoint can hold."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore rng_state()'s streams, wherever the saved tensors were loaded (torch's CPU
    generator takes only a CPU ByteTensor)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@torch.no_grad()
def evaluate(model: Backend, loader: DataLoader, device) -> dict:
    """Teacher-forced NLL over a whole split (summed over processes) -> bits-per-code etc."""
    model.eval()
    k = model.cfg.n_codebooks
    nll, count = torch.zeros(k, device=device), torch.zeros(k, dtype=torch.long, device=device)
    stop_nll, stop_count = (
        torch.zeros((), device=device),
        torch.zeros((), dtype=torch.long, device=device),
    )
    for batch in loader:
        out = model(batch.to(device))
        nll += out.nll
        count += out.count
        stop_nll += out.stop_nll
        stop_count += out.stop_count
    for t in (nll, count, stop_nll, stop_count):
        dist.all_reduce_sum(t)
    model.train()
    bits = (nll / count.clamp_min(1) / math.log(2)).tolist()
    total = float((nll.sum() + stop_nll) / (count.sum() + stop_count))
    return {
        "loss": total,
        "bits_per_code": float(nll.sum() / count.sum() / math.log(2)),
        "bits_per_code_by_codebook": bits,
        "stop_bits": float(stop_nll / stop_count.clamp_min(1) / math.log(2)),
        "codes": int(count.sum()),
    }


def micro_batches(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(utterances per forward pass, forward passes per step) for each of `world` processes:
    each process takes batch_size / world utterances per step, in micro-batches of at most
    micro_batch_size (the largest size that divides its share)."""
    if cfg.batch_size < 1 or cfg.micro_batch_size < 1:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} and train.micro_batch_size="
            f"{cfg.micro_batch_size} must be >= 1"
        )
    if cfg.batch_size % world:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} does not split over {world} processes: set "
            f"train.batch_size to a multiple of {world}"
        )
    share = cfg.batch_size // world
    micro = max(d for d in range(1, min(share, cfg.micro_batch_size) + 1) if share % d == 0)
    return micro, share // micro


def loader_for(
    cache_dir,
    split: str,
    cfg: TrainConfig,
    data: DataConfig,
    frame_rate: float,
    *,
    shuffle: bool,
    micro_batch: int | None = None,
):
    """Batches of one split, with the data config's length filters applied."""
    try:
        ds = CodeDataset(
            cache_dir,
            split,
            max_frames=int(data.max_seconds * frame_rate),
            max_phonemes=data.max_phonemes,
        )
    except ValueError as err:  # every utterance filtered out: name the settings
        raise ValueError(
            f"the {split} split is empty after the length filters (data.max_seconds="
            f"{data.max_seconds}, data.max_phonemes={data.max_phonemes}): {err}"
        ) from err
    sampler, loader = loader_over(ds, cfg, shuffle=shuffle, micro_batch=micro_batch)
    return ds, sampler, loader


def loader_over(ds, cfg: TrainConfig, *, shuffle: bool, micro_batch: int | None = None):
    """(sampler, loader) of a loaded split (anything with items and `frame_lengths`), in
    length buckets. A training loader (`shuffle`) gives every process the same number of
    batches (repeating a few: DDP steps together); an evaluation loader covers each utterance
    exactly once across the processes (their sums are all-reduced)."""
    sampler = LengthBucketSampler(
        ds.frame_lengths,
        batch_size=micro_batch or cfg.micro_batch_size,
        shuffle=shuffle,
        seed=cfg.seed,
        even=shuffle,
    )
    # the loader's own generator: starting an iterator never draws from torch's global RNG, so
    # a resumed run's random streams match an uninterrupted one
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return sampler, loader


def _say(message: str) -> None:
    """One line on stderr, from the main process only."""
    if dist.is_main():
        print(message, file=sys.stderr, flush=True)


class Interrupted(SystemExit):
    """Training stopped by SIGINT / SIGTERM after writing a checkpoint (exit 128 + signal)."""


class NonFiniteLoss(SystemExit):
    """The training loss became NaN or infinite: stopped at once, nothing written (exit 1)."""


def advance(bar: tqdm, amount: float) -> None:
    """Move a progress bar by one step's share, never past its total: a budgeted run's last
    step overshoots the budget by part of a step (the run's summary reports the FLOPs used),
    and a bar past 100% warns and shows a negative time left."""
    bar.update(max(0.0, min(amount, bar.total - bar.n)))


class Trainer:
    def __init__(
        self,
        model: Backend,
        cfg: TrainConfig,
        *,
        cache_dir,
        run_dir,
        data: DataConfig,
        frame_rate: float,
        extra_state: dict | None = None,
    ):
        self.cfg, self.run = cfg, RunDir(run_dir)
        self.device = dist.device()
        self.model = model.to(self.device)
        self.world = dist.world()
        self.micro, self.accum = micro_batches(cfg, self.world)
        self.ddp = DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.opt = optimizer_for(self.model, cfg)
        self.train_ds, self.sampler, self.train_loader = loader_for(
            cache_dir, "train", cfg, data, frame_rate, shuffle=True, micro_batch=self.micro
        )
        _, _, self.valid_loader = loader_for(
            cache_dir, "valid", cfg, data, frame_rate, shuffle=False, micro_batch=self.micro
        )
        dtype = autocast_dtype(cfg.precision, self.device)
        allow_tf32(cfg.precision, self.device)
        self.autocast = (
            torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        )
        # fp16's loss scaling (a no-op otherwise); its state is checkpointed
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == torch.float16)
        self.extra_state = extra_state or {}
        self.step, self.epoch, self.batch_in_epoch, self.best = 0, 0, 0, float("inf")
        # totals over all processes, training steps only
        self.counts = {"codes_seen": 0, "flops": 0.0, "train_seconds": 0.0, "cpu_seconds": 0.0}
        self.signal: int | None = None
        state = self.run.load_checkpoint("last")
        if state is not None:
            self._check_same_config(state)
            self._resume(state)
        if dist.is_main():  # log lines past the checkpoint were trained again: drop them
            self.run.truncate_metrics(self.step)

    def _check_same_config(self, state: dict) -> None:
        """A checkpoint resumes only the model and training it was made with (config.json may
        be gone or edited: the checkpoint's own copy decides). Settings added since it was
        written count as their defaults."""
        for section, current in (("model", asdict(self.model.cfg)), ("train", asdict(self.cfg))):
            saved = state.get(f"{section}_config", {})
            differ = sorted(k for k in current if k in saved and saved[k] != current[k])
            if differ:
                raise ValueError(
                    f"{self.run.checkpoint('last')} was trained with other {section} settings "
                    f"({', '.join(f'{k}={saved[k]!r}' for k in differ)}); use another --out or "
                    "remove the run directory"
                )

    def _resume(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best = state["batch_in_epoch"], state["best_valid"]
        self.counts = {key: state[key] for key in self.counts}
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_valid": self.best,
            **self.counts,
            "rng": rng_state(),
            **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
            "model_config": asdict(self.model.cfg),
            "train_config": asdict(self.cfg),
            **self.extra_state,
        }

    def _batches(self):
        """Endless micro-batches, resumable at (epoch, batch_in_epoch)."""
        while True:
            self.sampler.set_epoch(self.epoch)
            for i, batch in enumerate(self.train_loader):
                if i < self.batch_in_epoch:
                    continue
                self.batch_in_epoch = i + 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _log(self, record: dict, writer) -> None:
        if not dist.is_main():
            return
        self.run.append_metrics(record)
        for key, value in record.items():
            if isinstance(value, int | float) and key != "step":
                writer.add_scalar(key, value, record["step"])
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    writer.add_scalar(f"{key}/{i}", v, record["step"])

    def _checkpoint(self, *, best: bool) -> None:
        """best.pt before last.pt: last.pt records the best validation loss so far, so a kill
        or a full disk between the two writes leaves last.pt at the step before, whose rerun
        evaluates (bitwise) the same improvement and writes best.pt again; last.pt can never
        name a best that best.pt does not hold."""
        if dist.is_main():
            state = self._state()
            if best:
                self.run.save_checkpoint("best", state)
            self.run.save_checkpoint("last", state)
        dist.barrier()

    def _checkpoint_due(self, last_saved: float) -> bool:
        """A checkpoint between evaluations (train.checkpoint_every steps or
        checkpoint_minutes of training since the last one); the same on every rank, since
        the training seconds are all-reduced."""
        cfg = self.cfg
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            return True
        minutes = (self.counts["train_seconds"] - last_saved) / self.world / 60
        return bool(cfg.checkpoint_minutes) and minutes >= cfg.checkpoint_minutes

    def _out_of_budget(self) -> str | None:
        """Which budget has run out (the same on every rank: counts are global)."""
        cfg, c = self.cfg, self.counts
        if self.step >= cfg.steps:
            return "steps"
        if cfg.budget_flops is not None and c["flops"] >= cfg.budget_flops:
            return "flops"
        if cfg.max_minutes is not None and c["train_seconds"] / self.world >= 60 * cfg.max_minutes:
            return "max_minutes"
        return None

    def _maybe_prompted(self, batch, micro: int):
        """A `prompt_fraction` share of micro-batches get acoustic prompts; the draw depends
        only on (seed, step, micro-batch, rank), so a resumed run draws the same."""
        if self.cfg.prompt_fraction == 0:
            return batch
        key = ((self.cfg.seed * 1_000_003 + self.step) * 64 + micro) * 4096 + dist.rank()
        gen = torch.Generator().manual_seed(key)
        return (
            batch.with_prompts(gen)
            if float(torch.rand((), generator=gen)) < (self.cfg.prompt_fraction)
            else batch
        )

    def _train_step(self, batches) -> dict:
        """One optimiser step; -> its loss, grad norm and counts, summed over all ranks."""
        cfg = self.cfg
        wall, cpu = time.perf_counter(), time.process_time()
        lr = lr_at(self.step, cfg, budget_used(self.step, self.counts["flops"], cfg))
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss_sum, codes, flops = torch.zeros((), device=self.device), 0, 0
        for micro in range(self.accum):
            batch = self._maybe_prompted(next(batches), micro).to(self.device)
            flops += train_step_flops(self.model, batch)
            sync = micro == self.accum - 1 or self.world == 1
            with nullcontext() if sync else self.ddp.no_sync(), self.autocast:
                out = self.ddp(batch)
                self.scaler.scale(out.loss / self.accum).backward()
            # the code targets the loss trained on: K x real frames, but for VALL-E codebook 1
            # and one NAR stage (2 x frames), and never an acoustic prompt
            codes += int(out.count.sum())
            loss_sum += out.loss.detach() / self.accum
        self.scaler.unscale_(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)  # fp16: skipped when a gradient overflowed
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        signalled = float(self.signal or 0)  # any rank's signal stops every rank
        local = [
            loss_sum,
            *(torch.tensor(x, dtype=torch.float64) for x in (codes, flops, wall, cpu, signalled)),
        ]
        totals = dist.all_reduce_sum(torch.stack([t.double().to(self.device) for t in local]))
        loss, codes, flops, wall, cpu, signalled = totals.tolist()
        for key, value in zip(self.counts, (codes, flops, wall, cpu), strict=True):
            self.counts[key] += int(value) if key == "codes_seen" else value
        if signalled and self.signal is None:
            self.signal = signal.SIGTERM  # another rank's
        return {"loss": loss / self.world, "lr": lr, "grad_norm": float(grad_norm), "codes": codes,
                "wall": wall / self.world, "flops": flops}  # fmt: skip

    def _record(self) -> dict:
        """The counts every log line carries (time: mean per process; the rest: totals)."""
        c = self.counts
        return {
            "step": self.step,
            "codes_seen": c["codes_seen"],
            "flops": c["flops"],
            "train_seconds": c["train_seconds"] / self.world,
            "cpu_seconds": c["cpu_seconds"],
        }

    def _on_signal(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def _stop_on_signal(self) -> None:
        """Write a checkpoint of this step, say where, and exit (128 + signal number)."""
        self._checkpoint(best=False)
        name = signal.Signals(self.signal).name
        _say(
            f"\n{name} at step {self.step}: checkpoint written to "
            f"{self.run.checkpoint('last')}; run the same command to resume"
        )
        raise Interrupted(128 + int(self.signal))

    def _progress(self, step_flops: float) -> tuple[tqdm, bool]:
        """The training bar, made after this process's first step (which it counts) and
        counting toward the limit that ends the run: the FLOPs budget (in TFLOPs, so its ETA is
        real), unless the step cap comes first at that step's cost (then steps) -> (the bar,
        whether it counts steps)."""
        shown, budget = dist.is_main(), self.cfg.budget_flops
        if (
            budget is None
            or (self.cfg.steps - self.step) * step_flops < budget - self.counts["flops"]
        ):
            return tqdm(total=self.cfg.steps, initial=self.step, desc="train", unit="step",
                        disable=not shown), True  # fmt: skip
        return tqdm(
            total=self.cfg.budget_flops / 1e12,
            initial=min(self.counts["flops"], self.cfg.budget_flops) / 1e12,
            desc="train (TFLOPs of the budget)",
            unit="TFLOP",
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} [{elapsed}<{remaining}{postfix}]",
            disable=not shown,
        ), False

    def _stop_non_finite(self, loss: float) -> None:
        """One line naming the step and the last good checkpoint; every rank sees the same
        (all-reduced) loss, so every rank stops."""
        last = self.run.checkpoint("last")
        where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint yet"
        _say(
            f"error: training loss is {loss} at step {self.step} ({where}); lower train.lr "
            f"or check the data, and train in another --out than {self.run.path}"
        )
        raise NonFiniteLoss(1)

    def fit(self) -> dict:
        """Train to the end of the budget. SIGINT / SIGTERM end the current step, write a
        checkpoint and exit (Interrupted); the same command resumes."""
        handlers, writer = {}, None
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers[signum] = signal.signal(signum, self._on_signal)
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run.tensorboard))
        try:
            with deterministic_algorithms(self.cfg.deterministic, self.device):
                return self._fit(writer)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if writer is not None:
                writer.close()

    def _fit(self, writer) -> dict:
        cfg = self.cfg
        batches = self._batches()
        self.model.train()
        bar = None
        window = {"codes": 0.0, "wall": 0.0}
        last_saved = self.counts["train_seconds"]
        while (stopped_by := self._out_of_budget()) is None:
            step = self._train_step(batches)
            if bar is None:
                bar, by_steps = self._progress(step["flops"])
            else:
                advance(bar, 1 if by_steps else step["flops"] / 1e12)
            if not math.isfinite(step["loss"]):
                bar.close()
                self._stop_non_finite(step["loss"])
            window = {key: window[key] + step[key] for key in window}
            if self.step % cfg.log_every == 0 or self.step == 1:
                record = {
                    **self._record(),
                    "loss": step["loss"],
                    "lr": step["lr"],
                    "grad_norm": step["grad_norm"],
                    "train_codes_per_s": window["codes"] / max(window["wall"], 1e-9),
                }
                self._log(record, writer)
                bar.set_postfix(step=self.step, loss=f"{step['loss']:.3f}")
                window = {"codes": 0.0, "wall": 0.0}
            if self.signal is not None:  # after this step's log line, before any evaluation
                bar.close()
                self._stop_on_signal()
            if self.step % cfg.eval_every == 0 or self._out_of_budget():
                valid = evaluate(self.model, self.valid_loader, self.device)
                self._log({**self._record(), **{f"valid_{k}": v for k, v in valid.items()}}, writer)
                improved = valid["loss"] < self.best
                self.best = min(self.best, valid["loss"])
                self._checkpoint(best=improved)
                last_saved = self.counts["train_seconds"]
            elif self._checkpoint_due(last_saved):
                self._checkpoint(best=False)
                last_saved = self.counts["train_seconds"]
        if bar is not None:  # None: training had ended before (a resumed, finished run)
            bar.close()
        if self.signal is not None:  # it came during the last evaluation or checkpoint
            self._stop_on_signal()
        if stopped_by == "max_minutes" and self.cfg.budget_flops is not None and dist.is_main():
            print(
                f"warning: train.max_minutes={self.cfg.max_minutes:g} ended training at step "
                f"{self.step}, {self.counts['flops']:.3g} of its {self.cfg.budget_flops:.3g} "
                "FLOPs: this run is not compute-matched (eval/study.py leaves it out); run it "
                "again on a less loaded machine or with a higher train.max_minutes",
                file=sys.stderr,
            )
        return {
            **self._record(),
            "steps": self.step,
            "best_valid_loss": self.best,
            "stopped_by": stopped_by,
        }
