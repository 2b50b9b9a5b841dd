"""Held-out measures of a trained model on the split it generates (`valid` for screens and
recipe choices, `test` only for the study's final runs): bits per code, and the text-reliance
control, each utterance's codes scored with the next one's text."""

from experiments.train import evaluate, loader_for, loader_over
from phonelm.dataset import OtherText


def text_reliance(own: dict, other_text: dict) -> dict:
    """Held-out bits per code lost when every utterance is scored with another one's text (the
    next in the split), in total and per codebook: ~0 for a model that ignores the text."""
    return {
        "text_reliance_bits": other_text["bits_per_code"] - own["bits_per_code"],
        "text_reliance_bits_by_codebook": [
            o - s
            for o, s in zip(
                other_text["bits_per_code_by_codebook"],
                own["bits_per_code_by_codebook"],
                strict=True,
            )
        ],
    }


class HeldOut:
    """The loaders of one split, built (and so checked) before a run directory is written."""

    def __init__(self, cache_dir, split: str, train_cfg, data_cfg, frame_rate: float):
        dataset, _, self.loader = loader_for(
            cache_dir, split, train_cfg, data_cfg, frame_rate, shuffle=False
        )
        self.other_text = (  # each utterance's codes with the next one's phonemes
            loader_over(OtherText(dataset), train_cfg, shuffle=False)[1]
            if len(dataset) > 1
            else None
        )

    def measure(self, model, device) -> dict:
        """Bits per code (total, per codebook, stop) and text reliance; collective under DDP."""
        result = evaluate(model, self.loader, device)
        if self.other_text is not None:
            result.update(text_reliance(result, evaluate(model, self.other_text, device)))
        return result
