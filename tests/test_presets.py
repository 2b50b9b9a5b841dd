import pytest

from experiments.presets import preset
from models.registry import BACKENDS, build_backend


@pytest.mark.parametrize("name", ["tiny", "cpu", "paper"])
def test_backends_are_matched_in_parameters(name):
    counts = {m: build_backend(preset(name, m).model).num_params() for m in sorted(BACKENDS)}
    mean = sum(counts.values()) / len(counts)
    assert all(abs(c / mean - 1) <= 0.05 for c in counts.values()), counts
    expected = {"tiny": (0.1e6, 0.5e6), "cpu": (2e6, 8e6), "paper": (80e6, 150e6)}[name]
    assert all(expected[0] < c < expected[1] for c in counts.values()), counts


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid presets: \\['cpu', 'paper', 'tiny'\\]"):
        preset("huge", "flat")


def test_presets_use_the_right_codec():
    assert (
        preset("cpu", "flat").codec.name == "mel-rvq"
        and preset("cpu", "flat").model.n_codebooks == 4
    )
    paper = preset("paper", "flat")
    assert paper.codec.name == "encodec" and paper.codec.bandwidth == 6.0
    assert paper.data.corpus == "ljspeech" and paper.model.n_codebooks == 8
