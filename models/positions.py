"""Rotary positions of a [phonemes; audio] sequence, the same rule for every backend.

`model.positions = "sequence"`: a token's position is its index in the sequence (x-transformers'
default); the phoneme -> frame alignment must then be found from content alone.

`model.positions = "aligned"`, `model.phoneme_stride = s`: the query that predicts audio frame f
sits at position f and phoneme i of the text (counted from its first real phoneme) at
(i + 1/2) * s. With s = the corpus's mean frames per phoneme (experiments/presets.py `resolve`
measures it on the training split), the expected alignment is relative position 0, which
rotary attention can find at once; the model still learns each utterance's own timing from
content. Backends lay out their audio tokens so that a token's position is the frame its
successor's prediction is about:

- one token per frame after a start token (MegaByte's global model, VALL-E's AR, delay's steps):
  start at 0, frame f's token at f + 1;
- S tokens per frame (flat): token j after the start at j / S, so the query for codebook k of
  frame f sits at f + k / S;
- one token per frame and no start token (VALL-E's NAR, which predicts frame f at its own
  token): frame f at f.
"""

import torch

from models.base import ModelConfig


def phoneme_positions(ph_mask: torch.Tensor, stride: float) -> torch.Tensor:
    """Left-padded phoneme mask [B, P] -> positions [B, P]: (i + 1/2) * stride for the i-th real
    phoneme (padding gets negative positions; it is masked out anyway)."""
    index = ph_mask.long().cumsum(1) - 1  # [B, P]: -1 on left padding
    return (index.float() + 0.5) * stride


def sequence_positions(
    cfg: ModelConfig, ph_mask: torch.Tensor, n_audio: int, *, per_frame: int = 1
) -> torch.Tensor | None:
    """Positions [B, P + n_audio] of phonemes then `n_audio` audio tokens whose j-th sits at
    j / per_frame; None (the sequence index) unless cfg.positions is "aligned"."""
    if cfg.positions != "aligned":
        return None
    stride = cfg.phoneme_stride
    audio = torch.arange(n_audio, device=ph_mask.device, dtype=torch.float) / per_frame
    return torch.cat(
        [phoneme_positions(ph_mask, stride), audio.expand(ph_mask.shape[0], -1)], dim=1
    )
