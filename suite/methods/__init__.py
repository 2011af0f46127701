"""Training methods, one module per family; each registers into METHODS."""
from suite.methods import at, sam, st  # noqa: F401
