"""The digits task's small CNN (8x8 one-channel images)."""
from __future__ import annotations

from torch import nn

from suite.models.layers import Normalize


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; BatchNorm so the SAM/AT BatchNorm rules are exercised."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.normalize = Normalize(mean=[0.30], std=[0.40])
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(self.normalize(x)).flatten(1))
