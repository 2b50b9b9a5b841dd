"""Incremental decoding through an x-transformers `Decoder` with a static key/value cache.

x-transformers' own cache (`return_hiddens=True`, `cache=`) concatenates each layer's keys and
values every step and re-rotates every cached key, so a step costs O(length) copies, and its
general-purpose layers make ~180 small tensor operations per layer in Python: at the benchmark's
sizes that overhead, not arithmetic, set generation speed (bench/run.py). `CachedStack` runs the
same stack with the same weights as a plain sequence of tensor operations (~15 a layer) and keeps
keys, already rotated, in buffers preallocated for the whole generation, so no step re-rotates or
copies the cache (attention over it still grows with its length: a step at 20 s of audio costs
2-2.8x one at 10 s, docs/speed.md).

Inference only (no autograd, no dropout). It runs exactly the stack that
`models.blocks.attention_stack` builds (pre-norm attention + GLU feed-forward layers, rotary
positions, a final norm) and refuses any stack with other parts; tests/test_kv_cache.py checks
that its outputs equal x-transformers' own, whole sequence or token by token.
"""

import weakref

import torch
import torch.nn.functional as F
from torch import nn
from x_transformers.x_transformers import (
    GLU,
    Attention,
    Decoder,
    FeedForward,
    LayerNorm,
    PrefixDecoder,
    Residual,
)

from models.blocks import run_stack

_ATTENTION_PARAMS = {"to_q.weight", "to_k.weight", "to_v.weight"}


def _norm_weight(norm) -> tuple[torch.Tensor, float]:
    if type(norm) is not LayerNorm:
        raise NotImplementedError(f"CachedStack: a {type(norm).__name__} norm")
    return norm.gamma + float(norm.unit_offset), norm.ln.eps


def _attention_weights(block: Attention) -> dict:
    names = {name for name, _ in block.named_parameters()}
    single = isinstance(block.to_out, nn.Identity)  # one head as wide as the model: no projection
    if names != _ATTENTION_PARAMS | (set() if single else {"to_out.weight"}):
        raise NotImplementedError(f"CachedStack: attention with parameters {sorted(names)}")
    # one projection for queries, keys and values: [3 * H * Dh, D]
    qkv = torch.cat([block.to_q.weight, block.to_k.weight, block.to_v.weight])
    return {"qkv": qkv, "out": None if single else block.to_out.weight, "heads": block.heads}


def _feedforward_weights(block: FeedForward) -> dict:
    glu, dropout, out = (*block.ff, None, None)[:3]
    plain_glu = (
        type(glu) is GLU
        and type(glu.act) is nn.GELU
        and glu.act.approximate == "none"
        and isinstance(glu.mult_bias, float)
        and glu.mult_bias == 1.0
        and glu.up_softclamp_value is None
    )
    if len(block.ff) != 3 or not plain_glu or type(dropout) is not nn.Dropout:
        raise NotImplementedError(f"CachedStack: a feed-forward other than GLU-GELU: {block.ff}")
    return {
        "up": glu.proj.weight,
        "up_bias": glu.proj.bias,
        "down": out.weight,
        "down_bias": out.bias,
    }


def _layers(stack: Decoder) -> list[dict]:
    rotary = stack.rotary_pos_emb
    if rotary is None or rotary.scale is not None or rotary.interpolation_factor != 1:
        raise NotImplementedError("CachedStack: needs plain rotary positions")
    if any(m is not None for m in (*stack.skip_combines, *stack.layer_integrators)):
        raise NotImplementedError("CachedStack: skip connections between layers")
    layers = []
    for (pre_norm, *post_norms), block, residual in stack.layers:
        if any(n is not None for n in post_norms):
            raise NotImplementedError("CachedStack: post-norm layers")
        if type(residual) is not Residual or residual.residual_scale is not None:
            raise NotImplementedError(f"CachedStack: a {type(residual).__name__} residual")
        if residual.scale_residual_constant != 1:
            raise NotImplementedError("CachedStack: a scaled residual")
        norm, eps = _norm_weight(pre_norm)
        if isinstance(block, Attention):
            layers.append({"norm": norm, "eps": eps, **_attention_weights(block)})
        elif isinstance(block, FeedForward):
            layers.append({"norm": norm, "eps": eps, **_feedforward_weights(block)})
        else:
            raise NotImplementedError(f"CachedStack: a {type(block).__name__} layer")
    return layers


