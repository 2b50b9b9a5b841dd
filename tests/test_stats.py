"""Statistics against values computed independently (closed forms, enumeration, tables)."""

import itertools
import math

import pandas as pd
import pytest

from eval.stats import (
    backend_intervals,
    bootstrap_p,
    hierarchical_bootstrap,
    holm,
    interval,
    mean_ci,
    pairwise_effects,
    seed_tests,
    utterance_tests,
)


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    t_975_df3 = 3.182446305284263  # from a t table
    assert mean == 2.5
    assert half == pytest.approx(t_975_df3 * math.sqrt(5 / 3) / 2, rel=1e-9)
    assert math.isnan(mean_ci([1.0])[1]) and mean_ci([1.0])[0] == 1.0


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, math.nan, 0.01])[0] == pytest.approx(0.5)
    assert math.isnan(holm([0.5, math.nan, 0.01])[1])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def exact_wilcoxon_p(diffs: list[float]) -> float:
    """Two-sided exact signed-rank p by enumerating every sign pattern (no ties)."""
    ranks = {d: r for r, d in enumerate(sorted(diffs, key=abs), start=1)}
    observed = sum(ranks[d] for d in diffs if d > 0)
    centre = len(diffs) * (len(diffs) + 1) / 4
    patterns = list(itertools.product((0, 1), repeat=len(diffs)))
    extreme = sum(
        abs(sum(r for r, s in zip(ranks.values(), signs, strict=True) if s) - centre)
        >= abs(observed - centre) - 1e-9
        for signs in patterns
    )
    return extreme / len(patterns)


def test_utterance_tests_are_per_seed_wilcoxon_with_holm():
    a = [0.9, 0.8, 0.7, 0.95, 0.6, 0.85]
    b = [0.5, 0.85, 0.4, 0.45, 0.32, 0.61]
    c = [0.2, 0.1, 0.3, 0.25, 0.05, 0.15]
    rows = [
        {"condition": "tts", "model": m, "seed": 0, "id": f"u{i}", "wer": w}
        for m, values in (("a", a), ("b", b), ("c", c))
        for i, w in enumerate(values)
    ]
    rows += [{**r, "seed": 1, "wer": r["wer"] * 0.5} for r in rows if r["model"] != "c"]
    # another condition of the same sentences: its own tests, never paired across conditions
    rows += [{**r, "condition": "continuation", "wer": 1 - r["wer"]} for r in rows[:12]]
    result = utterance_tests(pd.DataFrame(rows))
    tts = result[result["condition"] == "tts"]
    assert len(tts[tts["seed"] == 0]) == 3 and len(tts[tts["seed"] == 1]) == 1
    [other] = result[result["condition"] == "continuation"].to_dict("records")
    assert (other["a"], other["b"], other["holm_p"]) == ("a", "b", other["wilcoxon_p"])
    assert other["mean_wer_a"] == pytest.approx(1 - sum(a) / 6)
    first = tts[tts["seed"] == 0].set_index(["a", "b"])
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert first.loc[("a", "b"), "wilcoxon_p"] == pytest.approx(exact_wilcoxon_p(diffs))
    raw = list(first["wilcoxon_p"])
    assert list(first["holm_p"]) == pytest.approx(holm(raw))
    assert first.loc[("a", "c"), "mean_wer_a"] == pytest.approx(sum(a) / 6)


