"""Wide residual networks (Zagoruyko & Komodakis 2016), the CIFAR variant the robustness literature
uses (Madry et al.'s and TRADES' `WideResNet`, RobustBench's WRN-28-10): a 3x3 stem with 16
channels, three groups of (depth - 4) / 6 pre-activation blocks with 16k, 32k, 64k channels (k the
widening factor), BN-ReLU, global average pooling and a linear head. WRN-28-10 has 36,479,194
parameters for 10 classes.

Parameter names (`conv1`, `block1.layer.0.bn1`, ..., `convShortcut`, `bn1`, `fc`, after the leading
`normalize`) follow that code, so its checkpoints load with a `normalize.` prefix added. The
initialisation is the reference one (He normal, fan-out, for convolutions).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from suite.models.layers import Normalize


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (None if self.equal_in_out else
                             nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False))

    def forward(self, x):
        act = F.relu(self.bn1(x))
        # where the width changes, the shortcut (a 1x1 conv) also takes the pre-activated input
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
            for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, dropout: float = 0.0,
                 mean=None, std=None):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, dropout)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, dropout)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wrn_28_10(num_classes: int = 10, dropout: float = 0.0, mean=None, std=None) -> WideResNet:
    return WideResNet(28, 10, num_classes=num_classes, dropout=dropout, mean=mean, std=std)