class CachedStack:
    """Feed an x-transformers `Decoder` a sequence in chunks, each chunk attending to every
    earlier token and causally within itself.

    `batch` rows, at most `capacity` tokens in all. `step(x [B, N, D], pos=..., valid=...)`
    appends N tokens and returns their outputs [B, N, D] (after the stack's final norm). The
    weights are read when it is built: build it per generation, after training. A
    `PrefixDecoder`'s text prefix (`step(..., prefix=P)` on the first chunk) is bidirectional.
    """

    _agreeing = weakref.WeakSet()  # stacks whose outputs it was checked to reproduce

    @torch.no_grad()
    def __init__(self, stack: Decoder, *, batch: int, capacity: int, check: bool = True):
        self.layers = _layers(stack)
        self.bidirectional = isinstance(stack, PrefixDecoder)
        self.final_norm, self.final_eps = _norm_weight(stack.final_norm)
        self.inv_freq = stack.rotary_pos_emb.inv_freq  # [rot / 2]
        self.capacity, self.length = capacity, 0
        attn = [layer for layer in self.layers if "qkv" in layer]
        self.heads = attn[0]["heads"]
        self.dim_head = attn[0]["qkv"].shape[0] // 3 // self.heads
        self.rot = 2 * self.inv_freq.shape[0]  # rotated dims of each head
        # rotate_half as a matrix: pairs (x0, x1) -> (-x1, x0), so x @ turn = rotate_half(x)
        like = attn[0]["qkv"]
        turn = torch.zeros(self.rot, self.rot, dtype=like.dtype, device=like.device)
        even = torch.arange(0, self.rot, 2, device=like.device)
        turn[even + 1, even], turn[even, even + 1] = -1.0, 1.0
        self.half_turn = turn
        shape = (len(attn), batch, self.heads, capacity, self.dim_head)
        self.keys = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.values = torch.zeros_like(self.keys)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=like.device)
        self.dtype, self.padded, self.index_rotation = like.dtype, False, None
        if check and stack not in self._agreeing:
            self._check_agreement(stack)
            self._agreeing.add(stack)

    @classmethod
    def _check_agreement(cls, stack: Decoder) -> None:
        """x-transformers has options without parameters that the checks above cannot see (qk
        norm, logit soft-capping, ...): compare with the stack itself on a random sequence once."""
        dim = stack.final_norm.gamma.shape[0]
        like = stack.final_norm.gamma
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, dim, generator=gen).to(like)
        probe = cls(stack, batch=1, capacity=4, check=False)
        ours = torch.cat([probe.step(x[:, :2]), probe.step(x[:, 2:3]), probe.step(x[:, 3:])], 1)
        training = stack.training
        theirs = stack.eval()(x)
        stack.train(training)
        if not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-3):
            raise NotImplementedError(
                "CachedStack: this stack has options CachedStack does not implement (its outputs "
                "differ from x-transformers'): decode with x-transformers' own cache instead"
            )

    def clear(self) -> None:
        """Forget every token: the next step starts a new sequence."""
        self.length, self.padded = 0, False

    def _rotation(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [B or 1, N] -> cos, sin [B or 1, 1, N, rot]: x-transformers' rotary angles
        (position x frequency, each frequency on a pair of dims)."""
        angle = (pos.float()[..., None] * self.inv_freq).repeat_interleave(2, dim=-1)
        return angle.cos()[:, None].to(self.dtype), angle.sin()[:, None].to(self.dtype)

    def _index_rotation(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index_rotation is None:
            index = torch.arange(self.capacity, device=self.valid.device)[None]
            self.index_rotation = self._rotation(index)
        return self.index_rotation

    def _rotate(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of queries and keys qk [2, B, H, N, Dh] (their first `rot` dims)."""
        turned, kept = qk[..., : self.rot], qk[..., self.rot :]
        return torch.cat([turned * cos + (turned @ self.half_turn) * sin, kept], dim=-1)

    @torch.no_grad()
    def step(
        self,
        x: torch.Tensor,
        *,
        pos: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        prefix: int = 0,
    ) -> torch.Tensor:
        """x [B, N, D]; pos [B, N] rotary positions (None: the sequence index); valid [B, N]
        (False: a padding token no later token attends to; None: all valid); prefix: the
        number of leading text tokens of a first chunk, which a PrefixDecoder's tokens all see
        (`models.blocks.run_stack`) -> [B, N, D]."""
        b, n, d = x.shape
        start, end = self.length, self.length + n
        if end > self.capacity:
            raise ValueError(f"CachedStack holds {self.capacity} tokens; {end} were fed")
        _check_prefix(prefix, start, n)
        text = prefix if self.bidirectional else 0
        if pos is None:  # the sequence index: rows of a table made once
            cos, sin = self._index_rotation()
            cos, sin = cos[..., start:end, :], sin[..., start:end, :]
        else:
            cos, sin = self._rotation(pos)
        if valid is not None and not bool(valid.all()):
            self.padded = True
        self.valid[:, start:end] = True if valid is None else valid
        see = None  # one new token and no padding anywhere: it sees every key
        if n > 1 or self.padded:
            # query i sees key j when j is valid and earlier or text; every token sees itself,
            # so a padding query attends to something (its output is never used)
            j = torch.arange(end, device=x.device)
            i = torch.arange(start, end, device=x.device)[:, None]
            earlier = (j <= i) | (j < text)
            see = ((self.valid[:, None, :end] & earlier) | (j == i))[:, None]  # [B, 1, N, end]
        index = 0
        # the hot loop: view/permute rather than einops (microseconds a call add up)
        for layer in self.layers:
            h = F.layer_norm(x, (d,), layer["norm"], eps=layer["eps"])
            if "up" in layer:  # GLU feed-forward
                up, gate = F.linear(h, layer["up"], layer["up_bias"]).chunk(2, dim=-1)
                x = x + F.linear(up * F.gelu(gate), layer["down"], layer["down_bias"])
                continue
            qkv = F.linear(h, layer["qkv"]).view(b, n, 3, self.heads, self.dim_head)
            qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, N, Dh]
            q, k = self._rotate(qkv[:2], cos, sin)
            self.keys[index, :, :, start:end] = k
            self.values[index, :, :, start:end] = qkv[2]
            out = F.scaled_dot_product_attention(
                q, self.keys[index, :, :, :end], self.values[index, :, :, :end], see
            )  # [B, H, N, Dh]
            out = out.transpose(1, 2).reshape(b, n, -1)
            x = x + (out if layer["out"] is None else F.linear(out, layer["out"]))
            index += 1
        self.length = end
        return F.layer_norm(x, (d,), self.final_norm, eps=self.final_eps)


