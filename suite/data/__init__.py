"""Dataset readers for official on-disk formats, in-memory datasets, and batch augmentations."""
