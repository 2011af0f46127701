"""PreActResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"), the CIFAR variant
used by Wong et al. ("Fast is better than free", github.com/locuslab/fast_adversarial) and by the
paper's authors: 3x3 stem without pooling, four stages of two pre-activation blocks (64, 128, 256,
512 channels), a final BN-ReLU, global average pooling and a linear head. 11,171,146 parameters for
10 classes.

One change from that code: the final pooling is adaptive (global) instead of `avg_pool2d(out, 4)`,
which is the same operation at 32x32 inputs (the last stage is 4x4) and also accepts 64x64 Tiny
ImageNet inputs (8x8), where a fixed 4x4 window would leave a 2x2 map and a head of the wrong size.
Parameter names match the reference code (`conv1`, `layerK.J.bn1`, ..., `bn`, `linear`), after the
leading `normalize` layer.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from suite.models.layers import Normalize


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != self.expansion * planes:
            # the projection shortcut takes the pre-activated input, as in the reference code
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, mean=None, std=None):
        super().__init__()
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.bn = nn.BatchNorm2d(512 * PreActBlock.expansion)
        self.linear = nn.Linear(512 * PreActBlock.expansion, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes * PreActBlock.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def preact_resnet18(num_classes: int = 10, mean=None, std=None) -> PreActResNet:
    """PreActResNet-18; pass the dataset's mean/std to put `Normalize` first (inputs in [0, 1])."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, mean=mean, std=std)
