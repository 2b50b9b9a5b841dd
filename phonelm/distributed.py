"""torch.distributed helpers; every one is a no-op at world size 1.

Launch N processes with `torchrun --standalone --nproc_per_node=N experiments/run.py ...`, or
across nodes with `torchrun --nnodes=M --node_rank=R --rdzv_endpoint=HOST:PORT ...`: the same
script then uses DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# How long a collective waits for every rank. Rank 0 alone prepares the data and generates
# the sentences while the others wait at a barrier: at LJSpeech scale that is hours, well past
# the libraries' default (10 minutes for nccl, 30 for gloo). PHONELM_COLLECTIVE_TIMEOUT (s).
DEFAULT_TIMEOUT_S = 6 * 3600


def collective_timeout() -> timedelta:
    raw = os.environ.get("PHONELM_COLLECTIVE_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"PHONELM_COLLECTIVE_TIMEOUT={raw!r}: expected seconds > 0")
    return timedelta(seconds=seconds)


def init() -> None:
    """Join the process group torchrun describes in the environment (if any)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=collective_timeout())


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def main_first(make):
    """make() on rank 0, then on the other ranks, which see what rank 0 wrote (a corpus, a
    fitted codec, a tidied folder) -> what each rank's make() returned."""
    made = make() if is_main() else None
    barrier()
    return made if is_main() else make()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
