"""Model FLOPs, counted from a real batch: the unit in which training budgets are matched.

`train_step_flops(model, batch)` is the one function the trainer and benchmarks use: a training
step costs forward + backward = 3 x forward (the backward pass computes gradients with respect to
both activations and weights, each as costly as the forward matmul). Each backend's
`forward_flops(batch)` adds up the pieces below for the shapes its `forward` really runs:

- every matmul, at 2 FLOPs per multiply-add: the q/k/v/out projections and the GLU feed-forward
  of every layer, the projections between widths, and the output heads over the codes;
- attention scores and the weighted sum of values over the dense L x L matrix the attention
  kernel computes, with L the batch's padded sequence length (a causal or padding mask does not
  skip work in these kernels, so padded positions cost what they cost);
- not counted: embedding lookups (gathers, no multiply), norms, softmax, activations, rotary
  embeddings and the optimiser, each O(tokens x width) or O(parameters), well under 1% here.

tests/test_flops.py checks every backend against torch.utils.flop_counter.FlopCounterMode.
"""

from models.base import Backend, ModelConfig
from models.blocks import heads_for
from phonelm.batching import Batch


def linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def stack(cfg: ModelConfig, *, batch: int, length: int, depth: int, dim: int | None = None) -> int:
    """One attention stack (attention_stack in models/blocks.py) over [batch, length] tokens."""
    dim = dim or cfg.dim
    attn, ff = heads_for(dim, cfg.dim_head) * cfg.dim_head, dim * cfg.ff_mult
    tokens = batch * length
    per_layer = (
        linear(tokens, dim, 3 * attn)  # q, k, v
        + 2 * 2 * batch * length * length * attn  # scores q k^T, then scores @ v
        + linear(tokens, attn, dim)  # output projection
        + linear(tokens, dim, 2 * ff)  # GLU: value and gate
        + linear(tokens, ff, dim)
    )
    return depth * per_layer


def train_step_flops(model: Backend, batch: Batch) -> int:
    """FLOPs of one forward + backward pass of `model` (in training mode) on `batch`."""
    return 3 * model.forward_flops(batch)