def test_seed_tests_pair_by_seed_and_need_three_seeds():
    rows = [{"model": "x", "seed": s, "wer": w} for s, w in enumerate([3.0, 4.0, 5.0])]
    rows += [{"model": "y", "seed": s, "wer": w} for s, w in enumerate([2.0, 2.0, 2.0])]
    rows += [{"model": "z", "seed": s, "wer": 1.0} for s in range(2)]  # only 2 seeds
    rows = [{**r, "condition": "tts"} for r in rows]
    # a second condition with 3 seeds of y and z: tested on its own
    rows += [{"model": m, "seed": s, "wer": 1.0 + s * (m == "y"), "condition": "continuation"}
             for m in ("y", "z") for s in range(3)]  # fmt: skip
    result = seed_tests(pd.DataFrame(rows), metric="wer")
    assert list(zip(result["condition"], result["a"], result["b"], strict=True)) == [
        ("continuation", "y", "z"),
        ("tts", "x", "y"),
    ]
    result = result[result["condition"] == "tts"]
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3); with 2 degrees of freedom the two-sided p has
    # the closed form 1 - t / sqrt(2 + t^2)
    t = 2 * math.sqrt(3)
    assert result["t_test_p"].iloc[0] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert result["holm_p"].iloc[0] == pytest.approx(result["t_test_p"].iloc[0])
    # x - y per seed: 1, 2, 3 -> mean 2, half-width t(0.975, 2) * 1 / sqrt 3
    half = 4.302652729911275 / math.sqrt(3)
    assert result["difference"].iloc[0] == pytest.approx(2.0)
    assert (result["ci_low"].iloc[0], result["ci_high"].iloc[0]) == pytest.approx(
        (2 - half, 2 + half)
    )


def _grid(model: str, values, group: str = "g") -> list[dict]:
    """per-utterance rows of one model from values [seeds][sentences]."""
    return [
        {"group": group, "condition": "tts", "model": model, "seed": s, "id": f"u{i}", "wer": v}
        for s, row in enumerate(values)
        for i, v in enumerate(row)
    ]


def test_the_bootstrap_of_a_constant_difference_is_that_difference_with_the_smallest_p():
    dist = hierarchical_bootstrap([[0.25] * 10] * 3, draws=500)
    assert interval(dist) == pytest.approx((0.25, 0.25))
    assert bootstrap_p(dist) == pytest.approx(1 / 500)


def test_the_hierarchical_interval_carries_the_seed_to_seed_spread():
    """Two seeds that disagree completely (every sentence 0 on one, 1 on the other): resampling
    seeds gives a wide interval (draws of 0, 0.5 and 1), where a bootstrap over the pooled
    sentences alone would be tight around 0.5."""
    low, high = interval(hierarchical_bootstrap([[0.0] * 40, [1.0] * 40]))
    assert low < 0.05 and high > 0.95
    pooled = interval(hierarchical_bootstrap([[0.0] * 40 + [1.0] * 40]))
    assert 0.35 < pooled[0] < 0.5 < pooled[1] < 0.65


def test_pairwise_effects_find_a_real_gap_and_call_noise_not_distinguishable():
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=(3, 60))
    rows = (
        _grid("a", base + 0.2) + _grid("b", base) + _grid("c", base + rng.normal(0, 0.1, (3, 60)))
    )
    effects = pairwise_effects(pd.DataFrame(rows)).set_index(["a", "b"])
    assert effects.loc[("a", "b"), "difference"] == pytest.approx(0.2)
    assert effects.loc[("a", "b"), "holds"] and effects.loc[("a", "b"), "ci_low"] > 0
    assert not effects.loc[("b", "c"), "holds"]
    assert effects.loc[("b", "c"), "ci_low"] < 0 < effects.loc[("b", "c"), "ci_high"]
    assert list(effects["holm_p"]) == pytest.approx(holm(list(effects["bootstrap_p"])))


def test_groups_are_never_pooled():
    rows = _grid("a", [[1.0] * 5], group="k2") + _grid("a", [[0.0] * 5], group="k4")
    rows += _grid("b", [[0.5] * 5], group="k2") + _grid("b", [[0.5] * 5], group="k4")
    table = backend_intervals(pd.DataFrame(rows)).set_index(["group", "model"])
    assert table.loc[("k2", "a"), "wer_mean"] == 1.0 and table.loc[("k4", "a"), "wer_mean"] == 0.0
    effects = pairwise_effects(pd.DataFrame(rows)).set_index("group")
    assert effects.loc["k2", "difference"] == 0.5 and effects.loc["k4", "difference"] == -0.5
