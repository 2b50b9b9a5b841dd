"""Experiment entry points: run.py (train -> generate -> run directory), synthesize.py."""
