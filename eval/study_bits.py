"""The study's ASR-free comparison: held-out bits per code of every finished run, scored or not.

Each run measures its teacher-forced bits per code on its evaluation split (test_metrics.json,
`eval_split`) when its training ends; no ASR and no audio are needed, so this table fills as
runs land, before the scoring pass. The seed is the replicate: per backend, the mean over
seeds with a 95% Student-t interval; per pair of backends with >= 3 shared seeds, the mean
paired difference (a seed fixes the data order for every backend) with its 95% t interval and
a paired t-test, Holm-corrected across the pairs of a setting (eval/stats.py `seed_tests`).
"""

import pandas as pd

from eval.stats import mean_ci, seed_tests

HEADINGS = ("setting", "split", "backend", "seeds", "bits/code (95% CI)", "by seed",
            "codebook 1", "text reliance", "steps")  # fmt: skip


def _fmt(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.3f}"


def bits_table(finished: pd.DataFrame) -> list[str]:
    """Markdown lines: one row per setting and backend, then per setting one line per pair.
    finished: one row per finished run (group, split, model, seed, bits_per_code, bits_cb1,
    text_reliance_bits, steps)."""
    lines = ["| " + " | ".join(HEADINGS) + " |", "|" + "---|" * len(HEADINGS)]
    for (group, split, model), block in finished.groupby(["group", "split", "model"]):
        block = block.sort_values("seed")
        mean, half = mean_ci(block["bits_per_code"])
        ci = f" [{mean - half:.3f}, {mean + half:.3f}]" if not pd.isna(half) else ""
        cells = [f"`{group}`", f"`{split}`", model, str(len(block)), f"**{mean:.3f}**{ci}",
                 " / ".join(f"{v:.3f}" for v in block["bits_per_code"]),
                 _fmt(block["bits_cb1"].mean()), _fmt(block["text_reliance_bits"].mean()),
                 f"{block['steps'].mean():.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    tests = seed_tests(finished.assign(condition="tts"), metric="bits_per_code")
    lines.append("")
    for group, block in finished.groupby("group"):
        lines += pair_lines(group, block, tests[tests["group"] == group] if len(tests) else tests)
    return lines


def pair_lines(group: str, block: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    """One line per tested pair of the setting's backends (>= 3 shared seeds), then one line
    naming the pairs not tested yet with their shared seeds."""
    seeds = block.groupby("model")["seed"].apply(set)
    tested = {(t["a"], t["b"]): t for _, t in tests.iterrows()}
    out, waiting = [], []
    for i, a in enumerate(seeds.index):
        for b in seeds.index[i + 1 :]:
            if (a, b) not in tested:
                waiting.append(f"{a} - {b} ({len(seeds[a] & seeds[b])})")
                continue
            t = tested[(a, b)]
            holds = t["holm_p"] < 0.05 and (t["ci_low"] > 0 or t["ci_high"] < 0)
            better, worse = (a, b) if t["difference"] < 0 else (b, a)
            verdict = f"**{better} < {worse}**" if holds else "not distinguishable"
            out.append(
                f"- `{group}` {a} - {b}: {verdict} (difference {t['difference']:+.3f} "
                f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] bits/code, paired over "
                f"{t['seeds']} seeds, Holm p = {t['holm_p']:.3g})"
            )
    if waiting:
        out.append(f"- `{group}` not tested yet (shared seeds; 3 needed): {', '.join(waiting)}")
    return out
