"""Attacks: engines and wrappers, grouped by what they perturb; each registers into ATTACKS."""
from suite.attacks import autoattack, cw, gradient, pixle, segpgd, stadv  # noqa: F401

try:  # TextAttack recipes (text); the module imports textattack only when an attack runs
    from suite.attacks import textattack_recipes  # noqa: F401
except ImportError:
    pass
