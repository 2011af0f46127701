"""Model architectures, one module per family. Tasks import them inside their `build_model`, so
listing tasks (`suite ls`) never imports torch. Image models take inputs in [0, 1] and normalize
inside themselves (`suite.models.layers.Normalize` as the first layer)."""
