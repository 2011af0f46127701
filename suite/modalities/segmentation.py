"""Semantic segmentation: per-pixel classification of images in [0, 1], scored by mIoU.

Batches are `(x, mask)`: `x` float images in [0, 1], NCHW (uint8 images, kept in memory 4x smaller,
become float / 255 in `to_device`, as for image classification), `mask` the class index of every
pixel, (N, H, W), with `IGNORE_INDEX` (255) for pixels that carry no label (VOC's object
boundaries, CamVid's void, Stanford Background's "unknown"); uint8 masks become int64 in
`to_device`. The model returns logits (N, K, H, W) at the input resolution. The attack surface is the
image, exactly as for classification.

Loss: per-pixel cross-entropy over valid pixels. reduction="mean" averages over every valid pixel of
the batch (the training loss); "none" gives one number per *image*, the mean over that image's valid
pixels (0 for an image without any), and "sum" adds those per-image means, so that the PGD engine,
which maximizes reduction="sum", gives every image the gradient of its own mean loss whatever the
other images in the batch are.

Evaluation: every image is attacked (there is no "already wrong" image to skip); the per-image
statistic is its confusion matrix (rows = true class, columns = predicted, ignored pixels left out),
its score is its pixel accuracy (the worst case over an attack suite takes, per image, the attack
that lowers it most), and the metrics come from the confusion matrix summed over images:

- IoU_c = TP_c / (TP_c + FP_c + FN_c). A class that appears neither in the ground truth nor in the
  predictions of the evaluated images has no IoU: `per_class_iou` holds None for it (JSON null, not
  NaN, so records stay valid JSON), and mIoU averages over the classes that appear in the ground
  truth or in the predictions (the mmsegmentation / VOC devkit convention: nanmean of the per-class
  IoU). A class predicted but absent from the truth counts with IoU 0.
- pixel_accuracy = sum_c TP_c / number of valid pixels.
- mean_class_accuracy = mean over classes present in the ground truth of TP_c / (pixels of class c).

Heavy libraries are imported inside the methods: registering modules must not import torch.
"""
from __future__ import annotations

from typing import Any

from suite.config import IGNORE_INDEX  # the value of unlabelled pixels in every mask this adapter sees
from suite.modalities.base import Adapter
from suite.registry import MODALITIES


