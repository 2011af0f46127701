"""Classification on dense inputs: images (pixels in [0, 1], NCHW) and feature vectors.

Batches are `(x, y)` tensors. The model takes inputs in [0, 1] and normalizes inside itself (see
`Normalize`), so attacks and AT all work in one space: the one the data lives in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from suite.modalities.base import Adapter
from suite.registry import MODALITIES


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


@MODALITIES.register("image")
class ImageClassification(Adapter):
    name = "image"
    bounds = (0.0, 1.0)

    def to_device(self, batch, device):
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def batch_size(self, batch):
        return int(batch[1].shape[0])

    def subset(self, batch, index):
        x, y = batch
        return x[index], y[index]

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, output, batch, reduction="mean"):
        # half-precision (AMP) logits are upcast; float64 ones are kept, not rounded to float32
        if output.dtype in (torch.float16, torch.bfloat16):
            output = output.float()
        return F.cross_entropy(output, batch[1], reduction=reduction)

    def correct(self, output, batch):
        return output.argmax(dim=1) == batch[1]

    def surface(self, model, batch):
        return batch[0].detach()

    def forward_surface(self, model, batch, x):
        return model(x)


@MODALITIES.register("features")
class FeatureClassification(ImageClassification):
    """Classification of real-valued feature vectors (N, D): unbounded inputs.

    A task may restrict which features an attack may change with `perturbable` (a bool vector of
    length D), e.g. the toy model's non-robust features only.
    """

    name = "features"
    bounds = None

    def surface_mask(self, batch):
        mask = getattr(self.task, "perturbable", None) if self.task is not None else None
        if mask is None:
            return None
        return torch.as_tensor(mask, dtype=batch[0].dtype, device=batch[0].device).view(1, -1)
