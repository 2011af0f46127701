"""Attacks: engines and wrappers, grouped by what they perturb; each registers into ATTACKS."""
from suite.attacks import gradient  # noqa: F401

try:  # TextAttack recipes (text); the module imports textattack only when an attack runs
    from suite.attacks import textattack_recipes  # noqa: F401
except ImportError:
    pass
from suite.attacks import autoattack  # noqa: F401
from suite.attacks import cw  # noqa: F401
from suite.attacks import stadv  # noqa: F401
from suite.attacks import pixle  # noqa: F401
from suite.attacks import segpgd  # noqa: F401
