"""The study's plot: mean per-utterance WER against K per backend, each point with its 95%
hierarchical-bootstrap interval over seeds then sentences, beside the ground-truth and codec
rows of the same K and split. One panel per study, budget and split (screens, on `valid`,
are left out: they choose the recipe, they do not answer)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from phonelm.io import write_with  # noqa: E402

REFERENCE_STYLE = {"ground truth": ("k", "*"), "codec resynthesis": ("0.5", "s")}  # color, marker


def panels(runs: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """intervals (group, condition, model, wer_mean, ci_low, ci_high) with each group's study,
    K, budget and split: one row per point of the plot."""
    where = runs[["group", "condition", "k", "budget_flops", "split"]].drop_duplicates(
        ["group", "condition"]
    )
    points = intervals.merge(where, on=["group", "condition"])
    points = points[points["split"] != "valid"]
    return points.assign(
        study=points["group"].map(lambda g: g.split("/")[0]),
        budget_flops=points["budget_flops"].fillna(0.0),
    )  # 0: steps only


def references_of(refs: pd.DataFrame, group: str, split: str, ks: list[int]) -> pd.DataFrame:
    """The reference rows (ground truth, codec) that belong to a group of runs: scored in the
    group's folder or one above it, on its split, at one of the K values."""
    if refs.empty:  # references not scored yet: none
        return refs
    above = refs["scored_in"].map(lambda where: where == "." or group.startswith(f"{where}/"))
    return refs[above & (refs["split"] == split) & refs["k"].isin(ks)]


def wer_by_k(runs: pd.DataFrame, intervals: pd.DataFrame, refs: pd.DataFrame, path: Path):
    """Write the plot to `path` (PNG) -> path, or None when no confirmatory run is scored."""
    points = panels(runs, intervals)
    if points.empty:
        return None
    keys = sorted(points.groupby(["study", "budget_flops", "split"]).groups,
                  key=lambda key: (key[0], key[1], key[2] == "novel"))  # fmt: skip
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys) + 1.6, 3.4), squeeze=False,
                             sharey=True)  # fmt: skip
    models = sorted(points["model"].unique())
    for ax, (study, budget, split) in zip(axes[0], keys, strict=True):
        here = points[(points["study"] == study) & (points["budget_flops"] == budget)
                      & (points["split"] == split)]  # fmt: skip
        ks = sorted(int(k) for k in here["k"].unique())
        for i, model in enumerate(models):
            mine = here[here["model"] == model].sort_values("k")
            if mine.empty:
                continue
            dodge = (i - (len(models) - 1) / 2) * 0.12  # side by side at one K
            below, above = mine["wer_mean"] - mine["ci_low"], mine["ci_high"] - mine["wer_mean"]
            ax.errorbar(mine["k"] + dodge, mine["wer_mean"], yerr=[below, above], capsize=3,
                        marker="o", label=model, color=f"C{i}")  # fmt: skip
        for _, ref in references_of(refs, f"{study}/", split, ks).sort_values("k").iterrows():
            color, marker = REFERENCE_STYLE.get(ref["model"], ("0.3", "x"))
            ax.plot(ref["k"], ref["wer_mean"], marker=marker, color=color, linestyle="none",
                    label=ref["model"])  # fmt: skip
        ax.set_xticks(ks)
        ax.set_xlim(min(ks) - 1, max(ks) + 1)
        ax.set_xlabel("K (codebooks per frame)")
        spent = f"{budget:.2g} FLOPs" if budget else "a step count"
        ax.set_title(f"{study}: {spent}, sentences of {split}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("WER (mean per utterance, 95% CI)")
    axes[0][0].set_ylim(bottom=0)
    handles = {}
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    order = [m for m in models if m in handles] + sorted(set(handles) - set(models))
    fig.legend([handles[label] for label in order], order, loc="upper left", fontsize=8,
               bbox_to_anchor=(1.0, 0.95), frameon=False)  # fmt: skip
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight",
                                             metadata={"Software": None}))  # fmt: skip
    plt.close(fig)
    return path
