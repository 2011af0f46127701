"""Training methods, one module per family; each registers into METHODS."""
from suite.methods import at, sam, st  # noqa: F401
from suite.methods import trades  # noqa: F401
from suite.methods import sam_at  # noqa: F401
from suite.methods import awp  # noqa: F401