def confusion_matrices(pred, mask, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """Per-image confusion matrices (N, K, K) int64 of predicted labels `pred` (N, H, W) against the
    true labels `mask` (N, H, W); rows are true classes, columns predicted; pixels whose true label is
    `ignore_index` are left out. One bincount over the whole batch."""
    import torch

    n, k = pred.shape[0], num_classes
    valid = mask != ignore_index
    if bool(((mask < 0) | (mask >= k))[valid].any()):
        bad = mask[valid & ((mask < 0) | (mask >= k))][0].item()
        raise ValueError(f"mask holds label {bad}, outside 0..{k - 1} and not the ignore index {ignore_index}")
    image = torch.arange(n, device=pred.device).view(n, 1, 1).expand_as(mask)
    flat = (image * k * k + mask.long() * k + pred.long())[valid]
    return torch.bincount(flat, minlength=n * k * k).view(n, k, k)


def metrics_from_confusion(cm) -> dict[str, Any]:
    """mIoU, pixel accuracy, mean class accuracy (percent) and per-class IoU of one summed (K, K)
    confusion matrix; see the module docstring for the conventions on absent classes."""
    cm = cm.double()
    tp = cm.diagonal()
    truth = cm.sum(dim=1)   # pixels of each true class
    predicted = cm.sum(dim=0)
    union = truth + predicted - tp
    total = cm.sum().item()
    present = union > 0
    iou = tp / union.clamp(min=1)
    in_truth = truth > 0
    nan = float("nan")
    return {
        "mIoU": 100.0 * iou[present].mean().item() if present.any() else nan,
        "pixel_accuracy": 100.0 * tp.sum().item() / total if total else nan,
        "mean_class_accuracy": 100.0 * (tp[in_truth] / truth[in_truth]).mean().item() if in_truth.any() else nan,
        "per_class_iou": [100.0 * v if p else None for v, p in zip(iou.tolist(), present.tolist())],
    }


@MODALITIES.register("segmentation")
class Segmentation(Adapter):
    metric = "mIoU"
    bounds = (0.0, 1.0)
    ignore_index = IGNORE_INDEX
    attack_only_correct = False  # every image is attacked; its pixel accuracy can always drop
    outcome_kind = "class_counts"  # per image and class: true positives, true pixels, predicted pixels

    # --- batches -------------------------------------------------------------------------------
    def to_device(self, batch, device):
        import torch

        x, mask = batch
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x, mask.to(device, non_blocking=True).long()

    def batch_size(self, batch):
        return int(batch[1].shape[0])

    def subset(self, batch, index):
        x, mask = batch
        return x[index], mask[index]

    # --- model, loss, metric -------------------------------------------------------------------
    def forward(self, model, batch):
        return model(batch[0])

    def pixel_loss(self, output, mask):
        """Per-pixel cross-entropy (N, H, W), 0 at ignored pixels, and the valid-pixel mask."""
        import torch
        import torch.nn.functional as F

        if output.dtype in (torch.float16, torch.bfloat16):  # AMP logits are upcast
            output = output.float()
        if output.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"logits {tuple(output.shape)} and mask {tuple(mask.shape)} differ in size: "
                             "the model must return logits at the input resolution")
        per_pixel = F.cross_entropy(output, mask, ignore_index=self.ignore_index, reduction="none")
        return per_pixel, mask != self.ignore_index

    def loss(self, output, batch, reduction="mean"):
        per_pixel, valid = self.pixel_loss(output, batch[1])
        if reduction == "mean":
            # over every valid pixel of the batch; a batch without any gives 0 (not NaN) with a graph
            return per_pixel.sum() / valid.sum().clamp(min=1)
        per_image = per_pixel.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
        if reduction == "none":
            return per_image
        if reduction == "sum":
            return per_image.sum()
        raise ValueError(f"unknown reduction {reduction!r}")

    def correct(self, output, batch):
        """Per-image pixel accuracy (float, N): a training statistic (methods average it)."""
        return self.example_score(self.example_stats(output, batch))

    # --- attack surface: the pixels, as for classification ------------------------------------
    def surface(self, model, batch):
        return batch[0].detach()

    def forward_surface(self, model, batch, x):
        return model(x)

    # --- evaluation ----------------------------------------------------------------------------
    def example_stats(self, output, batch):
        """Per-image confusion matrix (N, K, K) int64, K = the number of logit channels."""
        return confusion_matrices(output.argmax(dim=1), batch[1], output.shape[1], self.ignore_index)

    def predictions(self, output):
        return None  # the per-class predicted pixel counts are part of every image's outcome

    def outcome_array(self, stats):
        """(N, K, 3) int64: per image and class, true positives, ground-truth pixels, predicted pixels
        (the diagonal, row sums and column sums of its confusion matrix)."""
        import torch

        return torch.stack([stats.diagonal(dim1=-2, dim2=-1), stats.sum(dim=-1), stats.sum(dim=-2)],
                           dim=-1).cpu().numpy().astype("int64")

    def example_score(self, stats):
        """Per-image pixel accuracy in [0, 1]; an image without a valid pixel scores 1.0, so that it
        never counts as any attack's worst case."""
        import torch

        tp = stats.diagonal(dim1=-2, dim2=-1).sum(-1).double()
        total = stats.sum(dim=(-2, -1)).double()
        return torch.where(total > 0, tp / total.clamp(min=1), torch.ones_like(total)).float()

    def summarize(self, stats):
        """Metrics of a set of images from their stacked (N, K, K) confusion matrices."""
        import torch

        k = stats.shape[-1] if stats.dim() == 3 else (self.task.num_classes if self.task is not None else 0)
        summed = stats.sum(dim=0) if len(stats) else torch.zeros(k, k, dtype=torch.int64)
        return metrics_from_confusion(summed)
