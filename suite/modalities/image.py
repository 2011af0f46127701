"""Classification on dense inputs: images (pixels in [0, 1], NCHW) and feature vectors.

Batches are `(x, y)` tensors. The model takes inputs in [0, 1] and normalizes inside itself (see
`suite.models.layers.Normalize`), so attacks and AT all work in one space: the one the data lives
in. Images may be kept in memory as uint8 (4x smaller than float32); they become [0, 1] floats when
a batch moves to the device.
"""
from __future__ import annotations

from suite.modalities.base import Adapter
from suite.registry import MODALITIES


@MODALITIES.register("image")
class ImageClassification(Adapter):
    bounds = (0.0, 1.0)

    def to_device(self, batch, device):
        import torch

        x, y = batch
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:  # images kept in memory as uint8 become [0, 1] here
            x = x.float().div_(255.0)
        return x, y.to(device, non_blocking=True)

    def batch_size(self, batch):
        return int(batch[1].shape[0])

    def subset(self, batch, index):
        x, y = batch
        return x[index], y[index]

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, output, batch, reduction="mean"):
        import torch
        import torch.nn.functional as F

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

    bounds = None

    def surface_mask(self, batch):
        import torch

        mask = getattr(self.task, "perturbable", None) if self.task is not None else None
        if mask is None:
            return None
        return torch.as_tensor(mask, dtype=batch[0].dtype, device=batch[0].device).view(1, -1)
