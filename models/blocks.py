"""Pieces every backend shares: one attention stack (x-transformers), phoneme prefixes, the
per-frame targets with a stop class, and per-codebook NLL."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from x_transformers import Decoder, Encoder
from x_transformers.x_transformers import PrefixDecoder

from models.base import ForwardOutput, ModelConfig


def heads_for(dim: int, dim_head: int) -> int:
    return max(1, dim // dim_head)


def attention_stack(
    cfg: ModelConfig,
    *,
    depth: int,
    dim: int | None = None,
    causal: bool = True,
    text_prefix: bool = False,
):
    """The one block type of the benchmark: pre-norm attention + GLU feed-forward, rotary.

    A causal stack whose sequence starts with the phoneme prefix (`text_prefix`) is, with
    cfg.prefix == "bidirectional", x-transformers' `PrefixDecoder`: run it through
    `run_stack` with the prefix length, and its text tokens see each other."""
    dim = dim or cfg.dim
    if not causal:
        stack = Encoder
    elif text_prefix and cfg.prefix == "bidirectional":
        stack = PrefixDecoder
    else:
        stack = Decoder
    return stack(
        dim=dim,
        depth=depth,
        heads=heads_for(dim, cfg.dim_head),
        attn_dim_head=cfg.dim_head,
        ff_mult=cfg.ff_mult,
        ff_glu=True,
        rotary_pos_emb=True,
        # x-transformers' only use of `verbose`: a warning at every build that the rotary
        # dimension (dim_head / 2: 24 at the cpu preset, 16 at tiny) is below 32, which buried
        # real warnings; the size is the presets' stated choice
        verbose=False,
        attn_flash=True,  # torch's scaled_dot_product_attention kernels
        attn_dropout=cfg.dropout,
        ff_dropout=cfg.dropout,
    )


def run_stack(
    stack: nn.Module, x: torch.Tensor, *, mask: torch.Tensor, pos, prefix: int
) -> torch.Tensor:
    """x [B, N, D] whose first `prefix` tokens are the text -> [B, N, D]. A `PrefixDecoder`'s
    text tokens attend to each other (keys < prefix are visible to every query); a `Decoder`
    stays causal throughout and is run without a mask (`_run_packed`)."""
    if isinstance(stack, PrefixDecoder):
        return stack(x, mask=mask, pos=pos, prefix_attn_len=prefix)
    if isinstance(stack, Decoder):
        return _run_packed(stack, x, mask, pos)
    return stack(x, mask=mask, pos=pos)


def _run_packed(stack: Decoder, x: torch.Tensor, mask: torch.Tensor | None, pos) -> torch.Tensor:
    """A causal stack over rows whose valid tokens are one run (left-padded text, codes, right
    padding): each row is rolled so that its run starts at slot 0, run with no mask, and rolled
    back. Padding then only follows the valid tokens, which causality already hides from them,
    and the positions travel with their tokens (rotary attention sees the same offsets), so the
    outputs at valid tokens are those of the masked stack. x-transformers expands a padding mask
    into a dense [B, H, N, N] boolean per layer (gigabytes for flat's long sequences) and a mask
    rules out the flash kernel; with none, attention is plain causal."""
    if mask is None or bool(mask.all()):
        return stack(x, pos=pos)
    b, n = mask.shape
    index = torch.arange(n, device=x.device)
    first, count = mask.int().argmax(dim=1), mask.sum(dim=1)
    run = (index >= first[:, None]) & (index < (first + count)[:, None])
    if not torch.equal(run, mask):
        raise ValueError("a causal stack's valid tokens must be one run in each row")
    order = (index + first[:, None]) % n  # slot s of a row holds its token order[s]
    if pos is None:  # the sequence index, made explicit so that it travels with the tokens
        pos = index.to(torch.float).expand(b, n)
    rolled = stack(_take(x, order), pos=pos.gather(1, order))
    return _take(rolled, (index - first[:, None]) % n)


def _take(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], order [B, N] -> x[b, order[b, s]] for each row b and slot s."""
    return x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))


CODE_DROPOUT_UNITS = ("code", "frame")


def frame_keep(codes: torch.Tensor, cfg, training: bool) -> torch.Tensor | None:
    """Which input codes survive frame-level code dropout (`model.code_dropout_unit=frame`):
    [B, K, F] bool, each frame's K codes kept or dropped together with probability
    `cfg.code_dropout`, so one history frame is lost with the same probability whatever the
    ordering embeds per position (a per-code draw loses a whole frame with probability p for a
    one-code-per-frame stream but p^K for a model that embeds K codes a frame). None when off,
    or for per-code dropout (`drop_codes` then draws each code itself)."""
    if not training or cfg.code_dropout == 0 or cfg.code_dropout_unit != "frame":
        return None
    b, k, f = codes.shape
    return (torch.rand(b, 1, f, device=codes.device) >= cfg.code_dropout).expand(b, k, f)


