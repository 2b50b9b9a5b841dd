"""Evaluation: ASR, metrics, codec checks and (to come) the scoring harness."""
