"""Statistics against values computed independently (closed forms, enumeration, tables)."""

import itertools
import math

import pandas as pd
import pytest

from eval.stats import holm, mean_ci, seed_tests, utterance_tests


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
    result = seed_tests(pd.DataFrame(rows))
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
