"""Did two runs compute the same thing? Bitwise, timings aside.

    python experiments/compare_runs.py RUN_A RUN_B                    # exit 0: the same
    python experiments/compare_runs.py RUN_A RUN_B --ignore codes_seen

Compares what training and generation produced: the last checkpoint's weights, the codec, the
generated codes of every condition, metrics.jsonl and test_metrics.json with every timing
(`*seconds*`, `*per_s*`, real-time factors) left out. How a change is shown neutral to the
numbers (docs/study.md: the study's confirmatory commit against the screens' commit): the same
command at both commits, then this.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from phonelm.run_dir import RunDir, RunDirError


def _timeless(value, ignore: frozenset[str]):
    """value with every timing key (and the keys of `ignore`) left out, at any depth."""
    if isinstance(value, dict):
        return {
            k: _timeless(v, ignore)
            for k, v in value.items()
            if not ("seconds" in k or "per_s" in k or "real_time_factor" in k or k in ignore)
        }
    if isinstance(value, list):
        return [_timeless(v, ignore) for v in value]
    return value


def _tensors_differ(a: dict, b: dict, what: str) -> list[str]:
    if a.keys() != b.keys():
        return [f"{what}: other names ({sorted(set(a) ^ set(b))[:5]})"]
    return [f"{what}: {k}" for k in a if not torch.equal(a[k], b[k])]


def _json_differ(a, b, what: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [f"{what}: {k}" for k in keys if a.get(k) != b.get(k)]
    return [] if a == b else [what]


def _codes(run: Path) -> dict[str, torch.Tensor]:
    """{condition/utterance: codes} of every samples folder."""
    out = {}
    for file in sorted(run.glob("samples*/codes.safetensors")):
        out.update({f"{file.parent.name}/{k}": v for k, v in load_file(file).items()})
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def differences(a: str | Path, b: str | Path, ignore=()) -> list[str]:
    """What differs between the runs a and b (empty: bitwise the same, timings aside)."""
    a, b, ignore = Path(a), Path(b), frozenset(ignore)
    found = []
    ca, cb = (RunDir(r).load_checkpoint("last") for r in (a, b))
    if ca is None or cb is None:
        raise RunDirError(f"{a if ca is None else b}: no checkpoint to compare")
    found += _tensors_differ(ca["model"], cb["model"], "weights")
    if (a / "codec.safetensors").read_bytes() != (b / "codec.safetensors").read_bytes():
        found.append("codec.safetensors")
    found += _tensors_differ(_codes(a), _codes(b), "generated codes")
    rows = [[_timeless(json.loads(x), ignore) for x in _lines(r / "metrics.jsonl")] for r in (a, b)]
    if len(rows[0]) != len(rows[1]):
        found.append(f"metrics.jsonl: {len(rows[0])} rows against {len(rows[1])}")
    for i, (x, y) in enumerate(zip(*rows, strict=False)):  # the rows both have
        found += _json_differ(x, y, f"metrics.jsonl row {i + 1}")
    held = [_timeless(json.loads((r / "test_metrics.json").read_text()), ignore) for r in (a, b)]
    found += _json_differ(*held, "test_metrics.json")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("a", help="a run directory")
    ap.add_argument("b", help="another run directory")
    ap.add_argument("--ignore", nargs="*", default=[], help="metric keys to leave out too")
    args = ap.parse_args(argv)
    try:
        found = differences(args.a, args.b, args.ignore)
    except (OSError, RunDirError, json.JSONDecodeError) as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 2
    for line in found:
        print(f"differs: {line}")
    if not found:
        print("bitwise the same: weights, codec, generated codes, metrics (timings aside)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
