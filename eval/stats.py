"""Statistics of the comparison: intervals over seeds and paired tests between backends.

- `mean_ci`: mean and 95% half-width (Student t) over independent values, e.g. one per seed.
- `utterance_tests`: per generation condition and seed, a Wilcoxon signed-rank test on
  per-utterance WER for every pair of backends (the same sentences, so the pairs are matched);
  Holm's correction across the pairs of each (condition, seed).
- `seed_tests`: per condition, with >= 3 seeds of both backends, a paired t-test on per-seed
  mean WER (paired by seed: same data order and sentences), Holm-corrected across the pairs of
  the condition.
Backends are only ever compared within one condition. The seeds are the
  independent replicates: utterance x seed values are never treated as independent.
"""

import math
from itertools import combinations

import pandas as pd
from scipy import stats


def mean_ci(values) -> tuple[float, float]:
    """Mean and 95% CI half-width (Student t; nan for fewer than two values)."""
    values = pd.Series(values, dtype=float).dropna()
    n = len(values)
    if n < 2:
        return float(values.mean()) if n else math.nan, math.nan
    return float(values.mean()), float(
        stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    )


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan entries stay nan and do not count)."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def utterance_tests(per_utt: pd.DataFrame) -> pd.DataFrame:
    """per_utt: one row per (condition, model, seed, id) with `wer` -> one row per
    (condition, seed, pair)."""
    rows = []
    for (condition, seed), group in per_utt.groupby(["condition", "seed"]):
        table = group.pivot_table(index="id", columns="model", values="wer")
        block = []
        for a, b in combinations(sorted(table.columns), 2):
            pair = table[[a, b]].dropna()
            differs = int((pair[a] != pair[b]).sum())
            p = stats.wilcoxon(pair[a], pair[b]).pvalue if differs >= 5 else math.nan
            block.append(
                {
                    "condition": condition,
                    "seed": seed,
                    "a": a,
                    "b": b,
                    "utterances": len(pair),
                    "mean_wer_a": pair[a].mean(),
                    "mean_wer_b": pair[b].mean(),
                    "wilcoxon_p": p,
                }
            )
        for row, adjusted in zip(block, holm([r["wilcoxon_p"] for r in block]), strict=True):
            row["holm_p"] = adjusted
        rows += block
    return pd.DataFrame(rows)


def seed_tests(per_seed: pd.DataFrame, *, metric: str = "wer") -> pd.DataFrame:
    """per_seed: one row per (condition, model, seed) with `metric` -> per condition, a paired
    t-test per pair of models that share >= 3 seeds, Holm-corrected across those pairs."""
    rows = []
    for condition, group in per_seed.groupby("condition"):
        table = group.pivot_table(index="seed", columns="model", values=metric)
        block = []
        for a, b in combinations(sorted(table.columns), 2):
            pair = table[[a, b]].dropna()
            if len(pair) < 3:
                continue
            block.append(
                {
                    "condition": condition,
                    "a": a,
                    "b": b,
                    "seeds": len(pair),
                    f"mean_{metric}_a": pair[a].mean(),
                    f"mean_{metric}_b": pair[b].mean(),
                    "t_test_p": stats.ttest_rel(pair[a], pair[b]).pvalue,
                }
            )
        for row, adjusted in zip(block, holm([r["t_test_p"] for r in block]), strict=True):
            row["holm_p"] = adjusted
        rows += block
    return pd.DataFrame(rows)
