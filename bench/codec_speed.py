"""Codec speed, side by side in one run: encode/decode seconds per second of audio.

    python bench/codec_speed.py [--seconds 60] [--threads 2]

Both codecs run on the same espeak-ng speech; EnCodec uses random weights (its speed does not
depend on the weights). Prints x-real-time (audio seconds per compute second) and the ratio.
"""

import argparse
import time

import torch

from phonelm.audio import conform
from phonelm.codecs import EncodecCodec, MelRvqCodec
from phonelm.espeak import synthesize
from phonelm.sentences import sentences


def timed(fn, items, repeat: int = 3) -> float:
    """Best of `repeat` wall times of fn over all items."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="audio to time")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wavs, total = [], 0.0
    for text in sentences(200, seed=7):
        wavs.append(conform(*synthesize(text), 24_000))
        total += wavs[-1].shape[0] / 24_000
        if total >= args.seconds:
            break
    mel = MelRvqCodec(n_codebooks=4)
    mel.fit(wavs)
    enc = EncodecCodec(weights="random", n_codebooks=8)
    enc.fit(wavs)
    results = {}
    for codec in (mel, enc):
        codes = [codec.encode(w, 24_000) for w in wavs]
        t_enc = timed(lambda w, codec=codec: codec.encode(w, 24_000), wavs)
        t_dec = timed(codec.decode, codes)
        results[codec.name] = (total / t_enc, total / t_dec)
        print(
            f"{codec.name:>8} K={codec.n_codebooks}: encode {total / t_enc:7.1f}x real time, "
            f"decode {total / t_dec:7.1f}x real time  ({total:.0f} s of audio, "
            f"{args.threads} threads)"
        )
    (me, md), (ee, ed) = results["mel-rvq"], results["encodec"]
    print(f"mel-rvq / encodec speed ratio: encode {me / ee:.1f}x, decode {md / ed:.1f}x")


if __name__ == "__main__":
    main()
