"""Modality adapters: one module per modality, each registering into MODALITIES."""
from suite.modalities import image, segmentation, text  # noqa: F401  (text imports transformers lazily)
