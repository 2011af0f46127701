"""Modality adapters: one module per modality, each registering into MODALITIES."""
from suite.modalities import image, text  # noqa: F401  (text imports transformers lazily)
from suite.modalities import segmentation  # noqa: F401
