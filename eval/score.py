"""Score every run directory under a results folder and write the comparison.

    python eval/score.py results/ [--asr tiny.en] [--force] [--report-sentences 10]

Per run and generation condition (`tts`; `continuation`, scored on the continued part only,
which says exactly the test sentence): WER/CER of Whisper transcripts of the generated audio
against the input text (Whisper's English normaliser on both sides), repetition (loop rate,
code-level and transcript-level), duration ratio, test bits-per-code (per codebook) and bits per
second, generation real-time factor and training throughput. Reference rows: ground-truth audio
and its codec resynthesis, scored the same way on the same sentences. Writes summary.csv,
summary.md, plots/*.png and report.html. Scores are cached per run and condition (scores.json,
scores-<condition>.json) with the scoring settings: runs already scored with the same settings
are not scored again (--force rescores). Incomplete or corrupt run
directories are reported and skipped.
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import soundfile as sf
import torch

from eval.asr import Asr, AsrError
from eval.metrics import MCD_RATE, error_rates, mel_cepstral_distortion, normalize_transcript
from eval.repetition import code_repetition, loop_rate, transcript_repetition
from eval.runs import Run, RunError, find_runs, load_runs
from eval.stats import backend_intervals, pairwise_effects, seed_tests, utterance_tests
from experiments.provenance import machine
from phonelm.audio import conform, load_audio, save_audio
from phonelm.codecs import CodecError
from phonelm.io import Busy, FileLock, digest, write_json, write_text
from phonelm.run_dir import NOVEL, RunDirError
from phonelm.stopping import Terminated, sigterm_raises, stopped

SCORE_VERSION = 3


def arithmetic(device: str) -> dict:
    """What a score depends on besides its inputs, the ASR weights and the settings: the same
    codes decode and transcribe slightly differently on another CPU, vector unit, thread count
    or torch (a delay run rescored on an AMD EPYC (AVX2) moved its CER from 0.2721 to 0.2711
    against an Intel Xeon's scoring). Scores are keyed by it, and a study is scored on one."""
    where = machine()
    return {
        "cpu": where["cpu"],
        "vector_unit": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "gpus": where["gpus"] if device != "cpu" else [],
    }


def scoring(scores: dict) -> str:
    """What a scores file was made with: the ASR and the machine's arithmetic."""
    return json.dumps({k: scores.get(k) for k in ("asr", "scored_on")}, sort_keys=True)


class ScoringError(RuntimeError):
    """A folder that holds scores made another way than this command would make them."""


def _made_with(saved: dict) -> str:
    """'tiny.en (8f3c...) on Intel Xeon (AVX512, 1 thread, torch 2.13.0, cpu)'."""
    asr, on = saved.get("asr") or {}, saved.get("scored_on")
    weights = f"{asr.get('model')} ({asr.get('tensors_sha256') or asr.get('sha256') or '?'})"
    if not on:
        return f"{weights}, machine not recorded"
    return (f"{weights} on {on['cpu']} ({on['vector_unit']}, {on['threads']} thread(s), "
            f"torch {on['torch']}, {on['device']})")  # fmt: skip


def refuse_other_scorings(out: Path, runs: list[Run], made: dict) -> None:
    """A folder is scored one way: one ASR, one machine's arithmetic (eval/study.py refuses a
    study whose scores mix two). Scores of another way under `out` are not silently replaced
    run by run: the command stops and says how to go on."""
    files = [run.samples.scores for run in runs] + sorted(out.glob("**/references/*/scores.json"))
    others = [(f, saved) for f in files if (saved := cached(f)) and scoring(saved) != scoring(made)]
    if others:
        path, saved = others[0]
        raise ScoringError(
            f"{out} holds {len(others)} scores file(s) made another way (e.g. {path}: "
            f"{_made_with(saved)}) than this command makes them ({_made_with(made)}); a "
            "folder is scored one way, so score it where those were made, or pass "
            "--rescore-others to score them again here (an interrupted pass goes on with the "
            "same command; scores made here are kept), or --force to score everything again"
        )


def _utterance_scores(ref: str, hyp: str, codes, extra: dict, second: str | None = None) -> dict:
    """One utterance's scores; `second`: the second ASR's transcript, if one is used."""
    rates = error_rates([ref], [hyp])
    if second is not None:
        extra = {**extra, "hyp_second": second, "wer_second": error_rates([ref], [second]).wer}
    return {
        "ref": ref,
        "hyp": hyp,
        "wer": rates.wer,
        "wer_capped": min(1.0, rates.wer),
        "cer": rates.cer,
        "insertions": rates.insertions,
        "words": rates.reference_words,
        "code_repetition": code_repetition(codes),
        "code_repetition_cb1": code_repetition(codes[:1]),
        "transcript_repetition": transcript_repetition(normalize_transcript(hyp)),
        **extra,
    }


def _summary(utts: list[dict]) -> dict:
    """The run's scores over its utterances. Headline: `wer_mean`, the mean of per-utterance
    WER (as seed-tts-eval reports it); beside it the pooled `wer` (errors over all reference
    words), the median, the mean with each utterance capped at 1 (a looped transcript counts
    at most one sentence of errors), CER both ways and the mel-cepstral distortion."""
    rates = error_rates([u["ref"] for u in utts], [u["hyp"] for u in utts])
    mean = lambda key: sum(u[key] for u in utts) / len(utts)  # noqa: E731
    mcd = [u["mcd"] for u in utts if u.get("mcd") is not None and not math.isnan(u["mcd"])]
    second = {"wer_mean_second": mean("wer_second")} if "wer_second" in utts[0] else {}
    return {
        **second,
        "wer_mean": mean("wer"),
        "wer": rates.wer,
        "wer_median": float(statistics.median(u["wer"] for u in utts)),
        "wer_capped": mean("wer_capped"),
        "cer_mean": mean("cer"),
        "cer": rates.cer,
        "mcd": sum(mcd) / len(mcd) if mcd else math.nan,
        "substitutions": rates.substitutions,
        "deletions": rates.deletions,
        "insertions": rates.insertions,
        "insertion_rate": rates.insertions / max(1, rates.reference_words),
        "code_repetition": mean("code_repetition"),
        "code_repetition_cb1": mean("code_repetition_cb1"),
        "transcript_repetition": mean("transcript_repetition"),
        "utterances": len(utts),
    }


def cached(path: Path, **expected) -> dict | None:
    """A score cache, if it is readable JSON made with the expected settings: every cache file
    is untrusted, and a bad one is scored again, never fatal."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = isinstance(saved, dict) and all(saved.get(k) == v for k, v in expected.items())
    return saved if ok else None


def _listen(asr: Asr, second: Asr | None, wav, sr: int, speaks: bool = True):
    """(transcript, second ASR's transcript or None) of one clip; '' for an empty one."""
    if not speaks:
        return "", ("" if second else None)
    return asr(wav, sr), (second(wav, sr) if second else None)


def score_run(run: Run, asr: Asr, key: str, force: bool, second: Asr | None = None) -> dict:
    cache = run.samples.scores
    saved = None if force else cached(cache, key=key)
    if saved is not None:
        return saved
    corpus, codec = run.corpus(), run.codec()
    utts = []
    for g in run.generations:
        wav, sr = load_audio(run.wav(g["id"]))
        hyp, hyp_second = _listen(asr, second, wav[0], sr, bool(g["frames"]))
        true_wav = conform(*load_audio(corpus[g["id"]].wav), MCD_RATE)
        truth = sf.info(str(corpus[g["id"]].wav)).duration
        utts.append(
            _utterance_scores(
                g["normalized_text"],
                hyp,
                run.codes[g["id"]].numpy(),
                {
                    "id": g["id"],
                    "stopped": g["stopped"],
                    "frames": g["frames"],
                    "duration_ratio": g["frames"] / codec.frame_rate / truth,
                    "real_time_factor": g["real_time_factor"],
                    "mcd": mel_cepstral_distortion(conform(wav[0], sr, MCD_RATE), true_wav),
                },
                hyp_second,
            )
        )
    summary = _summary(utts)
    summary["loop_rate"] = loop_rate([u["stopped"] for u in utts])
    summary["duration_ratio"] = sum(u["duration_ratio"] for u in utts) / len(utts)
    result = {"key": key, "asr": asr.describe(), "scored_on": arithmetic(asr.device)}
    result |= {"summary": summary, "utterances": utts}
    if second is not None:
        result["second_asr"] = second.describe()
    write_json(cache, result)
    return result


def _codec_settings(saved: dict) -> dict:
    """codec.json as the reference rows' key: a local checkpoint by its content (sha256), not
    by the path it lay at, so one checkpoint at two paths is one codec."""
    sha = saved.get("provenance", {}).get("checkpoint_sha256")
    return {**saved, "weights": f"sha256:{sha}"} if sha else saved


def _reference_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs that share a corpus, codec and generated split (hence reference rows)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        group_key = digest(
            run.config["data"],
            _codec_settings(run.dir.read_json(run.dir.codec_config)),
            run.codec().identity(),
            generated_split(run),
        )
        groups.setdefault(group_key, []).append(run)
    return groups


def _reference_rows(run: Run, ids: list[str], asr: Asr, second, folder: Path) -> dict:
    """Each sentence's ground truth and its codec resynthesis (written under `folder`),
    scored like a generation -> {row name: per-utterance scores}."""
    corpus, codec = run.corpus(), run.codec()
    rows = {"ground truth": [], "codec resynthesis": []}
    for uid in ids:
        u = corpus[uid]
        wav = conform(*load_audio(u.wav), codec.sample_rate)
        truth = conform(wav, codec.sample_rate, MCD_RATE)
        codes = codec.encode(wav, codec.sample_rate)
        resynth = codec.decode(codes)
        save_audio(folder / "resynthesis" / f"{uid}.wav", resynth, codec.sample_rate)
        for name, audio in (("ground truth", wav), ("codec resynthesis", resynth)):
            mcd = mel_cepstral_distortion(conform(audio, codec.sample_rate, MCD_RATE), truth)
            hyp, hyp_second = _listen(asr, second, audio, codec.sample_rate)
            extra = {"id": uid, "stopped": True, "duration_ratio": 1.0, "mcd": mcd}
            rows[name].append(
                _utterance_scores(u.normalized_text, hyp, codes.numpy(), extra, hyp_second)
            )
    return rows


def score_references(
    runs: list[Run], asr: Asr, key: str, out: Path, force: bool, second: Asr | None = None
) -> dict:
    """Ground truth and codec resynthesis of the sentences the runs generated, per codec."""
    results = {}

    def score(group: tuple[str, list[Run]], again: bool) -> None:
        group_key, members = group
        folder = out / "references" / group_key
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(folder / ".lock", wait=False):  # one process a group (each_once)
            forced = force and not again
            results[group_key] = _scored_references(members, asr, key, folder, forced, second)

    each_once(list(_reference_groups(runs).items()), score)
    return results


def _scored_references(
    members: list[Run], asr: Asr, key: str, folder: Path, force: bool, second: Asr | None
) -> dict:
    """One reference group's scores: cached in `folder`, else scored and written there."""
    cache = folder / "scores.json"
    ids = sorted({g["id"] for run in members for g in run.generations})
    saved = None if force else cached(cache, key=key, ids=ids)
    if saved is None:
        rows = _reference_rows(members[0], ids, asr, second, folder)
        saved = {
            "key": key,
            "asr": asr.describe(),
            "scored_on": arithmetic(asr.device),
            "ids": ids,
            "split": generated_split(members[0]),
            "k": members[0].codec().n_codebooks,
            "codec": members[0].codec().settings(),
            "rows": {
                name: {
                    "summary": {**_summary(utts), "loop_rate": 0.0, "duration_ratio": 1.0},
                    "utterances": utts,
                }
                for name, utts in rows.items()
            },
        }
        write_json(cache, saved)
    return saved


def eval_split(run: Run) -> str:
    """The split the run measured held-out bits on (`test` before it was recorded)."""
    return run.test_metrics.get("eval_split", "test")


def generated_split(run: Run) -> str:
    """The split of the sentences a Run (one condition) generated."""
    return NOVEL if run.condition == NOVEL else eval_split(run)


def code_dropout(model: dict) -> str:
    """The run's input-code dropout, as the study's tables name it: '0.3 per frame', 'none'."""
    p = model.get("code_dropout", 0.0)
    return f"{p:g} per {model.get('code_dropout_unit', 'code')}" if p else "none"


def run_row(run: Run, scores: dict) -> dict:
    """One table row: what the run cost (steps, codes, FLOPs, time) and how it scored."""
    test, cfg = run.test_metrics, run.config
    k = cfg["model"]["n_codebooks"]
    train_rates = [m["train_codes_per_s"] for m in run.metrics if "train_codes_per_s" in m]
    row = {
        "run": run.name,
        "group": run.group,
        "model": cfg["model"]["name"],
        "condition": run.condition,
        "preset": cfg["preset"],
        "seed": cfg["seed"],
        "k": k,
        "split": generated_split(run),
        "budget_flops": cfg["train"].get("budget_flops"),
        "code_dropout": code_dropout(cfg["model"]),
        "params_M": test["params"] / 1e6,
        "non_embedding_params_M": test["params_non_embedding"] / 1e6,
        "steps": test["steps"],
        "codes_seen": test["codes_seen"],
        "flops": test["flops"],
        "train_min": test["train_seconds"] / 60,
        "cpu_min": test["cpu_seconds"] / 60,
        **scores["summary"],
        "bits_per_code": test["test"]["bits_per_code"],
        "bits_per_second": test["test"]["bits_per_code"] * k * test["frame_rate"],
        "stop_bits": test["test"]["stop_bits"],
        # missing in runs made before it was measured (experiments/held_out.py text_reliance)
        "text_reliance_bits": test["test"].get("text_reliance_bits"),
        "gen_rtf": run.generation_summary["real_time_factor"],
        # the first log line (step 1) carries warm-up: not measured with fewer than two lines
        "train_codes_per_s": statistics.fmean(train_rates[1:]) if train_rates[1:] else math.nan,
    }
    for i, bits in enumerate(test["test"]["bits_per_code_by_codebook"], start=1):
        row[f"bits_cb{i}"] = bits
    for i, bits in enumerate(test["test"].get("text_reliance_bits_by_codebook", []), start=1):
        row[f"text_reliance_cb{i}"] = bits
    return row


def _arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("results", nargs="?", default="results")
    ap.add_argument("--asr", default="tiny.en")
    ap.add_argument("--asr-weights", default=None)
    ap.add_argument(
        "--second-asr",
        default=None,
        help="a second Whisper model (e.g. base) transcribing the same audio: its WER is "
        "reported beside the first's, with the rank agreement of the two (eval/study.py)",
    )
    ap.add_argument(
        "--data-root",
        default="data",
        help="where converted ASR weights are cached (relative: to the project, as data.root)",
    )
    ap.add_argument(
        "--device",
        default="auto",
        help="where Whisper listens and codecs decode: auto (cuda when there is one, Whisper "
        "in fp16 there, a score cache of its own), cpu or cuda[:N]",
    )
    ap.add_argument("--force", action="store_true", help="rescore runs already scored")
    ap.add_argument(
        "--rescore-others",
        action="store_true",
        help="score again here the runs and reference rows that were scored with another ASR "
        "or on another machine's arithmetic (without it the command refuses, so that a folder "
        "is never left scored two ways); those already scored here are kept",
    )
    ap.add_argument("--report-sentences", type=int, default=10)
    return ap


def _device(name: str) -> str:
    """--device: auto -> cuda when there is one, else cpu; a device torch does not have is a
    usage error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: this machine has no CUDA device")
    return str(device)


def _runs(out: Path, problems: list[str], device: str) -> list[Run]:
    """Every run under `out` with complete outputs; the others are named and skipped."""
    runs = []
    for path in find_runs(out):
        try:
            runs += load_runs(path, out, device=device)
        except RunError as err:
            problems.append(str(err))
            print(f"skipped: {err}", file=sys.stderr)
    if not runs:
        sys.exit(f"no complete run directories under {out} ({len(problems)} skipped)")
    return runs


def each_once(items: list, work, *, poll: float = 5.0) -> None:
    """`work(item, again)` for every item, where the same command started more than once on a
    folder shares its work: an item another process holds is left to it (`work` raises Busy)
    and tried again (`again` True) once the others are done, every `poll` s until it is free,
    when its scores are read from the other process's cache."""
    pending, again = list(items), False
    while pending:
        held = []
        for item in pending:
            try:
                work(item, again)
            except Busy:
                held.append(item)
        if held:
            time.sleep(poll)
        pending, again = held, True


def _score_runs(runs: list[Run], asr, second, key: str, force: bool, problems: list[str]):
    """-> (the runs that scored, their scores by run name); a damaged run is named, skipped.
    A run is held while it is scored (its directory's lock, which its training holds too), so
    that processes started on the same folder score each run once; one scored by another
    process is read, not forced again."""
    scores = {}

    def score(run: Run, again: bool) -> None:
        try:
            with FileLock(run.path / ".lock", wait=False):
                scores[run.name] = score_run(run, asr, key, force and not again, second)
        except (RunError, RunDirError, CodecError) as err:  # this run only: score the rest
            problems.append(f"{run.path}: {err}")
            print(f"skipped: {run.path}: {err}", file=sys.stderr)

    each_once(runs, score)
    return [run for run in runs if run.name in scores], scores


def _tables(runs: list[Run], scores: dict, references: dict, asr) -> tuple:
    """-> (one row per run and reference row, one row per scored utterance)."""
    rows = [run_row(run, scores[run.name]) for run in runs]
    for ref in references.values():
        for name, block in ref["rows"].items():
            where = {"k": ref.get("k"), "split": ref.get("split")}
            rows.append({"run": name, "model": name, **where, **block["summary"]})
    table = pd.DataFrame(rows)
    asr_info = asr.describe()
    table["asr"] = f"{asr_info['engine']} {asr_info['model']} ({asr_info['weights']})"
    per_utt = pd.DataFrame(
        [
            {
                **u,
                "model": run.config["model"]["name"],
                "condition": run.condition,
                "seed": run.config["seed"],
                "run": run.name,
                "group": run.group,
            }
            for run in runs
            for u in scores[run.name]["utterances"]
        ]
    )
    return table, per_utt


def score_all(args) -> pd.DataFrame:
    out, problems, device = Path(args.results), [], args.device
    runs = _runs(out, problems, device)
    cache = Path(args.data_root) / "asr"
    asr = Asr(args.asr, weights=args.asr_weights, cache_dir=cache, device=device)
    second = Asr(args.second_asr, cache_dir=cache, device=device) if args.second_asr else None
    described = [asr.describe(), second.describe() if second else None, arithmetic(device)]
    key = digest(SCORE_VERSION, *described)
    if not (args.force or args.rescore_others):
        refuse_other_scorings(out, runs, {"asr": described[0], "scored_on": described[2]})
    runs, scores = _score_runs(runs, asr, second, key, args.force, problems)
    if not runs:
        sys.exit(f"no scorable run directories under {out} ({len(problems)} skipped)")
    references = score_references(runs, asr, key, out, args.force, second)
    table, per_utt = _tables(runs, scores, references, asr)
    from eval.report import write_report

    tests = {
        "utterances": utterance_tests(per_utt),
        "seeds": seed_tests(table[table["preset"].notna()]),  # per condition
        "intervals": backend_intervals(per_utt),
        "effects": pairwise_effects(per_utt),
    }
    with FileLock(out / ".lock"):  # processes sharing the folder write its tables in turn
        write_text(out / "summary.csv", table.to_csv(index=False))
        write_report(
            out, table, per_utt, runs, references, tests, problems, sentences=args.report_sentences
        )
    print((out / "summary.md").read_text())
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = _arguments()
    args = ap.parse_args(argv)
    try:
        args.device = _device(args.device)
    except ValueError as err:
        ap.error(str(err))
    try:
        with sigterm_raises():
            return score_all(args)
    except (KeyboardInterrupt, Terminated) as err:
        code, name = stopped(err)
        ap.exit(code, f"{ap.prog}: {name}: stopped; every run scored so far keeps its scores "
                "(cached in its directory): run the same command to go on\n")  # fmt: skip
    except (AsrError, ScoringError) as err:  # one line: what is wrong, how to go on
        ap.exit(1, f"{ap.prog}: error: {err}\n")
    except OSError as err:  # a read-only results folder, a full disk: nothing half-written
        ap.exit(1, f"{ap.prog}: error: cannot write the scores ({err})\n")


if __name__ == "__main__":
    main()
