"""Where a run's numbers come from: the git commit its code was read at, the machine, the
library versions and the command (a run directory's env.json)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from phonelm import distributed as dist


def git_hash() -> str:
    """HEAD of the checkout this code lives in, `-dirty` when the tree has changes."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=here, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=here).stdout.strip()  # fmt: skip
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


def environment(previous: dict | None = None) -> dict:
    """This process's record; given the run's earlier env.json (a resumed or repeated run),
    that first start's record is kept and this one is added to its `restarts`, so that a
    run's `git` stays the commit it started training at."""
    from importlib.metadata import version

    packages = ["torch", "x-transformers", "encodec", "openai-whisper", "g2p_en", "numpy"]
    now = {
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
    if previous is None:
        return now
    return {**previous, "restarts": [*previous.get("restarts", []), now]}
