"""The FLOPs counter that budgets are matched in, against torch's own FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from models.flops import train_step_flops
from models.registry import BACKENDS, build_backend
from tests.test_backends import make_batch, tiny

# torch's counter knows the CUDA attention kernels but not the CPU one SDPA runs here: give it
# torch's own attention formulas for that kernel too
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v)
    ),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad, q, k, v, *args, **kwargs: sdpa_backward_flop_count(grad, q, k, v)
    ),
}


def measured(fn) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", sorted(BACKENDS))
@pytest.mark.parametrize("lengths", [((7, 12), (5, 9)), ((30, 40), (11, 25), (3, 2))])
def test_counted_flops_match_flop_counter_mode(name, lengths):
    torch.manual_seed(0)
    model = build_backend(tiny(name, dim=64, local_dim=32)).train()
    batch = make_batch(lengths=lengths)
    forward = measured(lambda: model(batch))
    assert model.forward_flops(batch) == pytest.approx(forward, rel=0.10)
    step = measured(lambda: model(batch).loss.backward())
    assert train_step_flops(model, batch) == pytest.approx(step, rel=0.10)


def test_evaluation_mode_counts_what_evaluation_runs():
    """VALL-E evaluates every NAR stage (K - 1 of them) but trains one per step."""
    model = build_backend(tiny("valle")).eval()
    batch = make_batch()
    assert model.forward_flops(batch) == pytest.approx(measured(lambda: model(batch)), rel=0.10)
    assert model.forward_flops(batch) > model.train().forward_flops(batch)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_flops_grow_with_the_batch(name):
    model = build_backend(tiny(name)).train()
    short, long = make_batch(lengths=((7, 12),)), make_batch(lengths=((7, 24),))
    assert model.forward_flops(long) > 1.5 * model.forward_flops(short)
