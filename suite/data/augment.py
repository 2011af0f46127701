"""Batch augmentation on the device: the CIFAR recipe's random crop with zero padding and random
horizontal flip (torchvision's RandomCrop(32, padding=4) then RandomHorizontalFlip(), as in the
paper's code), applied to a whole batch at once.

The trainer calls `transform(batch, generator)` on each training batch after it is on the device,
with a generator seeded per (seed, epoch), so augmentation is reproducible and resumable. The
padding is zeros in [0, 1] pixel space (black), which is what torchvision pads with before
normalization.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CropFlip:
    """Random crop of the zero-padded image (every offset in 0..2*padding equally likely, per image)
    and a horizontal flip with probability `flip_p`, all images of a batch at once."""
    padding: int = 4
    flip_p: float = 0.5

    def __call__(self, batch, generator):
        import torch
        import torch.nn.functional as F

        x, y = batch
        n, c, h, w = x.shape
        p = self.padding
        dev = generator.device
        # draws, in a fixed order: row offsets, column offsets, flips
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev).to(x.device)
        flip = (torch.rand(n, generator=generator, device=dev) < self.flip_p).to(x.device)
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = dy[:, None] + torch.arange(h, device=x.device)               # n, h
        cols = torch.arange(w, device=x.device).expand(n, w)
        cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # n, w (reversed if flipped)
        # advanced indexing on (batch, rows, cols) around the channel slice gives (n, h, w, c)
        out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous(), y


crop_flip = CropFlip()