def _check_prefix(prefix: int, start: int, n: int) -> None:
    if prefix and (start > 0 or prefix > n):
        raise ValueError(f"a text prefix ({prefix} tokens) must lie within the first chunk")


def window(pos: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    """Positions [B, L] -> [B, end - start] of tokens start..end-1 (None stays None)."""
    return None if pos is None else pos[:, start:end]


class Recompute:
    """`CachedStack`'s interface without a cache: every step runs x-transformers' stack over the
    whole sequence so far (quadratic; the reference that cached decoding must reproduce, and the
    uncached baseline of bench/run.py)."""

    def __init__(self, stack: Decoder, *, batch: int, capacity: int):
        self.stack, self.capacity = stack, capacity
        self.clear()

    def clear(self) -> None:
        self.x, self.pos, self.valid, self.length, self.prefix = [], [], [], 0, 0

    @torch.no_grad()
    def step(
        self,
        x: torch.Tensor,
        *,
        pos: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        prefix: int = 0,
    ) -> torch.Tensor:
        b, n, _ = x.shape
        if self.length + n > self.capacity:
            raise ValueError(f"Recompute holds {self.capacity} tokens; {self.length + n} were fed")
        _check_prefix(prefix, self.length, n)
        if self.length == 0:
            self.prefix = prefix
        if pos is None:
            pos = torch.arange(self.length, self.length + n, device=x.device).expand(b, -1)
        self.x.append(x)
        self.pos.append(pos.expand(b, -1))
        self.valid.append(
            torch.ones(b, n, dtype=torch.bool, device=x.device) if valid is None else valid
        )
        self.length += n
        out = run_stack(
            self.stack,
            torch.cat(self.x, 1),
            mask=torch.cat(self.valid, 1),
            pos=torch.cat(self.pos, 1),
            prefix=self.prefix,
        )
        return out[:, -n:]


def stack_decoder(stack: Decoder, *, batch: int, capacity: int, cached: bool = True):
    """A `CachedStack`, or with cached=False a `Recompute` of the whole sequence every step."""
    return (CachedStack if cached else Recompute)(stack, batch=batch, capacity=capacity)
