"""PhoneLM: phonemes -> audio-codec codes, an ablation benchmark of code-grid orderings."""

__version__ = "0.1.0"
