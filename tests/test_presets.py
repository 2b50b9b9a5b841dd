from dataclasses import asdict, replace
from pathlib import Path

import pytest

from experiments.presets import preset
from models.registry import BACKENDS, build_backend

ROOT = Path(__file__).resolve().parent.parent
K = {"tiny": 2, "cpu": 2, "paper": 8}


def built(name: str, model: str):
    cfg = preset(name, model)
    assert cfg.model.n_codebooks is None  # K is stated once, on the codec
    return build_backend(replace(cfg.model, n_codebooks=K[name], phoneme_stride=5.5))


@pytest.mark.parametrize("name", ["tiny", "cpu", "paper"])
def test_backends_are_matched_in_non_embedding_parameters(name):
    models = {m: built(name, m) for m in sorted(BACKENDS)}
    counts = {m: model.num_params(non_embedding=True) for m, model in models.items()}
    mean = sum(counts.values()) / len(counts)
    assert all(abs(c / mean - 1) <= 0.05 for c in counts.values()), counts
    expected = {"tiny": (0.03e6, 0.1e6), "cpu": (2e6, 4e6), "paper": (80e6, 150e6)}[name]
    assert all(expected[0] < c < expected[1] for c in counts.values()), counts
    totals = {m: model.num_params() for m, model in models.items()}
    assert all(totals[m] > counts[m] for m in models)  # embeddings and heads come on top


def test_non_embedding_parameters_leave_out_exactly_the_vocabulary_tables():
    model = built("cpu", "flat")
    d, k, v = model.cfg.dim, K["cpu"], model.cfg.codebook_size
    tables = model.cfg.n_phonemes * d + k * v * d + k * d * (v + 1) + k * (v + 1)
    assert model.num_params() - model.num_params(non_embedding=True) == tables


def test_cpu_preset_is_flops_matched():
    budgets = {preset("cpu", m).train.budget_flops for m in BACKENDS}
    assert len(budgets) == 1 and budgets.pop() > 0


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid presets: \\['cpu', 'paper', 'tiny'\\]"):
        preset("huge", "flat")


def test_presets_use_the_right_codec():
    assert (
        preset("cpu", "flat").codec.name == "mel-rvq"
        and preset("cpu", "flat").codec.n_codebooks == 2
    )
    paper = preset("paper", "flat")
    assert paper.codec.name == "encodec" and paper.codec.bandwidth == 6.0
    assert paper.data.corpus == "ljspeech" and paper.codec.bandwidth == 6.0  # K = 8


def test_derived_depths_are_the_matched_ones_the_results_were_made_with():
    """Depths are derived (matched_depths), not listed: pin what they come out as, so a change
    to a backend that moves its preset size is seen."""
    from experiments.presets import matched_depths

    derived = {
        p: {m: matched_depths(p, m) for m in ("megabyte", "valle", "flat", "delay")}
        for p in ("tiny", "cpu", "paper")
    }
    small = {"megabyte": {"depth": 4}, "valle": {"depth": 3, "nar_depth": 2}}
    small |= {"flat": {"depth": 5}, "delay": {"depth": 5}}
    assert derived["tiny"] == derived["cpu"] == small
    assert derived["paper"] == {
        "megabyte": {"depth": 11},
        "valle": {"depth": 6, "nar_depth": 6},
        "flat": {"depth": 12},
        "delay": {"depth": 12},
    }


def test_every_preset_that_trains_for_real_ends_every_backend_at_one_flops_budget():
    """cpu and paper match backends in training FLOPs, not steps (flat's step costs ~10x at
    K = 8): the same budget for all four, and a step cap that is never the binding limit."""
    for name in ("cpu", "paper"):
        budgets = {
            preset(name, m).train.budget_flops for m in ("delay", "flat", "megabyte", "valle")
        }
        assert len(budgets) == 1 and None not in budgets
        assert preset(name, "delay").train.steps >= 100_000


def test_the_presets_code_dropout_is_the_screens_pick():
    """STUDY_CODE_DROPOUT is typed in presets.py: it must be what the committed screens pick
    (eval/study.py, the rule of docs/study.md), one entry per backend whose pick is final."""
    from eval.score import code_dropout
    from eval.study import study_picks
    from experiments.presets import STUDY_CODE_DROPOUT

    chosen = study_picks(ROOT / "results" / "study")
    final = chosen[(chosen["study"] == "screens") & chosen["final"]].set_index("model")
    assert set(STUDY_CODE_DROPOUT) == set(final.index)
    for model, row in final.iterrows():
        for name in ("cpu", "paper"):
            cfg = asdict(preset(name, model).model)
            assert code_dropout(cfg) == row["code_dropout"], (name, model, row["pick"])
            assert cfg["positions"] == "aligned"
