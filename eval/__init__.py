"""Evaluation: scoring run directories (score.py), publishing the study (study.py), ASR,
metrics, statistics, the HTML report and codec checks."""
