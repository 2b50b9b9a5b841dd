import pytest
import torch

from models.patterns import PATTERNS, make_pattern

SIZES = [(k, f) for k in (1, 2, 4, 8) for f in (1, 5)]


def sees(name: str, t: tuple[int, int], c: tuple[int, int], k: int) -> bool:
    """Each ordering's rule, written out: may the prediction of code t = (frame, codebook) see
    code c?"""
    (ft, kt), (fc, kc) = t, c
    return {
        "flat": fc * k + kc < ft * k + kt,
        "delay": fc + kc < ft + kt,
        "parallel": fc < ft,
        "frames": fc < ft or (fc == ft and kc < kt),
        "stages": (kc == 0 and fc < ft) if kt == 0 else kc < kt,
    }[name]


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize(("k", "f"), SIZES)
def test_every_code_has_one_slot_and_build_reverts(name, k, f):
    pattern = make_pattern(name, k)
    steps = pattern.steps(f)
    held = steps[steps >= 0]
    assert sorted(held.tolist()) == list(range(k * f))  # every code exactly once
    codes = torch.randint(0, 1024, (3, k, f))
    layout = pattern.build(codes, empty=1024)
    assert layout.shape == (3, steps.shape[1], steps.shape[0])
    assert int((layout == 1024).sum()) == 3 * int((steps < 0).sum())
    assert torch.equal(pattern.revert(layout, f), codes)


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize(("k", "f"), SIZES)
def test_no_code_sees_itself_or_a_later_code(name, k, f):
    pattern = make_pattern(name, k)
    visible = pattern.visible(f)
    coords = [(i // k, i % k) for i in range(k * f)]
    expected = torch.tensor([[sees(name, t, c, k) for c in coords] for t in coords])
    assert torch.equal(visible, expected)
    assert not visible.diagonal().any()
    assert not (visible & visible.T).any()  # an order: nothing sees a code that sees it
    step, slot = (x.flatten() for x in pattern.place(f))
    rank = step * (k * f) + (slot if pattern.sequential else 0)  # generation order
    t, c = visible.nonzero(as_tuple=True)
    assert (rank[c] < rank[t]).all()


def test_layouts_are_the_orderings_they_name():
    codes = torch.arange(6).view(1, 2, 3)  # [B, K=2, F=3]: codebook 0 = 0,1,2; codebook 1 = 3,4,5
    assert make_pattern("flat", 2).build(codes, empty=-9).tolist() == [[[0, 3, 1, 4, 2, 5]]]
    delay = make_pattern("delay", 2).build(codes, empty=-9)
    assert delay.tolist() == [[[0, 1, 2, -9], [-9, 3, 4, 5]]]
    assert make_pattern("frames", 2).build(codes, empty=-9).tolist() == codes.tolist()
    stages = make_pattern("stages", 2).build(codes, empty=-9)
    assert stages.tolist() == [[[0, 1, 2, 3], [-9, -9, -9, 4], [-9, -9, -9, 5]]]


def test_unknown_pattern_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown pattern 'zigzag'.*'delay'"):
        make_pattern("zigzag", 2)
    with pytest.raises(ValueError, match="K >= 1"):
        make_pattern("flat", 0)
