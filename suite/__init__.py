"""suite: a multi-modality benchmark of sharpness-aware and adversarial training."""
__version__ = "0.1.0"
