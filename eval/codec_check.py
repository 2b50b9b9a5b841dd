"""Resynthesis ceiling of a codec: encode -> decode held-out audio, then score it like a model.

    python eval/codec_check.py --codec mel-rvq --codebooks 1 2 4 8
    python eval/codec_check.py --codec encodec --weights pretrained --codebooks 2 4 8

Rows: the original audio, then the codec at each K: WER/CER (Whisper, English normaliser on both
sides), log-mel L1 distance to the original, and encode/decode time per second of audio. These are
the ceiling rows of every results table. Writes <out>/<codec>.csv, .md and .jsonl (per utterance).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from eval.asr import Asr
from eval.metrics import error_rates, log_mel_distance
from phonelm.audio import conform, load_audio
from phonelm.config import CodecConfig, DataConfig
from phonelm.dataset import fitted_codec, open_corpus, split_for
from phonelm.io import write_text


def transcribe_all(asr: Asr, wavs: list[torch.Tensor], sr: int, desc: str) -> list[str]:
    return [asr(w, sr) for w in tqdm(wavs, desc=desc, unit="utt")]


def score(name: str, k, refs: list[str], hyps: list[str], extra: dict) -> dict:
    r = error_rates(refs, hyps)
    return {
        "audio": name,
        "codebooks": k,
        "wer": r.wer,
        "cer": r.cer,
        "subs": r.substitutions,
        "dels": r.deletions,
        "ins": r.insertions,
        "words": r.reference_words,
        **extra,
    }


def _arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--codec", default="mel-rvq")
    ap.add_argument("--codebooks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--weights", default="random", help="EnCodec weights")
    ap.add_argument("--corpus", default="embedded")
    ap.add_argument("--root", default="data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances of the split")
    ap.add_argument("--asr", default="tiny.en")
    ap.add_argument("--asr-weights", default=None)
    ap.add_argument("--out", default="results/codec_check")
    return ap


def resynthesis_row(args, k: int, data, corpus, items, originals, refs, asr, seconds):
    """The codec at K = `k`: fitted (or loaded), every original encoded and decoded, the
    resynthesis transcribed -> (its table row, its per-utterance lines)."""
    cfg = CodecConfig(name=args.codec, n_codebooks=k, weights=args.weights)
    start = time.perf_counter()
    codec = fitted_codec(data, cfg, corpus)
    fit_s = time.perf_counter() - start
    enc_s = dec_s = 0.0
    resynth, distances = [], []
    for wav in tqdm(originals, desc=f"{args.codec} K={k}", unit="utt"):
        t0 = time.perf_counter()
        codes = codec.encode(wav, 24_000)
        t1 = time.perf_counter()
        out = codec.decode(codes)
        dec_s += time.perf_counter() - t1
        enc_s += t1 - t0
        resynth.append(out)
        distances.append(log_mel_distance(out, wav))
    hyps = transcribe_all(asr, resynth, codec.sample_rate, f"ASR K={k}")
    timing = {
        "log_mel_l1": sum(distances) / len(distances),
        "encode_ms_per_s": 1000 * enc_s / seconds,
        "decode_ms_per_s": 1000 * dec_s / seconds,
        "fit_or_load_s": fit_s,
    }
    lines = [
        {"audio": f"{args.codec}-K{k}", "id": u.id, "ref": r, "hyp": h, "log_mel_l1": d}
        for u, r, h, d in zip(items, refs, hyps, distances, strict=True)
    ]
    return score(args.codec, k, refs, hyps, timing), lines


def write_tables(args, table: pd.DataFrame, per_utt: list[dict], items, seconds, asr) -> str:
    """<out>/<codec>.csv, .md and .jsonl -> the markdown shown."""
    out = Path(args.out)
    write_text(out / f"{args.codec}.csv", table.to_csv(index=False))
    shown = table[["audio", "codebooks", "wer", "cer", "log_mel_l1", "subs", "dels", "ins"]]
    markdown = shown.to_markdown(index=False, floatfmt=".3f")
    header = (
        f"{len(items)} {args.split} utterances ({seconds / 60:.1f} min), "
        f"ASR {asr.info.engine} {asr.info.model} ({asr.info.weights})\n\n"
    )
    write_text(out / f"{args.codec}.md", header + markdown + "\n")
    write_text(out / f"{args.codec}.jsonl", "".join(json.dumps(r) + "\n" for r in per_utt))
    return header + markdown


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = _arguments().parse_args(argv)
    data = DataConfig(corpus=args.corpus, root=args.root)
    corpus = open_corpus(data)
    items = [u for u in corpus.items if split_for(data, corpus, u) == args.split][: args.limit]
    if not items:
        sys.exit(f"no utterances in split {args.split!r} of {corpus.root}")
    asr = Asr(args.asr, weights=args.asr_weights, cache_dir=Path(args.root) / "asr")
    refs = [u.normalized_text for u in items]
    originals = [conform(*load_audio(u.wav), 24_000) for u in items]
    seconds = sum(w.shape[0] for w in originals) / 24_000
    hyps = transcribe_all(asr, originals, 24_000, "original")
    rows = [score("original", None, refs, hyps, {"log_mel_l1": 0.0})]
    per_utt = [
        {"audio": "original", "id": u.id, "ref": r, "hyp": h}
        for u, r, h in zip(items, refs, hyps, strict=True)
    ]
    for k in args.codebooks:
        row, lines = resynthesis_row(args, k, data, corpus, items, originals, refs, asr, seconds)
        rows.append(row)
        per_utt += lines
    table = pd.DataFrame(rows)
    table["utterances"], table["audio_seconds"] = len(items), round(seconds, 1)
    for key, value in asr.describe().items():
        table[f"asr_{key}"] = value
    print(write_tables(args, table, per_utt, items, seconds, asr))
    return table


if __name__ == "__main__":
    main()
