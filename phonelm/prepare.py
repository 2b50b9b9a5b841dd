"""Build a corpus and its dataset cache, then report size, speed and batch padding.

python -m phonelm.prepare                     # embedded corpus, offline codec
python -m phonelm.prepare --corpus /path/to/LJSpeech-1.1 --codec encodec --weights pretrained
torchrun --standalone --nproc_per_node=8 -m phonelm.prepare --corpus ...   # 8 GPUs, a share each

Codes are computed on the GPU when there is one (a cache of its own: another device's rounding
may flip a code), which is where `experiments/run.py` on that machine looks for them.
"""

import argparse
import time
from pathlib import Path

from phonelm import distributed as dist
from phonelm.batching import LengthBucketSampler, collate
from phonelm.codecs import CodecError
from phonelm.config import CodecConfig, DataConfig
from phonelm.corpus import CorpusError, EmbeddedSettings
from phonelm.dataset import CodeDataset, prepare


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", default="embedded", help="embedded | ljspeech | PATH")
    ap.add_argument("--root", default="data", help="where corpora and caches live")
    ap.add_argument("--sentences", type=int, default=EmbeddedSettings.n_sentences)
    ap.add_argument("--codec", default="mel-rvq", help="mel-rvq (offline stand-in) | encodec")
    ap.add_argument("--weights", default="pretrained", help="EnCodec: pretrained | random | PATH")
    ap.add_argument("--bandwidth", type=float, default=None, help="EnCodec kbps (sets K)")
    ap.add_argument("--codebooks", type=int, default=None, help="K (mel-rvq default 4)")
    ap.add_argument("--batch-size", type=int, default=16, help="for the padding report")
    args = ap.parse_args(argv)

    data = DataConfig(
        corpus=args.corpus, root=args.root, embedded=EmbeddedSettings(n_sentences=args.sentences)
    )
    codec = CodecConfig(
        name=args.codec, weights=args.weights, bandwidth=args.bandwidth, n_codebooks=args.codebooks
    )
    start = time.perf_counter()
    dist.init()
    try:
        prepared = prepare(data, codec, device=dist.device())
    except (CorpusError, CodecError) as err:  # a bad corpus or codec setting: one line
        ap.exit(1, f"{ap.prog}: error: {err}\n")
    if not dist.is_main():
        dist.cleanup()
        return {}
    elapsed = time.perf_counter() - start
    m = prepared.manifest
    hours = sum(m["hours"].values())
    train = CodeDataset(
        prepared.cache_dir,
        "train",
        max_frames=int(data.max_seconds * prepared.codec.frame_rate),
        max_phonemes=data.max_phonemes,
    )
    sampler = LengthBucketSampler(train.frame_lengths, batch_size=args.batch_size)
    padding = [collate([train[i] for i in b]).padding_fraction for b in sampler]
    report = {
        "cache": str(prepared.cache_dir),
        "utterances": m["utterances"],
        "hours": round(hours, 3),
        "skipped": len(m["skipped"]),
        "cache_mb": round(dir_size(prepared.cache_dir) / 2**20, 2),
        "build_seconds_per_audio_hour": round(m["build_seconds"] / max(hours, 1e-9), 1),
        "this_run_seconds": round(elapsed, 1),
        "train_filter": train.report,
        "padding_fraction": round(sum(padding) / len(padding), 4),
    }
    for k, v in report.items():
        print(f"{k:>30}: {v}")
    dist.cleanup()
    return report


if __name__ == "__main__":
    main()
