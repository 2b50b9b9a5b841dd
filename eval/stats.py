"""Statistics of the comparison: intervals over seeds and paired tests between backends.

- `mean_ci`: mean and 95% half-width (Student t) over independent values, e.g. one per seed.
- `utterance_tests`: per generation condition and seed, a Wilcoxon signed-rank test on
  per-utterance WER for every pair of backends (the same sentences, so the pairs are matched);
  Holm's correction across the pairs of each (condition, seed).
- `seed_tests`: per condition, with >= 3 seeds of both backends, the mean paired difference of
  a per-seed metric (default: mean per-utterance WER; paired by seed: same data order and
  sentences) with its 95% t interval and a paired t-test, Holm-corrected across the pairs of
  the condition.
- `backend_intervals`, `pairwise_effects`: the mean of per-utterance WER per backend and the
  difference per pair, with 95% intervals from a hierarchical bootstrap (resample seeds, then
  sentences within each) and, per pair, a two-sided bootstrap p, Holm-corrected. This is the
  study's test of the architecture: the seed is the replicate.
Everything is computed within one `group` (a folder of runs of one K, budget and variant:
runs of different settings are never pooled) and one condition.
The seeds are the independent replicates: utterance x seed values are never treated as
independent.
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
    per_utt = per_utt if "group" in per_utt else per_utt.assign(group=".")
    for (where, condition, seed), group in per_utt.groupby(["group", "condition", "seed"]):
        table = group.pivot_table(index="id", columns="model", values="wer")
        block = []
        for a, b in combinations(sorted(table.columns), 2):
            pair = table[[a, b]].dropna()
            differs = int((pair[a] != pair[b]).sum())
            p = stats.wilcoxon(pair[a], pair[b]).pvalue if differs >= 5 else math.nan
            block.append(
                {
                    "group": where,
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


def seed_tests(per_seed: pd.DataFrame, *, metric: str = "wer_mean") -> pd.DataFrame:
    """per_seed: one row per (group, condition, model, seed) with `metric` (default: the mean
    of per-utterance WER) -> per (group, condition), a paired t-test per pair of models that
    share >= 3 seeds, Holm-corrected across those pairs."""
    rows = []
    per_seed = per_seed if "group" in per_seed else per_seed.assign(group=".")
    for (where, condition), group in per_seed.groupby(["group", "condition"]):
        table = group.pivot_table(index="seed", columns="model", values=metric)
        block = []
        for a, b in combinations(sorted(table.columns), 2):
            pair = table[[a, b]].dropna()
            if len(pair) < 3:
                continue
            difference, half = mean_ci(pair[a] - pair[b])
            block.append(
                {
                    "group": where,
                    "condition": condition,
                    "a": a,
                    "b": b,
                    "seeds": len(pair),
                    f"mean_{metric}_a": pair[a].mean(),
                    f"mean_{metric}_b": pair[b].mean(),
                    "difference": difference,  # a - b, its 95% t interval over seeds
                    "ci_low": difference - half,
                    "ci_high": difference + half,
                    "t_test_p": stats.ttest_rel(pair[a], pair[b]).pvalue,
                }
            )
        for row, adjusted in zip(block, holm([r["t_test_p"] for r in block]), strict=True):
            row["holm_p"] = adjusted
        rows += block
    return pd.DataFrame(rows)


BOOTSTRAP_DRAWS = 4000


def _matrix(per_utt: pd.DataFrame, model: str, seeds, ids, metric: str):
    """[seeds, sentences] values of `metric` for `model` (rows: seeds, columns: ids)."""
    rows = per_utt[per_utt["model"] == model].pivot_table(
        index="seed", columns="id", values=metric, aggfunc="mean"
    )
    return rows.loc[list(seeds), list(ids)].to_numpy(dtype=float)


def hierarchical_bootstrap(values, *, draws: int = BOOTSTRAP_DRAWS, seed: int = 0):
    """values [seeds, sentences] (one backend, or a paired difference of two) -> the bootstrap
    distribution [draws] of their mean: each draw resamples the seeds (the replicates), then
    the sentences within each drawn seed, both with replacement. With one seed it is a
    bootstrap over sentences only (the trained model held fixed)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    s, n = values.shape
    rng = np.random.default_rng(seed)
    seed_pick = rng.integers(0, s, size=(draws, s))
    sentence_pick = rng.integers(0, n, size=(draws, s, n))
    return values[seed_pick[:, :, None], sentence_pick].mean(axis=(1, 2))


def interval(dist) -> tuple[float, float]:
    """The central 95% of a bootstrap distribution."""
    import numpy as np

    low, high = np.percentile(dist, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_p(dist) -> float:
    """Two-sided bootstrap p-value that the mean difference is 0 (the share of draws on the far
    side of 0, doubled; at least 1 / draws)."""
    import numpy as np

    dist = np.asarray(dist)
    tail = min((dist <= 0).mean(), (dist >= 0).mean())
    return float(min(1.0, max(2 * tail, 1 / len(dist))))


def backend_intervals(per_utt: pd.DataFrame, *, metric: str = "wer") -> pd.DataFrame:
    """per_utt: rows (group, condition, model, seed, id, metric) -> per (group, condition,
    model): the mean of per-utterance `metric` over seeds and sentences with its 95%
    hierarchical-bootstrap interval."""
    rows = []
    for (group, condition, model), block in per_utt.groupby(["group", "condition", "model"]):
        seeds, ids = sorted(block["seed"].unique()), sorted(block["id"].unique())
        values = _matrix(block, model, seeds, ids, metric)
        if pd.isna(values).any():  # a seed that generated other sentences: no matched grid
            continue
        low, high = interval(hierarchical_bootstrap(values))
        rows.append(
            {
                "group": group,
                "condition": condition,
                "model": model,
                "seeds": len(seeds),
                "sentences": len(ids),
                f"{metric}_mean": float(values.mean()),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def pairwise_effects(per_utt: pd.DataFrame, *, metric: str = "wer") -> pd.DataFrame:
    """Per (group, condition) and pair of backends a < b: the difference of mean per-utterance
    `metric` (a - b) over the seeds and sentences both have, its 95% interval and two-sided p
    from the paired hierarchical bootstrap (seeds, then sentences), Holm-corrected across the
    pairs of the (group, condition)."""
    rows = []
    for (group, condition), block in per_utt.groupby(["group", "condition"]):
        block_rows = []
        for a, b in combinations(sorted(block["model"].unique()), 2):
            left, right = block[block["model"] == a], block[block["model"] == b]
            seeds = sorted(set(left["seed"]) & set(right["seed"]))
            ids = sorted(set(left["id"]) & set(right["id"]))
            if not seeds or not ids:
                continue
            diff = _matrix(block, a, seeds, ids, metric) - _matrix(block, b, seeds, ids, metric)
            if pd.isna(diff).any():
                continue
            dist = hierarchical_bootstrap(diff)
            low, high = interval(dist)
            block_rows.append(
                {
                    "group": group,
                    "condition": condition,
                    "a": a,
                    "b": b,
                    "seeds": len(seeds),
                    "sentences": len(ids),
                    "difference": float(diff.mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "bootstrap_p": bootstrap_p(dist),
                }
            )
        for row, adjusted in zip(
            block_rows, holm([r["bootstrap_p"] for r in block_rows]), strict=True
        ):
            row["holm_p"] = adjusted
            row["holds"] = bool(adjusted < 0.05 and (row["ci_low"] > 0 or row["ci_high"] < 0))
        rows += block_rows
    return pd.DataFrame(rows)
