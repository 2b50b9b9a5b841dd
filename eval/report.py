"""Tables (markdown), plots (seaborn PNG) and one self-contained HTML report of scored runs."""

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import soundfile as sf  # noqa: E402

from eval.stats import mean_ci  # noqa: E402
from phonelm.audio import conform, load_audio  # noqa: E402
from phonelm.io import write_text  # noqa: E402

MAIN_COLUMNS = [
    "run",
    "model",
    "condition",
    "preset",
    "k",
    "split",
    "seed",
    "params_M",
    "non_embedding_params_M",
    "steps",
    "codes_seen",
    "flops",
    "train_min",
    "cpu_min",
    "wer_mean",
    "wer",
    "wer_median",
    "wer_capped",
    "cer_mean",
    "mcd",
    "insertion_rate",
    "loop_rate",
    "code_repetition",
    "code_repetition_cb1",
    "transcript_repetition",
    "duration_ratio",
    "bits_per_code",
    "bits_per_second",
    "text_reliance_bits",
    "gen_rtf",
    "train_codes_per_s",
]
INTEGER_COLUMNS = {"seed", "steps", "codes_seen", "k"}
SCIENTIFIC_COLUMNS = {"flops"}
AGGREGATED = ["wer_mean", "wer", "cer_mean", "mcd", "bits_per_code", "loop_rate", "gen_rtf"]


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: integers as integers, other numbers to 3 decimals, missing as blank
    (reference rows have no preset, seed or steps)."""

    def cell(column: str, value) -> str:
        if pd.isna(value):
            return ""
        if column in INTEGER_COLUMNS:
            return str(int(value))
        if column in SCIENTIFIC_COLUMNS:
            return f"{value:.3g}"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    return pd.DataFrame({c: [cell(c, v) for v in table[c]] for c in table.columns})


def _markdown(table: pd.DataFrame) -> str:
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    return _display(table).to_markdown(
        index=False,
        disable_numparse=True,
        colalign=["right" if n else "left" for n in numeric],
    )


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    models = table[table["preset"].notna()]
    keys = ["group", "condition", "model", "preset"]
    for (where, condition, model, preset), group in models.groupby(keys):
        row = {"group": where, "condition": condition, "model": model, "preset": preset}
        row["seeds"] = len(group)
        for col in AGGREGATED:
            mean, ci = mean_ci(group[col])
            row[col] = f"{mean:.3f}" + ("" if ci != ci else f" ± {ci:.3f}")
        rows.append(row)
    return pd.DataFrame(rows)


def _entries(table: pd.DataFrame) -> pd.DataFrame:
    """The runs' rows with `entry`: the backend, and its generation condition when the table
    holds more than one (backends are compared within a condition, never across)."""
    models = table[table["preset"].notna()].copy()
    several = models["condition"].nunique() > 1
    models["entry"] = models["model"] + (" / " + models["condition"] if several else "")
    if models["group"].nunique() > 1:  # runs of other settings are other entries
        models["entry"] = models["group"] + ": " + models["entry"]
    return models


def _plots(out: Path, table: pd.DataFrame, per_utt: pd.DataFrame, runs) -> dict[str, Path]:
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid")
    made = {}

    def save(name: str, fig) -> None:
        path = folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made[name] = path

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    models = _entries(table)
    seeds = models.groupby("entry")["seed"].nunique()
    for ax, metric in zip(axes, ["wer_mean", "cer_mean"], strict=True):
        # one value per run (seed): the interval is over seeds, the independent replicates
        summary = [(m, *mean_ci(g[metric])) for m, g in models.groupby("entry")]
        names = [m for m, _, _ in summary]
        ax.bar(names, [mean for _, mean, _ in summary], color=sns.color_palette()[: len(names)])
        ax.errorbar(names, [mean for _, mean, _ in summary], yerr=[ci for *_, ci in summary],
                    fmt="none", ecolor="black", capsize=4)  # fmt: skip
        sns.stripplot(models, x="entry", y=metric, order=names, color="black", size=3, ax=ax)
        refs = table[table["preset"].isna()]
        for _, ref in refs.iterrows():
            ax.axhline(ref[metric], ls="--", lw=1, color="gray")
            ax.text(ax.get_xlim()[1], ref[metric], f" {ref['model']}", va="center", fontsize=7)
        what = metric.removesuffix("_mean").upper()
        ax.set_title(f"mean per-utterance {what}, 95% CI over seeds (max {seeds.max()} seeds)")
    save("wer_cer", fig)

    # bits belong to the trained model: one row per run directory, whatever its conditions
    once = table.drop_duplicates(subset=["model", "preset", "seed"])
    bits = once.filter(regex="^bits_cb").assign(run=once["run"]).dropna(how="all", axis=0)
    bits = bits.melt(id_vars="run", var_name="codebook", value_name="bits").dropna()
    if len(bits):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bits["codebook"] = bits["codebook"].str.replace("bits_cb", "")
        sns.barplot(bits, x="codebook", y="bits", hue="run", ax=ax)
        ax.set_title("test bits-per-code per codebook")
        save("bits_per_codebook", fig)

    curves = pd.DataFrame(
        [
            {
                "run": r.dir.name,
                "step": m["step"],
                "seconds": m["train_seconds"],
                "flops": m["flops"],
                "bits": m["valid_bits_per_code"],
            }
            for r in {r.dir.name: r for r in runs}.values()  # one per directory
            for m in r.metrics
            if "valid_bits_per_code" in m
        ]
    )
    if len(curves):
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
        for ax, x, what in zip(
            axes,
            ("flops", "step", "seconds"),
            ("training FLOPs (the matched budget)", "step", "training seconds"),
            strict=True,
        ):
            sns.lineplot(curves, x=x, y="bits", hue="run", marker="o", ax=ax)
            ax.set_title(f"validation bits-per-code vs {what}", fontsize=9)
        save("validation_curves", fig)

    labelled = pd.concat(
        [_entries(table), table[table["preset"].isna()].assign(entry=table["model"])]
    )
    parts = labelled.melt(
        id_vars="entry",
        value_vars=["loop_rate", "code_repetition", "code_repetition_cb1", "transcript_repetition"],
        var_name="part",
        value_name="share",
    )
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(parts, x="part", y="share", hue="entry", ax=ax)
    ax.set_title("repetition")
    save("repetition", fig)

    speed = _entries(table)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    sns.barplot(speed, x="entry", y="gen_rtf", ax=axes[0])
    axes[0].set_title("generation real-time factor (lower is faster)")
    sns.barplot(speed, x="entry", y="train_codes_per_s", ax=axes[1])
    axes[1].set_title("training codes / s")
    save("speed", fig)
    return made


def _audio_tag(path: Path) -> str:
    """An <audio> element with the clip embedded (16 kHz 16-bit WAV, base64); a note instead
    for an empty clip (a generation that stopped at once), which no player can load."""
    wav, sr = load_audio(path)
    if wav.numel() == 0:
        return "<em>no audio: the model stopped at once</em>"
    buffer = io.BytesIO()
    sf.write(buffer, conform(wav, sr, 16_000).numpy(), 16_000, format="WAV", subtype="PCM_16")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio>'


def _image_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


NOTES = (
    "Budgets: every backend of a preset trains to the same model-FLOPs budget (forward + "
    "backward matmuls counted from the real batches); codes seen, wall and CPU minutes are "
    "reported beside it, and evaluation and checkpoints count against nothing. Parameters are "
    "matched on non-embedding counts (totals shown too). Decoding: one policy for every backend "
    "(codebook 1 and codebooks 2..K each with their own temperature / top-k / top-p), with "
    "randomness seeded per utterance.",
    "Repetition: loop rate = share of generations ended by the max-length guard; code "
    "repetition = share of frames inside a back-to-back repeated pattern of 1-20 frames "
    "spanning >= 8 frames, on all K codebooks and on codebook 1 alone (cb1); transcript "
    "repetition = share of words inside an immediately repeated 1-3-gram.",
    "Bits-per-code: only the total over all codebooks (and bits per second) compares "
    "backends. Per-codebook bits depend on each factorisation's conditioning: MegaByte and flat "
    "predict codebook k of a frame from codebooks < k of that frame and all earlier frames, "
    "while VALL-E's NAR predicts codebook k of every frame from codebooks < k of all frames, "
    "future frames included, so its codebooks 2..K see more context and its codebook 1 less. "
    "The total is comparable because each backend's per-codebook terms are the factors of one "
    "valid chain-rule decomposition of the same joint probability of the utterance's codes.",
    "Text reliance: test bits per code with each utterance's codes scored against the next "
    "test utterance's phonemes, minus with its own (teacher-forced): how much the model reads "
    "the text. Near 0, the model predicts from the audio before it alone and drifts off the "
    "sentence when it generates.",
    "WER: the headline is the mean of per-utterance WER (seed-tts-eval's convention); pooled "
    "WER (errors over all reference words), the median and the mean with each utterance "
    "capped at 1 stand beside it. Whisper decodes with its standard temperature fallback "
    "(compression ratio > 2.4 or mean log-prob < -1 retries at higher temperature, seeded). "
    "MCD: mel-cepstral distortion (dB, cepstra c1-c24 of the log-mel spectrum, DTW-aligned) "
    "of each generation against the true audio of its sentence: a score without an ASR.",
    "Tests: the study's test of an architecture is the pairwise difference of mean "
    "per-utterance WER with a 95% hierarchical-bootstrap interval (resample seeds, then "
    "sentences within each seed) and a two-sided bootstrap p, Holm-corrected across pairs; a "
    "difference holds when the interval excludes 0 and Holm p < 0.05, else the pair is not "
    "distinguishable. With one seed the bootstrap is over sentences only (the trained model "
    "held fixed). Beside it: per seed, Wilcoxon signed-rank on per-utterance WER (decoding and "
    "sentence noise, one trained model); with >= 3 seeds, a paired t-test on per-seed mean "
    "per-utterance WER, Holm-corrected. Runs in different folders (K, budget, variant) are "
    "never pooled.",
    "Conditions: `tts` generates from the text alone; `continuation` continues another test "
    "utterance's codes (given with its text) and is scored on the continued part alone, which "
    "says exactly the test sentence. Backends are tested against each other within a "
    "condition, never across conditions.",
)


def _tests_md(tests: dict) -> list[str]:
    md = ["\n## Mean per-utterance WER, 95% hierarchical-bootstrap interval (seeds, sentences)\n"]
    intervals, effects = tests["intervals"], tests["effects"]
    md.append(intervals.to_markdown(index=False, floatfmt=".3f") if len(intervals) else "(none)")
    md.append("\n## Pairwise differences of mean per-utterance WER (a - b; bootstrap, Holm)\n")
    md.append(effects.to_markdown(index=False, floatfmt=".4f") if len(effects) else "(one backend)")
    md.append("\n## Paired tests on per-utterance WER, per seed (Wilcoxon, Holm)\n")
    utt, seeds = tests["utterances"], tests["seeds"]
    md.append(utt.to_markdown(index=False, floatfmt=".4f") if len(utt) else "(one backend only)")
    md.append("\n## Seed-level paired tests on mean WER (t-test, Holm)\n")
    md.append(
        seeds.to_markdown(index=False, floatfmt=".4f")
        if len(seeds)
        else "(needs >= 3 seeds of two backends)"
    )
    return md


def write_report(out: Path, table, per_utt, runs, references, tests, problems, *, sentences: int):
    shown = table[[c for c in MAIN_COLUMNS if c in table.columns] + ["asr"]]
    asr = table["asr"].iloc[0]
    md = [
        f"# PhoneLM results\n\nASR: {asr}; Whisper English normaliser on both sides.\n",
        "## Runs and references\n",
        _markdown(shown.drop(columns="asr")),
        "\n## Over seeds (mean ± 95% CI)\n",
        seed_summary(table).to_markdown(index=False),
        *_tests_md(tests),
        "\n## How to read these numbers\n",
        *(f"- {note}" for note in NOTES),
        "",
    ]
    if problems:
        md.append("\n## Skipped run directories\n" + "\n".join(f"- {p}" for p in problems) + "\n")
    write_text(out / "summary.md", "\n".join(md))
    plots = _plots(out, table, per_utt, runs)

    by_run = {run.name: run for run in runs}
    ids = sorted({u["id"] for u in per_utt.to_dict("records")})[:sentences]
    ref_dirs = [out / "references" / key for key in references]
    corpora = {name: run.corpus() for name, run in by_run.items()}
    rows_html = []
    for uid in ids:
        utt = per_utt[per_utt["id"] == uid]
        text = html.escape(utt["ref"].iloc[0])
        cells = []
        truth = corpora[utt["run"].iloc[0]][uid].wav
        cells.append(f"<td>ground truth<br>{_audio_tag(truth)}</td>")
        for folder in ref_dirs:
            resynth = folder / "resynthesis" / f"{uid}.wav"
            if resynth.is_file():
                cells.append(f"<td>codec resynthesis<br>{_audio_tag(resynth)}</td>")
                break
        for _, u in utt.iterrows():
            wav = by_run[u["run"]].wav(uid)
            cells.append(
                f"<td>{html.escape(u['run'])}<br>{_audio_tag(wav)}<br>"
                f"<small>{html.escape(u['hyp'])} (WER {u['wer']:.2f})</small></td>"
            )
        rows_html.append(f"<tr><td>{text}</td>{''.join(cells)}</tr>")
    runs_html = _display(shown).to_html(index=False)
    paired_html = "".join(
        f"<h3>{title}</h3>" + (t.to_html(index=False) if len(t) else "<p>not available</p>")
        for title, t in (
            ("per seed, per-utterance WER (Wilcoxon, Holm)", tests["utterances"]),
            ("over seeds, mean WER (paired t-test, Holm)", tests["seeds"]),
        )
    )
    notes_html = "".join(f"<li>{html.escape(note)}</li>" for note in NOTES)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>PhoneLM report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;font-size:13px;vertical-align:top}}
img{{max-width:100%}}</style>
</head><body><h1>PhoneLM report</h1><p>ASR: {html.escape(asr)}</p>
<h2>Runs and references</h2>{runs_html}
<h2>Over seeds</h2>{seed_summary(table).to_html(index=False)}
<h2>Paired tests</h2>{paired_html}
<h2>How to read these numbers</h2><ul>{notes_html}</ul>
<h2>Plots</h2>{"".join(_image_tag(p) for p in plots.values())}
<h2>Sentences</h2><table id="sentences">{"".join(rows_html)}</table></body></html>"""
    write_text(out / "report.html", page)
