"""Training methods, one module per family; each registers into METHODS (suite.methods.base holds the
contract, suite.methods.adversarial the inner-attack threat model the adversarial families share)."""
from suite.methods import at, awp, sam, sam_at, st, trades  # noqa: F401
