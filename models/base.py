"""The backend interface: phonemes -> codes [K, F], trained only on audio-code targets.

Every backend returns, from `forward(batch)`, the summed NLL (nats) and the target count per
codebook, plus the stop decision's NLL, so bits-per-code is computed identically for all of them.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models import decoding
from models.patterns import make_pattern
from phonelm.batching import Batch
from phonelm.sampling import Chooser, Prompted, Sampling
from phonelm.text import VOCAB


@dataclass
class ModelConfig:
    name: str = "megabyte"
    dim: int = 256
    depth: int = 6
    dim_head: int = 64
    ff_mult: int = 4
    dropout: float = 0.0
    code_dropout: float = 0.0  # training: embedded input codes zeroed with this probability
    # what one dropout draw removes: "code" (each input code alone) or "frame" (all K codes of a
    # frame together, wherever they enter: the same strength for every ordering)
    code_dropout_unit: str = "code"
    local_dim: int = 128  # megabyte: local transformer width
    local_depth: int = 2  # megabyte: local transformer depth
    nar_depth: int = 0  # valle: NAR depth (0: same as `depth`)
    n_codebooks: int | None = None  # K: None takes the codec's; another value is an error
    positions: str = "sequence"  # rotary positions: "sequence" | "aligned" (models/positions.py)
    # aligned: frames per phoneme (None: experiments/presets.py `resolve` measures it)
    phoneme_stride: float | None = None
    # attention inside the phoneme prefix: "causal" (phoneme i sees phonemes <= i) or
    # "bidirectional" (every phoneme sees the whole text, a prefix LM); audio is causal either way
    prefix: str = "causal"
    codebook_size: int = 1024
    n_phonemes: int = len(VOCAB)


@dataclass
class ForwardOutput:
    loss: torch.Tensor  # scalar: mean NLL over code targets and stop decisions
    nll: torch.Tensor  # [K] summed NLL (nats) of code targets per codebook
    count: torch.Tensor  # [K] code targets per codebook
    stop_nll: torch.Tensor  # scalar: summed NLL of the stop decisions
    stop_count: torch.Tensor  # scalar

    def bits_per_code(self) -> torch.Tensor:
        """[K] bits per code, per codebook."""
        return self.nll / self.count.clamp_min(1) / math.log(2)


@dataclass
class Generated:
    codes: torch.Tensor  # [K, F] in [0, codebook_size)
    stopped: bool  # False: the max-length guard ended it


class Backend(nn.Module, ABC):
    """A phonemes -> codes model. Subclasses: built from a ModelConfig (`Cls(cfg)`).

    `pattern_name` names the code ordering the backend models (models/patterns.py);
    `self.pattern` is that ordering at the config's K. tests/test_backends.py checks that the
    backend's teacher-forced logits for a code never depend on a code its pattern hides.

    Subclasses implement `forward` (teacher-forced loss and per-codebook NLL), `logits` (the
    teacher-forced logits it comes from), `decode` (codes for a batch, choosing each code with a
    `Chooser`) and `forward_flops` (the matmul FLOPs of `forward` on a batch, in the current
    train/eval mode; see models/flops.py).
    """

    pattern_name: ClassVar[str]
    # the ModelConfig fields that set its size; presets derive them (experiments/presets.py)
    depth_settings: ClassVar[tuple[str, ...]] = ("depth",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.n_codebooks or cfg.n_codebooks < 1:
            raise ValueError(f"model.n_codebooks must be a positive K, got {cfg.n_codebooks}")
        if cfg.positions not in ("sequence", "aligned"):
            raise ValueError(f"model.positions={cfg.positions!r}: expected 'sequence' or 'aligned'")
        if cfg.prefix not in ("causal", "bidirectional"):
            raise ValueError(f"model.prefix={cfg.prefix!r}: expected 'causal' or 'bidirectional'")
        if cfg.positions == "aligned" and not (cfg.phoneme_stride or 0) > 0:
            raise ValueError(
                f"model.positions='aligned' needs model.phoneme_stride > 0 (frames per phoneme), "
                f"got {cfg.phoneme_stride}"
            )
        self.cfg = cfg
        self.pattern = make_pattern(self.pattern_name, cfg.n_codebooks)

    @abstractmethod
    def forward(self, batch: Batch) -> ForwardOutput: ...

    @abstractmethod
    def logits(self, batch: Batch) -> torch.Tensor:
        """[B, F + 1, K, V + 1] teacher-forced: [b, f, k] predicts codebook k of frame f, and
        [b, F_b, 0]'s class V is the stop decision (-inf where a class cannot occur)."""

    @abstractmethod
    def stepper(self, phonemes: list[torch.Tensor], *, limits: torch.Tensor, cached: bool):
        """The backend's incremental view of a batch being generated (`models/decoding.py`
        `Stepper`): logits of the codes of a step of its pattern, from the codes fed so far.
        Autoregressive parts use a static key/value cache, or with cached=False recompute the
        whole sequence each step (models/kv_cache.py): the codes are the same."""

    @torch.no_grad()
    def decode(
        self,
        phonemes: list[torch.Tensor],
        *,
        limits: torch.Tensor,
        choose: Chooser,
        cached: bool = True,
    ):
        """-> (codes [B, K, F_max], lengths [B], stopped [B]); item b gets at most limits[b]
        frames. The one decode loop walks the pattern's steps (`models/decoding.py`): codebook k
        of frame f is chosen by `choose(logits, k, f, history)` (or, for a stage filling many
        frames at once, `choose.all_frames(logits, k, first)`)."""
        stepper = self.stepper(phonemes, limits=limits, cached=cached)
        stop = self.cfg.codebook_size
        return decoding.decode(self.pattern, stepper, limits=limits, choose=choose, stop=stop)

    @abstractmethod
    def forward_flops(self, batch: Batch) -> int:
        """Matmul FLOPs of `forward(batch)` in the current mode (models/flops.py)."""

    @torch.no_grad()
    def generate(
        self,
        phonemes: list[torch.Tensor],
        *,
        max_frames: Sequence[int] | int,
        sampling: Sampling,
        seeds: Sequence[int],
        cached: bool = True,
        prompts: Sequence[torch.Tensor] | None = None,
    ) -> list[Generated]:
        """Codes for each phoneme sequence ([P] ids), batched. Item i gets at most max_frames[i]
        frames and its own random stream from seeds[i] (utterance_seed): its codes do not depend
        on its batch mates.

        With `prompts` (codes [K, N_i] each, N_i may be 0): VALL-E's continuation. Item i's
        phonemes are then those of its prompt's text and its own text; the model is fed the
        prompt's codes and continues them, and only the continuation (at most max_frames[i]
        frames) is returned."""
        device = phonemes[0].device
        n = len(phonemes)
        limits = [max_frames] * n if isinstance(max_frames, int) else list(max_frames)
        if len(limits) != n or len(seeds) != n or (prompts is not None and len(prompts) != n):
            raise ValueError(
                f"{n} phoneme sequences need {n} max_frames, seeds (and prompts), got "
                f"{len(limits)}, {len(seeds)} (and {n if prompts is None else len(prompts)})"
            )
        chooser = Chooser(sampling, torch.tensor(list(seeds), dtype=torch.long, device=device))
        held = torch.zeros(n, dtype=torch.long)  # prompt frames per item
        if prompts is not None:
            k = self.cfg.n_codebooks
            if any(p.dim() != 2 or p.shape[0] != k for p in prompts):
                shapes = [tuple(p.shape) for p in prompts]
                raise ValueError(f"prompts must be codes [K={k}, N], got shapes {shapes}")
            held = torch.tensor([p.shape[1] for p in prompts])
            padded = torch.zeros(n, k, max(1, int(held.max())), dtype=torch.long)
            for i, p in enumerate(prompts):
                padded[i, :, : p.shape[1]] = p
            chooser = Prompted(chooser, padded.to(device), held.to(device))
            limits = [limit + int(h) for limit, h in zip(limits, held, strict=True)]
        codes, lengths, stopped = self.decode(
            phonemes, limits=torch.tensor(limits, device=device), choose=chooser, cached=cached
        )
        return [
            Generated(codes[i, :, int(held[i]) : int(lengths[i])].cpu(), bool(stopped[i]))
            for i in range(n)
        ]

    def num_params(self, *, non_embedding: bool = False) -> int:
        """All parameters, or only those outside the vocabulary tables: the embeddings of
        phonemes and codes and the output heads over codes, whose size follows V, not depth."""
        skip = set()
        if non_embedding:
            for module in self.modules():
                if isinstance(module, nn.Embedding) or getattr(module, "vocabulary_table", False):
                    skip.update(id(p) for p in module.parameters())
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)
