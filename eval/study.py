"""Publish the study from its committed files: tables, findings and a plot, no ASR or audio.

    python eval/score.py results/study/screens     # score (ASR; per-utterance caches)
    python eval/study.py results/study --readme README.md

Reads every scored run under the root (`scores.json` per run, `references/*/scores.json` per
scored folder; eval/score.py writes both, and they are committed with the runs), and writes
`<root>/RESULTS.md` (every table); with --readme, it replaces the README's section between
`<!-- study:begin -->` and `<!-- study:end -->` with the answer only (the confirmatory tables
and the screens' picks, the screen tables left to RESULTS.md), so the README's numbers are
never typed (tests/test_study.py checks they match the committed files).

A folder of runs (a *group*) is `<study>/<variant>-k<K>-<budget>`: one setting. Backends are
compared within a group only. Screens (split `valid`) choose each backend's recipe; only the
confirmatory studies score `test` (and `novel`, the sentences of held-out words).
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

from eval.runs import RunError, find_runs, group_of, load_runs
from eval.score import run_row, scoring
from eval.stats import backend_intervals, hierarchical_bootstrap, interval, pairwise_effects
from eval.study_bits import bits_table
from eval.study_plot import references_of, wer_by_k
from experiments.sweep import load_study, study_scoring_machine
from phonelm.io import write_text
from phonelm.run_dir import RunDir, RunDirError

BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
TABLE_COLUMNS = {  # column -> heading
    "model": "backend",
    "seeds": "seeds",
    "code_dropout": "code dropout",
    "wer": "WER (mean per utt., 95% CI)",
    "wer_by_seed": "WER by seed",
    "wer_pooled": "pooled WER",
    "cer_mean": "CER",
    "mcd": "MCD dB",
    "bits_per_code": "bits/code",
    "text_reliance_bits": "text reliance",
    "loop_rate": "loops",
    "steps": "steps",
    "codes_seen": "codes seen",
    "train_codes_per_s": "train codes/s",
    "gen_rtf": "gen RTF",
}


STUDIES = Path(__file__).resolve().parent.parent / "experiments" / "studies"


class StudyError(ValueError):
    """Study files that cannot be published; the message names them."""


def progress(root: str | Path, studies: str | Path = STUDIES) -> list[str]:
    """How far each study is: per study file whose study has a folder under `root`, the runs
    of its grid that finished (test_metrics.json) and those scored in every condition (on its
    scoring machine, where the study file names one: `scored_on`)."""
    lines, machines = [], scoring_machines(studies)
    for file in sorted(Path(studies).glob("*.toml")):
        jobs = load_study(file, root)
        name = jobs[0].out.parent.name
        if not (Path(root) / name).is_dir():
            continue
        finished = [job.run_dir for job in jobs if job.done]
        machine = machines.get(name)
        scored = [path for path in finished if _scored(RunDir(path), machine)]
        on = f" on {_machine_words(machine)}" if machine else ""
        elsewhere = len([path for path in finished if _scored(RunDir(path))]) - len(scored)
        if elsewhere:
            on += f" ({elsewhere} more scored elsewhere, to be scored again there)"
        lines.append(f"- `{name}` (`{file.name}`): {len(finished)} of {len(jobs)} runs "
                     f"finished, {len(scored)} of them scored{on}")  # fmt: skip
    return lines


def scoring_machines(studies: str | Path = STUDIES) -> dict[str, dict]:
    """{study name: the machine its scores must be made on} for the study files that name one
    (`scored_on = {cpu = ..., vector_unit = ..., threads = ..., torch = ..., device = ...}`,
    the keys of eval/score.py's `arithmetic`). A study scored across sittings on machines of
    one kind publishes only the scores made there: one made elsewhere counts as not scored
    yet (`eval/score.py --rescore-others` on the named machine replaces it), so each scored
    run can be committed as it lands instead of the whole study in one pass."""
    machines = {}
    for file in sorted(Path(studies).glob("*.toml")):
        if (machine := study_scoring_machine(file)) is not None:
            machines[load_study(file)[0].out.parent.name] = machine
    return machines


def made_on(saved: dict, machine: dict | None) -> bool:
    """Whether a scores file was made on the study's scoring machine (any, if it names none)."""
    on = saved.get("scored_on") or {}
    return machine is None or all(on.get(k) == v for k, v in machine.items())


def _machine_words(machine: dict) -> str:
    """'AMD EPYC (AVX2, 1 thread(s), torch 2.13.0+cpu, cpu)', as eval/score.py says it."""
    words = {"vector_unit": "{}", "threads": "{} thread(s)", "torch": "torch {}", "device": "{}"}
    rest = [words.get(k, k + " {}").format(v) for k, v in machine.items() if k != "cpu"]
    cpu = machine.get("cpu", "any CPU")
    return f"{cpu} ({', '.join(rest)})" if rest else cpu


def _scored(run: RunDir, machine: dict | None = None) -> bool:
    def made_here(path: Path) -> bool:
        try:
            return machine is None or made_on(json.loads(path.read_text()), machine)
        except (OSError, json.JSONDecodeError):
            return False

    conditions = run.conditions()
    return bool(conditions) and all(
        run.samples(c).scores.is_file() and made_here(run.samples(c).scores) for c in conditions
    )


def short_of_budget(config: dict, test_metrics: dict) -> str | None:
    """Why a run with a FLOPs budget ended before it (the wall-clock safety cap
    `train.max_minutes`, on a loaded machine), or None: such a run is not compute-matched."""
    budget = config.get("train", {}).get("budget_flops")
    stopped_by = test_metrics.get("stopped_by")
    if budget is None or stopped_by == "flops":
        return None
    return (
        f"stopped by {stopped_by} at step {test_metrics.get('steps')}, "
        f"{test_metrics.get('flops', 0):.3g} of its {budget:.3g} FLOPs: not compute-matched"
    )


def collect(
    root: str | Path, studies: str | Path = STUDIES
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(one row per scored run and reference row, one row per scored utterance, the runs left
    out because they ended short of their FLOPs budget) from the committed files under root;
    of a study whose file names its scoring machine, only the scores made there."""
    root, machines = Path(root), scoring_machines(studies)
    rows, utterances, scorings, left_out, codecs = [], [], {}, [], {}
    for path in find_runs(root):
        try:
            runs = load_runs(path, root)
        except RunError:
            continue  # a run in flight or damaged: not part of the published study
        if runs and (why := short_of_budget(runs[0].config, runs[0].test_metrics)):
            left_out.append(f"`{path.relative_to(root)}`: {why}")
            continue
        if runs:
            codecs.setdefault(runs[0].group, {}).setdefault(codec_identity(runs[0]), []).append(
                path.name
            )
        for run in runs:
            try:
                scores = json.loads(run.samples.scores.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # not scored yet
            if not made_on(scores, machines.get(study_of(run.group))):
                continue  # scored elsewhere: not yet on the study's scoring machine
            scorings.setdefault(study_of(run.group), set()).add(scoring(scores))
            rows.append(run_row(run, scores))
            utterances += [
                {**u, "group": run.group, "model": rows[-1]["model"], "seed": rows[-1]["seed"],
                 "condition": run.condition}
                for u in scores["utterances"]
            ]  # fmt: skip
    for ref_file in sorted(root.glob("**/references/*/scores.json")):
        saved = json.loads(ref_file.read_text())
        where = str(ref_file.parent.parent.parent.relative_to(root))
        if not made_on(saved, machines.get(study_of(where))):
            continue
        scorings.setdefault(study_of(where), set()).add(scoring(saved))
        for name, block in saved["rows"].items():
            rows.append(
                {"run": name, "model": name, "scored_in": where, "k": saved.get("k"),
                 "split": saved.get("split"), **block["summary"]}
            )  # fmt: skip
    for study, seen in scorings.items():
        if len(seen) > 1:  # other weights or arithmetic: other numbers for the same audio
            raise StudyError(
                f"{root / study}: its runs and reference rows were scored with different ASRs "
                f"or on different machines {sorted(seen)}: rescore the study in one pass on one "
                "machine (its eval/score.py command with --force)"
            )
    for group, by_codec in codecs.items():
        if len(by_codec) > 1:  # other codes: the runs did not learn the same targets
            raise StudyError(
                f"{root / group}: its runs were trained on different fitted codecs "
                f"(data_manifest.json codec_identity: {by_codec}); a study shares one codec "
                "per K (docs/study.md)"
            )
    return pd.DataFrame(rows), pd.DataFrame(utterances), left_out


def finished_runs(root: str | Path) -> pd.DataFrame:
    """One row per run under root that finished training within its FLOPs budget, scored or
    not: its group, split, backend, seed and what it measured on its split when it ended."""
    rows = []
    for path in find_runs(root):
        run = RunDir(path)
        try:
            config, test = run.read_json(run.config), run.read_json(run.test_metrics)
        except RunDirError:
            continue  # in flight, or damaged: not published
        if short_of_budget(config, test) or "test" not in test:
            continue
        measured = test["test"]
        rows.append(
            {"group": group_of(path, Path(root)), "split": test.get("eval_split", "test"),
             "model": config["model"]["name"], "seed": config["seed"],
             "bits_per_code": measured["bits_per_code"],
             "bits_cb1": measured["bits_per_code_by_codebook"][0],
             "text_reliance_bits": measured.get("text_reliance_bits"), "steps": test["steps"]}
        )  # fmt: skip
    return pd.DataFrame(rows)


def bits_section(root: str | Path, screens: bool) -> list[str]:
    """The ASR-free table of every finished run (eval/study_bits.py); screens=False leaves out
    the runs evaluated on `valid`."""
    finished = finished_runs(root)
    if not finished.empty and not screens:
        finished = finished[finished["split"] != "valid"]
    if finished.empty:
        return []
    return [
        "\n#### Held-out bits per code of every finished run (teacher-forced, no ASR)\n",
        "Each run measures it on its split when training ends, so this table fills as runs "
        "land, before they are scored: the mean over seeds with a 95% Student-t interval. A "
        "pair of backends is tested once it has 3 shared seeds (the paired difference over "
        "seeds with its t interval, a paired t-test, Holm within a setting) and holds when its "
        "interval excludes 0 and Holm p < 0.05.\n",
        *bits_table(finished),
    ]


def study_of(group: str) -> str:
    """The study a group of runs belongs to: its first folder under the root (`confirm` for
    `confirm/pick-k4-1.8e14`), which one `eval/score.py` command scores."""
    return Path(group).parts[0] if Path(group).parts else "."


def codec_identity(run) -> str | None:
    """The fitted codec a run's dataset was encoded with (its data_manifest.json), if known."""
    try:
        return run.dir.read_json(run.dir.manifest).get("codec_identity")
    except RunDirError:
        return None


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def group_table(runs: pd.DataFrame, per_utt: pd.DataFrame, refs: pd.DataFrame) -> str:
    """One group's table: per backend (mean over seeds) and the reference rows."""
    intervals = backend_intervals(per_utt).set_index("model")
    lines = ["| " + " | ".join(TABLE_COLUMNS.values()) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for model, block in runs.groupby("model"):
        ci = intervals.loc[model]
        cells = {
            "model": model,
            "seeds": str(len(block)),
            "code_dropout": ", ".join(sorted(set(block["code_dropout"]))),
            "wer": f"**{ci['wer_mean']:.3f}** [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]",
            "wer_by_seed": " / ".join(f"{v:.2f}" for v in block.sort_values("seed")["wer_mean"]),
            "wer_pooled": _fmt(block["wer"].mean()),
            "codes_seen": f"{block['codes_seen'].mean() / 1e6:.1f} M",
            "steps": f"{block['steps'].mean():.0f}",
            "train_codes_per_s": _fmt(block["train_codes_per_s"].mean(), 0),
            "gen_rtf": _fmt(block["gen_rtf"].mean(), 2),
        }
        for col in ("cer_mean", "mcd", "bits_per_code", "text_reliance_bits", "loop_rate"):
            cells[col] = _fmt(block[col].mean())
        lines.append("| " + " | ".join(cells[c] for c in TABLE_COLUMNS) + " |")
    for _, ref in refs.iterrows():
        cells = {c: "" for c in TABLE_COLUMNS}
        cells.update(model=f"*{ref['model']}*", wer=f"{ref['wer_mean']:.3f}",
                     wer_pooled=_fmt(ref["wer"]), cer_mean=_fmt(ref["cer_mean"]),
                     mcd=_fmt(ref["mcd"]))  # fmt: skip
        lines.append("| " + " | ".join(cells[c] for c in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def pick(screened: pd.DataFrame, utterances: pd.DataFrame) -> tuple[str, str]:
    """One backend's pick among its screened variants, by the rule fixed before the screens
    were read (docs/study.md): the lowest mean per-utterance `valid` WER; a variant whose
    paired per-utterance difference to it has a 95% sentence-bootstrap interval that includes
    0 is not distinguishable and ties; a tie goes to the lowest `valid` bits/code.
    screened: one row per variant (variant, wer_mean, bits_per_code); utterances: one row per
    (variant, id) with `wer` -> (the pick, why)."""
    wer = screened.set_index("variant")["wer_mean"]
    best = wer.idxmin()
    wide = utterances.pivot_table(index="id", columns="variant", values="wer")
    tied = [best]
    for variant in wer.index.drop(best):
        diff = (wide[variant] - wide[best]).dropna().to_numpy()[None]
        if interval(hierarchical_bootstrap(diff))[0] <= 0:
            tied.append(variant)
    if len(tied) == 1:
        return best, "lowest WER"
    bits = screened.set_index("variant")["bits_per_code"]
    return str(
        bits[tied].idxmin()
    ), f"WER ties {', '.join(f'`{v}`' for v in sorted(tied))}: lowest bits/code"


def screen_picks(runs: pd.DataFrame, per_utt: pd.DataFrame) -> pd.DataFrame:
    """Per study whose groups score `valid` (screens) and backend: its mean per-utterance WER
    and bits/code in every variant (`cells`), its pick (`pick`: the one procedure every backend
    gets), why, the pick's code dropout, and whether every variant of the study was screened
    (`final`)."""
    screens = runs[(runs["split"] == "valid") & (runs["condition"] == "tts")].copy()
    if screens.empty:
        return pd.DataFrame()
    utts = per_utt[per_utt["group"].isin(set(screens["group"])) & (per_utt["condition"] == "tts")]
    utts = utts.assign(variant=utts["group"].map(lambda g: g.split("/", 1)[-1]))
    screens["study"] = screens["group"].map(lambda g: g.split("/")[0])
    screens["variant"] = screens["group"].map(lambda g: g.split("/", 1)[-1])
    out = []
    for study, block in screens.groupby("study"):
        variants = sorted(block["variant"].unique())
        for model, rows in block.groupby("model"):
            by_variant = rows.set_index("variant")
            here = utts[(utts["model"] == model) & utts["group"].isin(set(rows["group"]))]
            chosen, why = pick(rows, here)
            out.append({
                "study": study, "model": model, "pick": chosen, "why": why,
                "code_dropout": by_variant.loc[chosen, "code_dropout"],
                "final": len(rows) == len(variants),
                "cells": {v: tuple(by_variant.loc[v, ["wer_mean", "bits_per_code"]])
                          if v in by_variant.index else None for v in variants},
            })  # fmt: skip
    return pd.DataFrame(out)


def study_picks(root: str | Path) -> pd.DataFrame:
    """`screen_picks` of the committed files under root."""
    table, per_utt, _ = collect(root)
    if table.empty or "group" not in table:
        return pd.DataFrame()
    return screen_picks(table[table["group"].notna()], per_utt)


def picks(runs: pd.DataFrame, per_utt: pd.DataFrame) -> list[str]:
    """The screens' picks as markdown: one table per screening study."""
    chosen = screen_picks(runs, per_utt)
    md = []
    for study, block in chosen.groupby("study") if not chosen.empty else []:
        variants = list(block.iloc[0]["cells"])
        md += [f"\n#### Picks of `{study}` (on `valid`: mean per-utterance WER / bits per code)\n",
               "| backend | " + " | ".join(f"`{v}`" for v in variants)
               + " | pick | code dropout | why |",
               "|---|" + "---|" * (len(variants) + 3)]  # fmt: skip
        for _, row in block.iterrows():
            cells = [" / ".join(map(_fmt, c)) if c else "" for c in row["cells"].values()]
            why = row["why"] + ("" if row["final"] else " (not all screened)")
            md.append(f"| {row['model']} | " + " | ".join(cells)
                      + f" | `{row['pick']}` | {row['code_dropout']} | {why} |")  # fmt: skip
    return md


def asr_agreement(per_utt: pd.DataFrame) -> list[str]:
    """With a second ASR: each backend's mean per-utterance WER under it, and the rank
    agreement (Kendall tau) of the backends under the two ASRs."""
    if "wer_second" not in per_utt or per_utt["wer_second"].isna().all():
        return []
    from scipy.stats import kendalltau

    means = per_utt.groupby("model")[["wer", "wer_second"]].mean()
    listed = ", ".join(f"{m} {v:.3f}" for m, v in means["wer_second"].items())
    if len(means) < 2:
        return [f"- Second ASR, mean per-utterance WER: {listed}; rank agreement with the "
                "first: needs two backends"]  # fmt: skip
    tau = kendalltau(means["wer"], means["wer_second"]).statistic
    return [f"- Second ASR, mean per-utterance WER: {listed}; rank agreement with the first: "
            f"Kendall tau = {tau:.2f} over {len(means)} backends"]  # fmt: skip


def findings(effects: pd.DataFrame) -> list[str]:
    """One line per pair: the difference with its interval, and whether it holds."""
    out = []
    for _, e in effects.iterrows():
        better, worse = (e["a"], e["b"]) if e["difference"] < 0 else (e["b"], e["a"])
        stats = (
            f"difference {e['difference']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}], "
            f"Holm p = {e['holm_p']:.3g}, {e['seeds']} seed(s) x {e['sentences']} sentences"
        )
        verdict = f"**{better} < {worse}**" if e["holds"] else "not distinguishable"
        out.append(f"- {e['a']} - {e['b']}: {verdict} ({stats})")
    return out


def runs_and_references(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(the runs' rows in the `tts` and `novel` conditions, the reference rows), or None when
    no study run is scored yet."""
    if table.empty or "group" not in table or table["group"].isna().all():
        return None
    runs = table[table["group"].notna() & table["condition"].isin(["tts", "novel"])]
    return runs, table[table["group"].isna()]


def plot(root: str | Path, collected=None) -> Path | None:
    """Write `<root>/wer_by_k.png` (eval/study_plot.py) -> its path, or None when no
    confirmatory run is scored yet. collected: what collect(root) gave, if at hand."""
    table, per_utt, _ = collected or collect(root)
    if (split := runs_and_references(table)) is None:
        return None
    runs, refs = split
    return wer_by_k(runs, backend_intervals(per_utt), refs, Path(root) / "wer_by_k.png")


def render(
    root: str | Path, screens: bool = True, figure: str | None = None, collected=None
) -> str:
    """The study's markdown: per group and condition (`tts` on the run's split, `novel` on the
    sentences of held-out words) its table and its pairwise findings, then the screens' picks.
    screens=False (the README's section) leaves out the screens' own tables (split `valid`);
    figure: the link to the plot, shown under the introduction; collected: what collect(root)
    gave, if at hand."""
    table, per_utt, left_out = collected or collect(root)
    cut = [f"- {line}" for line in left_out]
    if cut:
        cut = ["", "Left out of every table (each setting is run again in full):", *cut]
    status = progress(root)
    if status:
        status = ["Progress (the study files' grids against the committed runs):", *status, ""]
    bits = bits_section(root, screens)
    if (split := runs_and_references(table)) is None:
        return "\n".join([*status, "No study runs are scored yet.", *bits, *cut]) + "\n"
    runs, refs = split
    md = [
        *status,
        "WER is Whisper tiny.en's (temperature fallback), the mean of per-utterance WER with a "
        "95% hierarchical-bootstrap interval over seeds, then sentences; MCD is the DTW-aligned "
        "mel-cepstral distortion against the true audio; bits/code is teacher-forced on the "
        'run\'s split. A pair "holds" when its interval excludes 0 and Holm p < 0.05. Train '
        "codes/s and gen RTF are each run's own, on the machine and load it ran with (its "
        "env.json; a study's runs span machine kinds): speed is compared side by side on one "
        "machine by bench/run.py (docs/speed.md).",
    ]
    if figure:
        md.append(f"\n![Mean per-utterance WER against K per backend]({figure})")
    shown = runs if screens else runs[runs["split"] != "valid"]
    if not screens:
        md.append(
            "\nThe screens' own tables (`valid`, one seed each): "
            "[results/study/RESULTS.md](results/study/RESULTS.md)."
            + ("" if not shown.empty else " The confirmatory runs are not scored yet.")
        )
    blocks = shown.groupby(["group", "condition"])  # per group: its split first, then novel
    for (group, condition), block in sorted(blocks, key=lambda kv: (kv[0][0], kv[0][1] != "tts")):
        first = block.iloc[0]
        split = first["split"]
        scored_with = references_of(refs, group, split, [first["k"]])
        here = per_utt[(per_utt["group"] == group) & (per_utt["condition"] == condition)]
        md += [
            f"\n#### `{group}`: K = {int(first['k'])}, {first['budget_flops']:.2g} FLOPs, "
            f"sentences of `{split}`\n",
            group_table(block, here, scored_with),
            "",
            *findings(pairwise_effects(here)),
            *asr_agreement(here),
        ]
    return "\n".join(md + bits + picks(runs, per_utt) + cut) + "\n"


def replace_section(readme: str, section: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise StudyError(f"the README has no {BEGIN} ... {END} section")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{section}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("root", nargs="?", default="results/study")
    ap.add_argument("--readme", default=None, help="a README whose study section to rewrite")
    args = ap.parse_args(argv)
    try:
        collected = collect(args.root)  # once: loading every run is the slow part
        figure = plot(args.root, collected)
        section = render(args.root, figure=figure and figure.name, collected=collected)
        write_text(Path(args.root) / "RESULTS.md", "# The study\n\n" + section)
        if args.readme:
            readme = Path(args.readme)
            link = figure and os.path.relpath(figure, readme.resolve().parent)
            brief = render(args.root, screens=False, figure=link, collected=collected)
            write_text(readme, replace_section(readme.read_text(), brief))
    except StudyError as err:
        ap.exit(1, f"{ap.prog}: error: {err}\n")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
