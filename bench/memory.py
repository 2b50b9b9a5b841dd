"""Peak memory of the two jobs that grow with the data: building a dataset cache and scoring.

    python bench/memory.py --cache 10000 --score 1000 --run results/quick/megabyte-cpu-seed0

Each job runs as a child process and its peak resident set size (RSS) is read from the kernel's
accounting of that child (`os.wait4`), so the figure is the job's own, not this script's.

- `--cache N`: a fresh embedded corpus of N sentences and its dataset cache, in a temporary
  root (`python -m phonelm.prepare --sentences N`).
- `--score N`: `eval/score.py` on a copy of the run directory `--run` whose samples are N
  utterances: the codec decodings of the first N cached utterances of the run's corpus, written as
  that run's generations (the scorer does not care who made the codes; a trained model would take
  hours to generate as many). Also scored at N / 10, so the two peaks show how memory grows.
Both jobs stream (one shard / one wav at a time), so their peaks should barely grow with N.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phonelm.audio import save_audio  # noqa: E402
from phonelm.codecs import CodecError  # noqa: E402
from phonelm.config import CodecConfig, DataConfig  # noqa: E402
from phonelm.corpus import EmbeddedSettings  # noqa: E402
from phonelm.dataset import CodeDataset, open_corpus, prepare  # noqa: E402
from phonelm.run_dir import RunDir  # noqa: E402


def peak_rss(argv: list[str]) -> tuple[float, float]:
    """Run argv to completion -> (peak RSS in MiB, wall seconds); a failure is fatal."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(argv)} failed with status {status}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss: KiB on Linux


def fake_generations(run: RunDir, into: Path, n: int) -> int:
    """A copy of `run` whose samples are the codec decodings of n cached utterances."""
    into.mkdir(parents=True)
    copy = RunDir(into)
    for name in ("config", "test_metrics", "codec_config", "codec_state"):
        shutil.copy(getattr(run, name), getattr(copy, name))
    shutil.copy(run.samples().summary, copy.samples().summary)
    (into / "metrics.jsonl").write_text("")
    samples = copy.samples()
    config = run.read_json(run.config)
    data = dict(config["data"])
    data["embedded"] = EmbeddedSettings(**data["embedded"])
    data = DataConfig(**data)
    prepared = prepare(data, CodecConfig(**config["codec"]), progress=False)
    texts = {u.id: u for u in open_corpus(data).items}
    codec, codes, lines = copy.codec(), {}, []
    for split in ("train", "valid", "test"):
        ds = CodeDataset(prepared.cache_dir, split)
        for i in range(min(len(ds), n - len(codes))):
            item = ds[i]
            save_audio(samples.wav(item.id), codec.decode(item.codes), codec.sample_rate)
            codes[item.id] = item.codes.to("cpu").short().contiguous()
            frames = item.codes.shape[1]
            lines.append(
                {
                    "id": item.id,
                    "text": texts[item.id].text,
                    "normalized_text": texts[item.id].normalized_text,
                    "frames": frames,
                    "stopped": True,
                    "real_time_factor": 0.0,
                }
            )
    save_file(codes, str(samples.codes))
    samples.generation.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return len(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache", type=int, default=0, help="sentences in the cache build (0: skip)")
    ap.add_argument("--score", type=int, default=0, help="utterances to score (0: skip)")
    ap.add_argument("--run", help="a complete run directory (for --score)")
    args = ap.parse_args()
    if args.score and not (args.run and (Path(args.run) / "test_metrics.json").is_file()):
        ap.error(f"--score needs --run: a complete run directory, got {args.run!r}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.cache:
            argv = [sys.executable, "-m", "phonelm.prepare", "--root", f"{tmp}/data"]
            rss, seconds = peak_rss([*argv, "--sentences", str(args.cache)])
            rows.append(("dataset cache build", args.cache, rss, seconds))
        for n in sorted({max(1, args.score // 10), args.score} - {0} if args.score else set()):
            out = Path(tmp) / f"scored-{n}"
            try:
                made = fake_generations(RunDir(args.run), out / "run", n)
            except CodecError as err:
                sys.exit(f"{args.run}: {err}")
            script = str(ROOT / "eval" / "score.py")
            rss, seconds = peak_rss([sys.executable, script, str(out)])
            rows.append(("score (with reference rows)", made, rss, seconds))
    print(f"{'job':<30} {'items':>7} {'peak RSS MiB':>13} {'seconds':>8}")
    for job, n, rss, seconds in rows:
        print(f"{job:<30} {n:>7} {rss:>13.0f} {seconds:>8.0f}")


if __name__ == "__main__":
    main()
