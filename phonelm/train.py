"""The one trainer for every backend: same data, optimiser, schedule, logging and checkpoints.

AdamW (weight decay on weight matrices and embeddings only), linear warmup + cosine decay,
gradient clipping, gradient accumulation from a global batch size, bf16 autocast on CUDA and fp32
on CPU, periodic validation (loss and bits-per-code per codebook), metrics.jsonl + TensorBoard,
atomic checkpoints that carry their config (last and best), resume from the run directory.
Distributed with DistributedDataParallel under torchrun; only rank 0 writes.
"""

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from models.base import Backend
from phonelm import distributed as dist
from phonelm.batching import LengthBucketSampler, collate
from phonelm.dataset import CodeDataset
from phonelm.io import write_with


@dataclass
class TrainConfig:
    steps: int = 2000
    max_minutes: float | None = None  # stop early (after a final validation) past this
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
    max_seconds: float = 15.0  # longer training utterances are filtered out (counted)
    max_phonemes: int = 400
    num_workers: int = 0
    seed: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, cfg: TrainConfig, time_used: float = 0.0) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at the end of the
    budget: cfg.steps, or cfg.max_minutes if that comes first (time_used: the fraction spent).
    Under a time budget the warmup also ends once 5% of the time is spent."""
    warm = max((step + 1) / cfg.warmup_steps, time_used / 0.05) if cfg.warmup_steps else 1.0
    if warm < 1.0:
        return cfg.lr * warm
    done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, max(time_used, done, 0.0))
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


def save_checkpoint(path: Path, state: dict) -> None:
    write_with(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, device="cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=True)


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


def loader_for(cache_dir, split: str, cfg: TrainConfig, frame_rate: float, *, shuffle: bool):
    ds = CodeDataset(
        cache_dir,
        split,
        max_frames=int(cfg.max_seconds * frame_rate),
        max_phonemes=cfg.max_phonemes,
    )
    sampler = LengthBucketSampler(
        ds.frame_lengths, batch_size=cfg.micro_batch_size, shuffle=shuffle, seed=cfg.seed
    )
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers)
    return ds, sampler, loader


class Trainer:
    def __init__(
        self,
        model: Backend,
        cfg: TrainConfig,
        *,
        cache_dir,
        run_dir,
        frame_rate: float,
        extra_state: dict | None = None,
    ):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = dist.device()
        self.model = model.to(self.device)
        self.world = dist.world()
        per_step = cfg.micro_batch_size * self.world
        if cfg.batch_size % per_step:
            raise ValueError(
                f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size "
                f"x processes = {per_step}"
            )
        self.accum = cfg.batch_size // per_step
        self.ddp = DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.opt = optimizer_for(self.model, cfg)
        self.train_ds, self.sampler, self.train_loader = loader_for(
            cache_dir, "train", cfg, frame_rate, shuffle=True
        )
        _, _, self.valid_loader = loader_for(cache_dir, "valid", cfg, frame_rate, shuffle=False)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else nullcontext()
        )
        self.extra_state = extra_state or {}
        self.step, self.epoch, self.batch_in_epoch, self.best = 0, 0, 0, float("inf")
        self.train_seconds = 0.0
        self.ckpt_dir = self.run_dir / "checkpoints"
        if (self.ckpt_dir / "last.pt").is_file():
            self._resume(load_checkpoint(self.ckpt_dir / "last.pt", self.device))

    def _resume(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best = state["batch_in_epoch"], state["best_valid"]
        self.train_seconds = state["train_seconds"]
        torch.set_rng_state(state["rng"])

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_valid": self.best,
            "train_seconds": self.train_seconds,
            "rng": torch.get_rng_state(),
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
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, int | float) and key != "step":
                writer.add_scalar(key, value, record["step"])
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    writer.add_scalar(f"{key}/{i}", v, record["step"])

    def fit(self) -> dict:
        cfg = self.cfg
        writer = None
        if dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        batches = self._batches()
        self.model.train()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not dist.is_main())
        start, codes_seen = time.perf_counter() - self.train_seconds, 0
        # a resumed run whose time budget is spent trains no further (same on every rank:
        # train_seconds comes from the checkpoint)
        time_used = self.train_seconds / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0
        out_of_time = time_used >= 1.0
        window_start = time.perf_counter()
        while self.step < cfg.steps and not out_of_time:
            lr = lr_at(self.step, cfg, time_used)
            for group in self.opt.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=self.device)
            for micro in range(self.accum):
                batch = next(batches).to(self.device)
                sync = micro == self.accum - 1 or self.world == 1
                with nullcontext() if sync else self.ddp.no_sync(), self.autocast:
                    out = self.ddp(batch)
                    (out.loss / self.accum).backward()
                loss_sum += out.loss.detach() / self.accum
                codes_seen += int(out.count.sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            bar.update(1)
            self.train_seconds = time.perf_counter() - start
            if cfg.max_minutes is not None:  # mean over ranks: every rank decides the same
                spent = dist.all_reduce_sum(torch.tensor(self.train_seconds, device=self.device))
                time_used = float(spent) / self.world / (60 * cfg.max_minutes)
                out_of_time = time_used >= 1.0
            if self.step % cfg.log_every == 0 or self.step == 1:
                elapsed = time.perf_counter() - window_start
                codes = torch.tensor(float(codes_seen), device=self.device)
                totals = dist.all_reduce_sum(torch.stack([loss_sum, codes]))  # over all ranks
                loss = float(totals[0]) / self.world
                record = {
                    "step": self.step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "train_codes_per_s": float(totals[1]) / elapsed,
                    "train_seconds": self.train_seconds,
                }
                self._log(record, writer)
                bar.set_postfix(loss=f"{loss:.3f}")
                codes_seen, window_start = 0, time.perf_counter()
            last = self.step == cfg.steps or out_of_time
            if self.step % cfg.eval_every == 0 or last:
                valid = evaluate(self.model, self.valid_loader, self.device)
                self._log(
                    {
                        "step": self.step,
                        "train_seconds": self.train_seconds,
                        **{f"valid_{k}": v for k, v in valid.items()},
                    },
                    writer,
                )
                improved = valid["loss"] < self.best
                self.best = min(self.best, valid["loss"])
                if dist.is_main():
                    state = self._state()
                    save_checkpoint(self.ckpt_dir / "last.pt", state)
                    if improved:
                        save_checkpoint(self.ckpt_dir / "best.pt", state)
                dist.barrier()
        bar.close()
        if writer is not None:
            writer.close()
        return {
            "steps": self.step,
            "train_seconds": self.train_seconds,
            "best_valid_loss": self.best,
            "stopped_by_time": out_of_time,
        }
