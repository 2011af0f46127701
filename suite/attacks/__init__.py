"""Attacks: engines and wrappers, grouped by what they perturb; each registers into ATTACKS."""
from suite.attacks import gradient  # noqa: F401
