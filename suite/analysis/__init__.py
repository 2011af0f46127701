"""Analyses: numbers read off a trained model beyond clean and robust accuracy (e.g. sharpness).

Each module registers into ANALYSES. Like attacks, analyses are named by a spec string
(`name:key=value,...`), are part of a run's evaluation protocol (and so of its run id), and their
results are stored in the run record and shown as leaderboard columns.
"""
from suite.analysis import sharpness  # noqa: F401
