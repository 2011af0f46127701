"""Tiny models, data and method-step helpers shared by several test files.

- `fit`: full-batch Adam on a loss, the few-second training behind every "tiny trained model" fixture.
- `TinySeg`, `colour_data`: a per-pixel classifier and blocks of colour it learns in a second
  (tests/test_segmentation.py, tests/test_contracts.py).
- `TinyText`: the `TextClassifier` contract (suite.models.text) at its smallest, for the text adapter
  without transformers (tests/test_contracts.py).
- `ADAPTER`, `data`, `sgd`, `one_step`, `assert_params_close`, `RecordingAdapter`,
  `step_and_check_bn_stats`: one training step of a method on float64 feature vectors through the
  image adapter, for the checks against hand computations and the BatchNorm rule
  (tests/test_methods.py, tests/test_robust_methods.py). They use the suite's image adapter and the
  methods' `train_step`, nothing of suite.methods' internals; `reference` holds the float64 models.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from reference import ATOL, RTOL, bn_buffers, bn_mlp, params_of
from torch import nn

from suite.modalities.image import ImageClassification

IGNORE = 255  # the segmentation adapter's ignore index (suite.modalities.segmentation.IGNORE_INDEX)


def fit(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], steps: int, lr: float) -> nn.Module:
    """`steps` full-batch Adam steps on `loss_fn(model)`; returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    return model.eval()


class TinySeg(nn.Module):
    """Three convolutions with BatchNorm: enough to learn a colour -> class rule per pixel."""

    def __init__(self, k: int = 3, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, k, 1))

    def forward(self, x):
        return self.net(x)


def colour_data(n: int, seed: int, size: int = 16, block: int = 4):
    """Blocks of random colours; a pixel's class is its brightest channel, some ignored blocks."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, size // block, size // block, generator=g)
    x = small.repeat_interleave(block, 2).repeat_interleave(block, 3)
    y = x.argmax(1)
    y[:, :block, :block] = IGNORE
    return x, y


class TinyText(nn.Module):
    """What the text adapter needs of a model (suite.models.text.TextClassifier): `embed(input_ids)`,
    a forward from `input_ids` or `inputs_embeds` with an `attention_mask`, and a `tokenizer`
    attribute. Word embeddings, their mean over the real tokens, then an MLP."""

    tokenizer = None  # only TextAttack's recipes tokenize; the gradient attacks and methods do not

    def __init__(self, vocab: int = 24, dim: int = 16, classes: int = 2):
        super().__init__()
        self.words = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, classes))

    def embed(self, input_ids):
        return self.words(input_ids)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        e = self.words(input_ids) if inputs_embeds is None else inputs_embeds
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        return self.head((e * m).sum(1) / m.sum(1).clamp(min=1))


def text_batch(n: int, seed: int, length: int = 8, vocab: int = 24) -> dict:
    """Sentences of token ids as the text adapter's batches hold them (input_ids, attention_mask,
    labels, text), padded with 0 to `length`; the label is which of two "sentiment" words (3 or 4)
    the sentence holds, among filler words 5..vocab-1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    ids = torch.randint(5, vocab, (n, length), generator=g)
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    where = (torch.rand(n, generator=g) * (lengths - 1)).long() + 1
    ids[torch.arange(n), where] = 3 + labels
    ids[:, 0] = 1  # a [CLS]-like first token
    mask = (torch.arange(length).view(1, -1) < lengths.view(-1, 1)).long()
    ids = ids * mask
    text = [" ".join(f"w{t}" for t in row[:k].tolist()) for row, k in zip(ids, lengths.tolist())]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "text": text}


# --- one method step on float64 feature vectors (tests/test_methods.py, tests/test_robust_methods.py)

ADAPTER = ImageClassification()