def drop_codes(
    emb: torch.Tensor, p: float, training: bool, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Input-code dropout (Tacotron 2's prenet dropout, for codes): in training, embedded input
    codes emb [..., D] are zeroed with probability p (the rest scaled by 1 / (1 - p)), so a
    frame cannot be predicted from the audio before it alone and the text must be read. Every
    backend applies it wherever a code enters as an input; it is off in eval and generation.
    `keep` [...] (from `frame_keep`, laid out like emb's codes): the draw, shared by every code
    of a frame; None: each code is drawn on its own."""
    if not training or p == 0:
        return emb
    if keep is None:
        keep = torch.rand(*emb.shape[:-1], 1, device=emb.device) >= p
    else:
        keep = keep[..., None]
    return emb * keep / (1 - p)


def left_align(phonemes: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, P] -> left-padded ids [B, P] and mask [B, P] (True on real ids).

    Left padding makes every prefix end at the same position, so audio positions line up across
    the batch; rotary positions are relative, so the padding does not change any output.
    """
    p = phonemes.shape[1]
    shift = p - lengths  # [B]
    index = (torch.arange(p, device=phonemes.device)[None] - shift[:, None]) % p
    aligned = phonemes.gather(1, index)
    mask = torch.arange(p, device=phonemes.device)[None] >= shift[:, None]
    return aligned.masked_fill(~mask, 0), mask


def pad_phonemes(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [P_i] ids -> left-padded ids [B, P] and mask [B, P]."""
    lengths = torch.tensor([len(s) for s in seqs], device=seqs[0].device)
    right = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    return left_align(right, lengths)


def frame_targets(
    codes: torch.Tensor,
    lengths: torch.Tensor,
    stop: int,
    prompt_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """codes [B, K, F] (-1 padded) -> targets [B, F + 1, K]: codes, then `stop` at (F_b, k=0);
    -1 (no loss) on each utterance's first prompt_lengths[b] frames, its acoustic prompt."""
    b, k, f = codes.shape
    targets = torch.full((b, f + 1, k), -1, dtype=torch.long, device=codes.device)
    targets[:, :f] = rearrange(codes, "b k f -> b f k")
    targets[torch.arange(b, device=codes.device), lengths, 0] = stop
    if prompt_lengths is not None:
        prompt = torch.arange(f + 1, device=codes.device)[None] < prompt_lengths[:, None]
        targets = targets.masked_fill(prompt[..., None], -1)
    return targets


def mask_stop(logits: torch.Tensor, stop: int) -> torch.Tensor:
    """Only codebook 1 may stop: logits [..., K, V + 1], -inf stop logits for k > 0."""
    blocked = torch.zeros_like(logits, dtype=torch.bool)
    blocked[..., 1:, stop] = True
    return logits.masked_fill(blocked, float("-inf"))


def frame_loss(logits: torch.Tensor, targets: torch.Tensor, stop: int) -> ForwardOutput:
    """logits [B, N, K, V + 1], targets [B, N, K] (-1 ignored) -> per-codebook NLL sums."""
    nll = F.cross_entropy(
        rearrange(logits, "b n k v -> (b n k) v").float(),
        targets.flatten().clamp_min(0),
        reduction="none",
    ).view_as(targets)
    is_code = (targets >= 0) & (targets != stop)
    is_stop = targets == stop
    code_nll = (nll * is_code).sum(dim=(0, 1))
    count = is_code.sum(dim=(0, 1))
    stop_nll, stop_count = (nll * is_stop).sum(), is_stop.sum()
    loss = (code_nll.sum() + stop_nll) / (count.sum() + stop_count).clamp_min(1)
    return ForwardOutput(loss, code_nll.detach(), count, stop_nll.detach(), stop_count)


class CodebookHeads(nn.Module):
    """One output head per codebook over V codes, plus a stop class on codebook 1's head
    (index 0) when `stop` (the other codebooks' stop logits are -inf)."""

    vocabulary_table = True  # not counted in non-embedding parameters (Backend.num_params)

    def __init__(self, dim: int, n_codebooks: int, codebook_size: int, *, stop: bool = True):
        super().__init__()
        self.stop = codebook_size if stop else None
        classes = codebook_size + int(stop)
        self.weight = nn.Parameter(torch.randn(n_codebooks, dim, classes) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(n_codebooks, classes))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., K, D] -> logits [..., K, classes]."""
        logits = torch.einsum("...kd,kdv->...kv", hidden, self.weight) + self.bias
        return logits if self.stop is None else mask_stop(logits, self.stop)

    def one(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """hidden [B, D] for codebook k -> logits [B, classes]."""
        logits = hidden @ self.weight[k] + self.bias[k]
        if k > 0 and self.stop is not None:
            logits = logits.clone()
            logits[:, self.stop] = float("-inf")
        return logits

    def per_item(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """hidden [B, F, D], head index [B] -> logits [B, F, classes] (head index[b] for item b)."""
        return torch.einsum("bfd,bdv->bfv", hidden, self.weight[index]) + self.bias[index, None]


def phoneme_prefix(
    emb: nn.Embedding, bos: torch.Tensor, ids: torch.Tensor, ph_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [B, P] -> the [phonemes; BOS] inputs [B, P + 1, D] every autoregressive
    backend starts from, and their valid mask [B, P + 1]."""
    b = ids.shape[0]
    x = torch.cat([emb(ids), bos.expand(b, 1, -1)], dim=1)
    return x, torch.cat([ph_mask, ph_mask.new_ones(b, 1)], dim=1)


def codebook_offsets(n_codebooks: int, size: int, device) -> torch.Tensor:
    """[K]: k * size, to index codebook-specific rows of one embedding table."""
    return torch.arange(n_codebooks, device=device) * size
