"""A small vision transformer for 32x32 images, built by timm (no pretrained weights, no hub access).

DeiT-tiny dimensions (embedding 192, depth 12, 3 heads, MLP ratio 4; timm's `vit_tiny_patch16_224`
with a new input size) on 32x32 inputs. The paper (ICML version) reports a ViT on CIFAR without
giving its shape, so the shape here is a choice:

- patch 4 (default): 8x8 = 64 patches + the class token. About 0.36 GMACs per image, below
  PreActResNet-18's 0.56, and the patch grid most from-scratch CIFAR ViTs use. 5,362,762 parameters
  for 10 classes.
- patch 2: 16x16 = 256 patches, about 1.7 GMACs per image (attention is quadratic in the number of
  tokens): measured 4.6x slower per step than patch 4 on a CPU, for a finer grid. 5,392,714
  parameters for 10 classes (only the patch embedding and the position table grow).

The pixel statistics are timm's for this model (mean = std = 0.5), applied by `Normalize` first.
"""
from __future__ import annotations

from torch import nn

from suite.models.layers import Normalize

PATCH_SIZES = (2, 4)


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, patch_size: int = 4, img_size: int = 32,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        super().__init__()
        import timm

        if img_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide image size {img_size}")
        self.normalize = Normalize(mean, std)
        self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size,
                                     patch_size=patch_size, num_classes=num_classes)

    def forward(self, x):
        return self.vit(self.normalize(x))


def vit_tiny(num_classes: int = 10, patch_size: int = 4, img_size: int = 32) -> ViT:
    return ViT(num_classes=num_classes, patch_size=patch_size, img_size=img_size)
