"""Training methods, one module per family; each registers into METHODS."""
from suite.methods import at, awp, sam, sam_at, st, trades  # noqa: F401
