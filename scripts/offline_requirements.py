"""Print the pip requirements for a CPU-only / offline install.

`pyproject.toml` is the truth for a normal install (e.g. on a CUDA machine where torch and
torchaudio come from the same PyTorch index). Two of its packages pull dependencies that break a
CPU-only torch from PyPI: encodec requires an unpinned torchaudio (PyPI's build is a CUDA build that
fails to import beside CPU torch) and openai-whisper requires triton (~1 GB, CUDA only). The install
script installs those two with --no-deps and everything else from this list: the project's
dependencies minus those two and minus torch (installed first), plus their runtime needs.
"""

import sys
import tomllib
from pathlib import Path

NO_DEPS = {"encodec", "openai-whisper"}
# What encodec and openai-whisper need at run time, other than torch/torchaudio/triton.
THEIR_DEPS = ["numba", "tiktoken", "more-itertools"]


def name_of(requirement: str) -> str:
    for sep in "=<>!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.lower()


def main() -> None:
    """`deps`: what to install normally; `no-deps`: what to install with --no-deps."""
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())[
        "project"
    ]
    if sys.argv[1:] == ["no-deps"]:
        print(" ".join(r for r in project["dependencies"] if name_of(r) in NO_DEPS))
    elif sys.argv[1:] == ["deps"]:
        keep = [r for r in project["dependencies"] if name_of(r) not in NO_DEPS | {"torch"}]
        extras = project["optional-dependencies"]
        print(" ".join(keep + THEIR_DEPS + extras["test"] + extras["bench"]))
    else:
        sys.exit("usage: offline_requirements.py deps|no-deps")


if __name__ == "__main__":
    main()
