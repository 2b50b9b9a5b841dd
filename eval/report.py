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
    """Every plot of the report, as PNG files under `out`/plots -> {name: path}."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid")
    made = {}
    figures = {
        "wer_cer": _wer_cer_figure(table),
        "bits_per_codebook": _bits_figure(table),
        "validation_curves": _curves_figure(runs),
        "repetition": _repetition_figure(table),
        "speed": _speed_figure(table),
    }
    for name, fig in figures.items():
        if fig is None:  # nothing to plot (no bits or no validation log)
            continue
        path = folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made[name] = path
    return made


def _legend_outside(ax) -> None:
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)


def _wer_cer_figure(table: pd.DataFrame):
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
        refs = table[table["preset"].isna()].drop_duplicates(subset=["model"])
        for (_, ref), style in zip(refs.iterrows(), ("--", ":", "-."), strict=False):
            ax.axhline(ref[metric], ls=style, lw=1, color="gray", label=ref["model"])
        if len(refs):  # the reference lines named in a legend outside the bars
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
        ax.tick_params(axis="x", labelrotation=20)
        what = metric.removesuffix("_mean").upper()
        ax.set_title(f"{what}, mean per utterance\n95% CI over seeds (up to {seeds.max()})",
                     fontsize=9)  # fmt: skip
    return fig


def _bits_figure(table: pd.DataFrame):
    """Bits belong to the trained model: one row per run directory, whatever its conditions."""
    once = table.drop_duplicates(subset=["model", "preset", "seed"])
    bits = once.filter(regex="^bits_cb").assign(run=once["run"]).dropna(how="all", axis=0)
    bits = bits.melt(id_vars="run", var_name="codebook", value_name="bits").dropna()
    if not len(bits):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bits["codebook"] = bits["codebook"].str.replace("bits_cb", "")
    sns.barplot(bits, x="codebook", y="bits", hue="run", ax=ax)
    _legend_outside(ax)
    ax.set_title("held-out bits-per-code per codebook")
    return fig


def _curves_figure(runs):
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
    if not len(curves):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    for ax, x, what in zip(
        axes,
        ("flops", "step", "seconds"),
        ("training FLOPs (the matched budget)", "step", "training seconds"),
        strict=True,
    ):
        sns.lineplot(curves, x=x, y="bits", hue="run", marker="o", ax=ax,
                     legend=x == "seconds")  # one legend, outside the last panel  # fmt: skip
        ax.set_title(f"validation bits-per-code vs {what}", fontsize=9)
    _legend_outside(axes[-1])
    return fig


def _repetition_figure(table: pd.DataFrame):
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
    _legend_outside(ax)
    ax.set_title("repetition")
    return fig


def _speed_figure(table: pd.DataFrame):
    speed = _entries(table)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    sns.barplot(speed, x="entry", y="gen_rtf", ax=axes[0])
    axes[0].set_title("generation real-time factor (lower is faster)")
    sns.barplot(speed, x="entry", y="train_codes_per_s", ax=axes[1])
    axes[1].set_title("training codes / s")
    return fig


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
    headline = headline_table(table, tests["intervals"])
    md = [
        f"# PhoneLM results\n\nASR: {asr}; Whisper English normaliser on both sides.\n",
        "## Headline (mean per-utterance WER, 95% hierarchical-bootstrap interval)\n",
        headline.to_markdown(index=False),
        "\n## Runs and references\n",
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
    page = _page(
        asr=asr,
        headline=headline.to_html(index=False, escape=True),
        runs_html=_display(shown.drop(columns="asr")).to_html(index=False),
        over_seeds=seed_summary(table).to_html(index=False),
        paired="".join(
            f"<h3>{title}</h3>"
            + (f'<div class="scroll">{t.to_html(index=False)}</div>' if len(t) else "<p>none</p>")
            for title, t in (
                (
                    "pairwise differences of mean per-utterance WER (hierarchical bootstrap, Holm)",
                    tests["effects"],
                ),
                ("per seed, per-utterance WER (Wilcoxon, Holm)", tests["utterances"]),
                ("over seeds, mean per-utterance WER (paired t-test, Holm)", tests["seeds"]),
            )
        ),  # fmt: skip
        plots="".join(_image_tag(p) for p in plots.values()),
        sentences=_sentence_cards(out, per_utt, by_run, references, sentences),
    )
    write_text(out / "report.html", page)


def _number(value: float, digits: int) -> str:
    """A cell's number, or blank where it was not measured (NaN)."""
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def headline_table(table: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """The first thing the report shows: per backend (and group and condition when there are
    several) the mean per-utterance WER with its 95% interval, bits/code, loop rate and speed,
    then the reference rows."""
    models = _entries(table)
    rows = []
    ci = intervals.set_index(["group", "condition", "model"]) if len(intervals) else None
    for (group, condition, model), block in models.groupby(["group", "condition", "model"]):
        key = (group, condition, model)
        wer = f"{block['wer_mean'].mean():.3f}"
        if ci is not None and key in ci.index:
            row = ci.loc[key]
            wer = f"{row['wer_mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        mean = {c: block[c].mean() for c in ("mcd", "bits_per_code", "loop_rate", "gen_rtf")}
        rows.append({
            "backend": block["entry"].iloc[0], "seeds": len(block), "WER (95% CI)": wer,
            "MCD dB": f"{mean['mcd']:.2f}", "bits/code": f"{mean['bits_per_code']:.3f}",
            "loops": f"{mean['loop_rate']:.2f}", "gen RTF": f"{mean['gen_rtf']:.2f}",
            "train codes/s": _number(block["train_codes_per_s"].mean(), 0),
        })  # fmt: skip
    refs = table[table["preset"].isna()].drop_duplicates(subset=["model", "k", "split"])
    for _, ref in refs.iterrows():
        rows.append({"backend": f"{ref['model']} (K = {ref['k']}, {ref['split']})", "seeds": "",
                     "WER (95% CI)": f"{ref['wer_mean']:.3f}", "MCD dB": f"{ref['mcd']:.2f}",
                     "bits/code": "", "loops": "", "gen RTF": "", "train codes/s": ""})  # fmt: skip
    return pd.DataFrame(rows)


def _sentence_cards(out: Path, per_utt, by_run, references, limit: int) -> str:
    """Per sentence: its text, then a grid of cards that wraps to the page's width (ground
    truth, codec resynthesis, every run): audio, and the transcript with its WER."""
    ids = sorted(set(per_utt["id"]))[:limit]
    ref_dirs = [out / "references" / key for key in references]
    corpora: dict = {}
    blocks = []
    for uid in ids:
        utt = per_utt[per_utt["id"] == uid]
        first = by_run[utt["run"].iloc[0]]
        if first.path not in corpora:
            corpora[first.path] = first.corpus()
        cards = [_card("ground truth", corpora[first.path][uid].wav)]
        resynth = next((d / "resynthesis" / f"{uid}.wav" for d in ref_dirs
                        if (d / "resynthesis" / f"{uid}.wav").is_file()), None)  # fmt: skip
        if resynth is not None:
            cards.append(_card("codec resynthesis", resynth))
        for _, u in utt.iterrows():
            heard = f"{html.escape(u['hyp'])} <b>(WER {u['wer']:.2f})</b>"
            cards.append(_card(u["run"], by_run[u["run"]].wav(uid), heard))
        blocks.append(
            f'<section class="sentence"><p class="ref"><b>{html.escape(uid)}</b>: '
            f'{html.escape(utt["ref"].iloc[0])}</p><div class="cards">{"".join(cards)}</div>'
            "</section>"
        )
    return "".join(blocks)


def _card(title: str, wav: Path, heard: str = "") -> str:
    text = f'<p class="heard">{heard}</p>' if heard else ""
    return f'<div class="card"><p class="who">{html.escape(title)}</p>{_audio_tag(wav)}{text}</div>'


STYLE = """
body{font-family:sans-serif;margin:1em auto;max-width:1400px;padding:0 1em;box-sizing:border-box}
h1{font-size:1.6em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top;white-space:nowrap}
#headline td,#headline th{font-size:15px}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
.sentence{border-top:1px solid #ddd;padding:.5em 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:8px}
.card{border:1px solid #ddd;border-radius:4px;padding:6px;min-width:0}
.card audio{width:100%}
.who{font-size:12px;color:#555;margin:0 0 4px;overflow-wrap:anywhere}
.heard{font-size:13px;margin:4px 0 0;overflow-wrap:anywhere}
details{margin:1em 0}
"""


def _page(*, asr, headline, runs_html, over_seeds, paired, plots, sentences) -> str:
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in NOTES)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>PhoneLM report</title>
<style>{STYLE}</style></head><body><h1>PhoneLM report</h1>
<p>ASR: {html.escape(asr)}. WER is the mean of per-utterance WER; its interval is a 95%
hierarchical bootstrap over seeds, then sentences.</p>
<h2>Headline</h2><div class="scroll" id="headline">{headline}</div>
<h2>Plots</h2>{plots}
<h2>Sentences</h2><div id="sentences">{sentences}</div>
<h2>Pairwise tests</h2>{paired}
<details><summary>Every run and reference row</summary><div class="scroll">{runs_html}</div>
</details>
<details><summary>Over seeds (mean ± 95% CI)</summary><div class="scroll">{over_seeds}</div>
</details>
<h2>How to read these numbers</h2><ul>{notes}</ul></body></html>"""
