import pytest
import torch
from x_transformers import Decoder

from models.base import ModelConfig
from models.blocks import attention_stack, run_stack
from models.kv_cache import CachedStack, Recompute


def stack(dim: int = 64, dim_head: int = 32, depth: int = 3, prefix: str = "causal") -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=dim, depth=depth, dim_head=dim_head, n_codebooks=2, prefix=prefix)
    built = attention_stack(cfg, depth=depth, text_prefix=True).eval()
    with torch.no_grad():  # x-transformers inits gammas to 1 and biases to 0: make them matter
        for name, p in built.named_parameters():
            if "gamma" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return built


def left_padded(b: int = 3, n: int = 12, dim: int = 64):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, n, dim, generator=gen)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, :3], valid[1, :1] = False, False
    pos = (torch.rand(b, n, generator=gen) * 3).cumsum(1)  # aligned-style float positions
    return x, valid, pos


@pytest.mark.parametrize("dim_head", [32, 64], ids=["2-heads", "1-head"])
def test_chunked_decoding_equals_the_stack_on_the_whole_sequence(dim_head):
    model = stack(dim_head=dim_head)
    x, valid, pos = left_padded()
    expected = model(x, mask=valid, pos=pos)
    cached = CachedStack(model, batch=3, capacity=12)
    chunks = [(0, 5), *[(i, i + 1) for i in range(5, 9)], (9, 12)]
    out = torch.cat(
        [cached.step(x[:, a:b], pos=pos[:, a:b], valid=valid[:, a:b]) for a, b in chunks], dim=1
    )
    assert cached.length == 12
    torch.testing.assert_close(out[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_a_bidirectional_text_prefix_sees_later_text_and_audio_stays_causal():
    model, (x, valid, pos) = stack(prefix="bidirectional"), left_padded()
    later_text, later_audio = x.clone(), x.clone()
    later_text[:, 4] += 1.0
    later_audio[:, 9] += 1.0

    def run(inputs, prefix=5):
        return run_stack(model, inputs, mask=valid, pos=pos, prefix=prefix)

    assert not torch.allclose(run(x)[:, 3], run(later_text)[:, 3])  # text sees later text
    torch.testing.assert_close(run(x)[:, :9], run(later_audio)[:, :9])  # nothing sees the future
    # prefix 0 is the causal stack
    torch.testing.assert_close(run(x, 0)[:, 3], run(later_text, 0)[:, 3])
    torch.testing.assert_close(run(x, 0), model(x, mask=valid, pos=pos))


@pytest.mark.parametrize("decoder", [CachedStack, Recompute])
def test_chunked_decoding_with_a_bidirectional_prefix_equals_the_whole_sequence(decoder):
    model, (x, valid, pos) = stack(prefix="bidirectional"), left_padded()
    expected = run_stack(model, x, mask=valid, pos=pos, prefix=5)
    cached = decoder(model, batch=3, capacity=12)
    out = [cached.step(x[:, :6], pos=pos[:, :6], valid=valid[:, :6], prefix=5)]
    out += [cached.step(x[:, i : i + 1], pos=pos[:, i : i + 1]) for i in range(6, 12)]
    out = torch.cat(out, dim=1)
    torch.testing.assert_close(out[valid], expected[valid], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="must lie within the first chunk"):
        decoder(model, batch=3, capacity=12).step(x[:, :3], prefix=5)


def test_default_positions_are_the_sequence_index_and_clear_restarts():
    model = stack()
    x, _, _ = left_padded()
    expected = model(x)
    cached = CachedStack(model, batch=3, capacity=12)
    cached.step(torch.randn(3, 4, 64))
    cached.clear()
    out = torch.cat(
        [cached.step(x[:, :7]), *[cached.step(x[:, i : i + 1]) for i in range(7, 12)]], 1
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_feeding_past_capacity_is_an_error():
    cached = CachedStack(stack(), batch=1, capacity=4)
    cached.step(torch.randn(1, 4, 64))
    with pytest.raises(ValueError, match="holds 4 tokens; 5 were fed"):
        cached.step(torch.randn(1, 1, 64))


@pytest.mark.parametrize(
    "changes",
    [{"ff_glu": False}, {"attn_qk_norm": True}, {"use_rmsnorm": True}, {"sandwich_norm": True}],
    ids=["plain-ff", "qk-norm", "rmsnorm", "sandwich-norm"],
)
def test_stacks_it_does_not_implement_are_refused(changes):
    settings = dict(dim=64, depth=2, heads=2, attn_dim_head=32, rotary_pos_emb=True, ff_glu=True)
    other = Decoder(**{**settings, **changes})
    with pytest.raises(NotImplementedError, match="CachedStack"):
        CachedStack(other, batch=1, capacity=4)
