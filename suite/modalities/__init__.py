"""Modality adapters: one module per modality, each registering into MODALITIES."""
from suite.modalities import image  # noqa: F401

try:  # the text adapter needs the `text` extra (transformers); without it, text tasks say so
    from suite.modalities import text  # noqa: F401
except ImportError:
    pass
