"""The modality adapter contract: how a batch looks, its loss and metric, and its attack surface.

Methods and attacks never look inside a batch; they go through an adapter. The *attack surface* is
the tensor that adversarial training and gradient attacks perturb: pixels in [0, 1] for images,
input embeddings for text. `surface()` returns it (detached), `forward_surface()` runs the model
with a perturbed surface in place of the clean one, `bounds` is the box the surface must stay in
(None if unbounded) and `surface_mask()` says which coordinates may be perturbed (None = all).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used, so that listing the registries stays fast
    import torch
    from torch import nn


class Adapter:
    name: str = "base"
    metric: str = "accuracy"  # the headline key of `summarize` (classification: the mean of `correct`)
    bounds: tuple[float, float] | None = None

    def __init__(self, task: Any = None):
        self.task = task

    # --- batches -------------------------------------------------------------------------------
    def to_device(self, batch: Any, device: torch.device | str) -> Any:
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        raise NotImplementedError

    def subset(self, batch: Any, index: torch.Tensor) -> Any:
        """The examples of `batch` at `index` (a 1-D LongTensor), as a batch."""
        raise NotImplementedError

    # --- model, loss, metric -------------------------------------------------------------------
    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, output: torch.Tensor, batch: Any, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError

    def correct(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """How right the predictions are, one value per example: a tensor of shape (N,).

        - An adapter with `attack_only_correct` (classification: image, features, text) returns a
          bool tensor: is the prediction right? It is a verdict: by default it is the adapter's
          `example_stats` (evaluation attacks only the examples it marks True), and attacks read
          `~correct` as their per-example success.
        - An adapter without it returns floats in [0, 1], on purpose: segmentation returns each
          image's pixel accuracy over its valid (not ignored) pixels, 1.0 for an image without any
          (`example_score(example_stats(...))`), since no image is simply right or wrong. Such an
          adapter overrides `example_stats`, so evaluation does not read `correct`, and the attacks
          that need a verdict (`~correct`: C&W, Pixle, StAdv, PGD's restarts) do not run on it
          (they declare only classification modalities, or check `attack_only_correct`).

        Either way `correct(...).float().mean()` is the accuracy the methods report as "acc" while
        they train (segmentation: the mean per-image pixel accuracy, not the pixel accuracy of the
        batch's pixels pooled, nor mIoU).
        """
        raise NotImplementedError

    # --- attack surface ------------------------------------------------------------------------
    def surface(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward_surface(self, model: nn.Module, batch: Any, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def surface_mask(self, batch: Any) -> torch.Tensor | None:
        return None

    # --- evaluation ----------------------------------------------------------------------------
    # Evaluation keeps per-example statistics for the clean pass and for every attack, and takes the
    # worst case per example. The defaults are classification's: the statistic is "correct", the
    # metric is accuracy, and attacks run only on examples the model classifies correctly (the
    # others are wrong already). Segmentation overrides all four (a confusion matrix per image,
    # pixel accuracy as the per-image score, mIoU and friends as metrics, every image attacked).
    attack_only_correct: bool = True
    outcome_kind: str = "correct"  # how records store per-example outcomes (suite.outcomes)

    def example_stats(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """Per-example statistics, first dimension N (classification: bool 'correct')."""
        return self.correct(output, batch)

    def predictions(self, output: torch.Tensor) -> torch.Tensor | None:
        """The predicted class of every example (kept for the record's prediction histogram); None
        where the outcomes hold the predictions already (segmentation's per-class pixel counts)."""
        return output.argmax(dim=-1)

    def outcome_array(self, stats: torch.Tensor):
        """Per-example statistics as the numpy array records store (suite.outcomes, `outcome_kind`)."""
        return stats.cpu().numpy().astype(bool)

    def example_score(self, stats: torch.Tensor) -> torch.Tensor:
        """One float per example; the worst case over attacks is, per example, the lowest score."""
        return stats.float()

    def summarize(self, stats: torch.Tensor) -> dict[str, Any]:
        """Metrics (percent) of a set of examples from their stacked statistics; the key `self.metric`
        is the headline number."""
        return {self.metric: 100.0 * stats.float().mean().item() if len(stats) else float("nan")}


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    from torch import nn
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class frozen_bn_stats:
    """Forward passes inside this context use batch statistics (train mode) but leave BatchNorm
    running statistics untouched.

    The suite's documented choice: running statistics are updated exactly once per training step,
    by the pass at the current weights on the clean (ST, SAM) or final adversarial (AT) batch. The
    extra passes of SAM (at perturbed weights) and of the AT inner attack must not move them.
    """

    def __init__(self, model: nn.Module):
        self.bns = batch_norms(model)

    def __enter__(self):
        self.saved = [(bn, bn.momentum, bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None)
                      for bn in self.bns]
        for bn in self.bns:
            bn.momentum = 0.0  # running = (1 - 0) * running + 0 * batch_stat
        return self

    def __exit__(self, *exc):
        for bn, momentum, nbt in self.saved:
            bn.momentum = momentum
            if nbt is not None:
                bn.num_batches_tracked.copy_(nbt)
        return False
