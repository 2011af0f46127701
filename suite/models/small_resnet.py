"""A small residual network for CIFAR-10 that trains on one CPU core (the `cifar10_cpu` task).

The layout is the DAWNBench "ResNet-9" of Page (2018, "How to train your ResNet") at a fraction of
its width: a 3x3 stem, then three stages of [3x3 conv, 2x2 max pool, BN, ReLU], the first and last
followed by a residual block of two [3x3 conv, BN, ReLU] (identity shortcut), then global max
pooling and a linear layer whose logits are scaled by 1/8 (Page's trick: it keeps the initial
logits small so SGD at a high learning rate starts stably).

CPU-minded choices (measured on one core of a Xeon with AVX-512, see tasks/cifar.py):
- pooling right after the convolution, before BN and ReLU (as Keller Jordan's airbench does), so
  their memory-bound work runs on 4x fewer pixels; BN statistics are then those of the pooled map,
  a slightly different network from conv-BN-ReLU-pool, not a worse one;
- channels-last memory format (`channels_last=True`) made one-core fp32 training steps ~1.4x faster
  at these widths; the input is converted inside `forward`, so callers pass ordinary NCHW tensors.
BatchNorm is kept on purpose: the suite's SAM/AT BatchNorm rules are tested with it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from suite.models.layers import CIFAR10_MEAN, CIFAR10_STD, Normalize


class ConvPoolBN(nn.Module):
    """3x3 conv (no bias) -> optional 2x2 max pool -> BN -> ReLU."""

    def __init__(self, c_in: int, c_out: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.pool = pool
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = self.conv(x)
        if self.pool:
            x = F.max_pool2d(x, 2)
        return F.relu(self.bn(x))


class Residual(nn.Module):
    """x + f(x), f = two ConvPoolBN without pooling."""

    def __init__(self, c: int):
        super().__init__()
        self.a = ConvPoolBN(c, c)
        self.b = ConvPoolBN(c, c)

    def forward(self, x):
        return x + self.b(self.a(x))


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 10, stem: int = 16, widths=(32, 64, 128),
                 residual=(True, False, True), logit_scale: float = 0.125, channels_last: bool = True,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = ConvPoolBN(3, stem)
        stages, c = [], stem
        for w, res in zip(widths, residual):
            stages.append(ConvPoolBN(c, w, pool=True))
            if res:
                stages.append(Residual(w))
            c = w
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(c, num_classes, bias=False)
        self.logit_scale = logit_scale
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x):
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stages(self.stem(x))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.linear(x) * self.logit_scale


def small_resnet(num_classes: int = 10, **kwargs) -> SmallResNet:
    return SmallResNet(num_classes=num_classes, **kwargs)
