"""Pin a fitted codec: runs on this machine with the same data and codec settings encode their
dataset with a finished run's codec (its codec.safetensors) instead of fitting their own. The
fit is not the same across CPUs (docs/data.md), so a study that spans machines pins, on each
new machine, the codec its first run at that K fitted (docs/study.md).

    python experiments/pin_codec.py results/study/confirm/pick-k4-1.8e14/delay-cpu-seed0
    python experiments/pin_codec.py RUN_DIR --data-root /scratch/data   # the runs' data.root

Run it before the runs start (it builds the corpus first if it is not there yet). A dataset
cache encoded with another fit stays on disk unused: cache folders are named by the codec.
"""

import argparse
import dataclasses
from pathlib import Path

from phonelm import distributed as dist
from phonelm.codecs import CodecError
from phonelm.config import DataConfig, from_dict
from phonelm.corpus import CorpusError
from phonelm.dataset import fitted_codec_path, open_corpus
from phonelm.run_dir import RunDir, RunDirError


def pin(run_dir: str | Path, data_root: str | None = None) -> Path:
    """Save the run's fitted codec where this machine's runs look for their fit -> the path.
    RunDirError / CodecError / CorpusError naming what cannot be used."""
    run = RunDir(run_dir)
    config = run.read_json(run.config)
    data = from_dict(DataConfig, config.get("data", {}), where=f"{run.config} data", strict=False)
    if data_root is not None:
        data = dataclasses.replace(data, root=data_root)
    codec = run.codec()
    if not codec.needs_fit:
        raise CodecError(f"{run.codec_config}: codec {codec.name} is not fitted: nothing to pin")
    encoded_with = run.read_json(run.manifest).get("codec_identity")
    if codec.identity() != encoded_with:
        raise RunDirError(
            f"{run.codec_state}: codec {codec.identity()}, but {run.manifest} says the run's "
            f"dataset was encoded with {encoded_with}"
        )
    path = fitted_codec_path(data, codec, open_corpus(data), dist.device())
    codec.save(path)
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", help="a finished run directory (config.json, codec.*, data_manifest)")
    ap.add_argument("--data-root", default=None, help="the runs' data.root (default: the run's)")
    args = ap.parse_args(argv)
    try:
        path = pin(args.run, args.data_root)
    except (RunDirError, CodecError, CorpusError, OSError) as err:
        ap.exit(1, f"{ap.prog}: error: {err}\n")
    print(f"pinned: {path} (runs here with this data root and codec settings encode with it)")
    return path


if __name__ == "__main__":
    main()