def data(seed: int = 1, n: int = 12, d_in: int = 5, classes: int = 3, boundary: bool = False):
    """`n` float64 feature vectors uniform in [0, 1]^d_in and labels in 0..classes-1, seeded. With
    `boundary`, some coordinates are put on the box boundary (0 or 1) so that the [0, 1] clamp of an
    attack is exercised; the labels are the same either way (drawn after x, from the same generator)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d_in, generator=g, dtype=torch.float64)
    if boundary:
        x[:3, :2] = 0.0
        x[3:6, 2:] = 1.0
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def sgd(model: nn.Module, lr: float) -> torch.optim.SGD:
    """Plain SGD (no momentum, no weight decay): the update is exactly w - lr * grad."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)


def one_step(method, model: nn.Module, batch, lr: float, adapter=None) -> dict[str, torch.Tensor]:
    """One `method.train_step` with plain SGD through `adapter` (default `ADAPTER`); checks the
    returned loss is finite and returns the parameters after the step."""
    out = method.train_step(model, batch, sgd(model, lr), ADAPTER if adapter is None else adapter)
    assert math.isfinite(out["loss"])
    return params_of(model)


def assert_params_close(actual: dict, expected: dict):
    """Two {name: tensor} dicts hold the same names and agree to reference.RTOL / ATOL."""
    assert actual.keys() == expected.keys()
    for n, a in actual.items():
        torch.testing.assert_close(a, expected[n], rtol=RTOL, atol=ATOL, msg=lambda m, n=n: f"{n}: {m}")


class RecordingAdapter(ImageClassification):
    """The image adapter, keeping a record of every surface the model is run on: the surface `x`,
    whether any parameter required a gradient then, the parameters' .grad and the parameters' values."""

    def __init__(self):
        super().__init__()
        self.calls = []

    @property
    def surfaces(self) -> list[torch.Tensor]:
        return [c["x"] for c in self.calls]

    def forward_surface(self, model, batch, x):
        ps = list(model.parameters())
        self.calls.append({
            "x": x.detach().clone(),
            "param_grad_on": any(p.requires_grad for p in ps),
            "grads": [None if p.grad is None else p.grad.clone() for p in ps],
            "weights": [p.detach().clone() for p in ps],
        })
        return model(x)


@dataclass
class BNStep:
    x: torch.Tensor  # the clean batch
    adapter: Any  # the adapter the step went through (a RecordingAdapter unless one was given)
    out: dict  # what train_step returned
    before: dict[str, torch.Tensor]  # the BatchNorm buffers before the step
    after: dict[str, torch.Tensor]  # and after it


def step_and_check_bn_stats(make_method: Callable[[], Any], update_batch: Callable[[torch.Tensor, Any], torch.Tensor],
                            adapter=None, boundary: bool = False) -> BNStep:
    """The BatchNorm rule (suite.modalities.base.frozen_bn_stats): running statistics are updated once
    per step, by one pass at the current weights on one batch.

    Runs one step (plain SGD, lr 0.3) of `make_method()`, made after `torch.manual_seed(0)`, on
    `bn_mlp()` in train mode and `data(n=16, boundary=boundary)`, through `adapter` (default a fresh
    RecordingAdapter).
    Then checks the model's buffers equal those of a copy of the initial model after a single
    train-mode forward on `update_batch(x, adapter)`, that num_batches_tracked grew by one and that the
    running mean moved. Returns what the caller may check further."""
    model, (x, y) = bn_mlp(), data(n=16, boundary=boundary)
    model.train()
    reference = copy.deepcopy(model)
    before = bn_buffers(model)
    adapter = RecordingAdapter() if adapter is None else adapter
    torch.manual_seed(0)
    out = make_method().train_step(model, (x, y), sgd(model, 0.3), adapter)
    with torch.no_grad():
        reference(update_batch(x, adapter))  # the one train-mode forward at w that should count
    after, expected = bn_buffers(model), bn_buffers(reference)
    assert after.keys() == expected.keys()
    for n in after:
        assert torch.equal(after[n], expected[n]), n
    assert int(after["1.num_batches_tracked"]) == int(before["1.num_batches_tracked"]) + 1
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])
    return BNStep(x, adapter, out, before, after)
