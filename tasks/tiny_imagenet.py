"""`tinyimagenet_prn18`: Tiny ImageNet (200 classes, 64x64), PreActResNet-18 (the ICML version's
larger-scale image task).

Data: `<data-dir>/tiny-imagenet-200/` (or `<data-dir>` itself) in the official layout: `wnids.txt`,
`train/<wnid>/images/*.JPEG` (500 per class) and `val/images/*.JPEG` with `val/val_annotations.txt`.
The labelled val split is the test split (the official test split has no labels). Class index =
position of the wnid in sorted wnids.txt (what torchvision's ImageFolder gives `train/`); val images
in the annotation file's order; grayscale images converted to RGB; decoded once and cached (see
suite/data/images.py). With SUITE_DOWNLOAD=1 the official zip is downloaded (MD5-checked).
A copy without `train/` (such as the val-only copy in ../shared/data) stops with one line saying so.

Recipe: the paper's image recipe (100 epochs, batch 128, SGD 0.1, momentum 0.9, weight decay 5e-4,
x0.1 at 75% and 90%), random crop of the 4-pixel zero-padded 64x64 image and horizontal flip.
PreActResNet-18 with global average pooling (an 8x8 map at 64x64 input), 200 outputs; pixels are
normalized inside the model with Tiny ImageNet's training-set statistics. Pixels stay on the
[0, 1] scale everywhere (the authors' code left Tiny ImageNet on 0-255 for its attacks).
"""
from __future__ import annotations

import sys

from suite.config import DataBundle, Task, TaskOptions
from suite.errors import UserError
from suite.registry import TASKS
from tasks.cifar import EVALUATION, HEADLINE_PGD, METHOD_DEFAULTS, PAPER_RECIPE, PAPER_ROWS


def build_data(options: TaskOptions) -> DataBundle:
    from suite.data.augment import CropFlip
    from suite.data.images import as_tensor_dataset, load_tiny_imagenet

    if options.data_dir is None:
        raise UserError("tinyimagenet_prn18 needs a data directory: pass --data-dir (or set SUITE_DATA_DIR)")
    s = load_tiny_imagenet(options.data_dir, ("train", "val"), log=lambda m: print(m, file=sys.stdout, flush=True))
    return DataBundle(
        train=as_tensor_dataset(*s.splits["train"]),
        test=as_tensor_dataset(*s.splits["val"]),
        train_transform=CropFlip(padding=4),
        fingerprint=s.fingerprint,
    )


def build_model(options: TaskOptions):
    from suite.models.layers import TINY_IMAGENET_MEAN, TINY_IMAGENET_STD
    from suite.models.preact_resnet import preact_resnet18

    if options.model is not None:
        raise UserError("task tinyimagenet_prn18 has a fixed architecture; --model is not an option here")
    return preact_resnet18(200, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)


TASKS.register("tinyimagenet_prn18", Task(
    name="tinyimagenet_prn18", modality="image", version="1", num_classes=200,
    description=("Tiny ImageNet (200 classes, 64x64; val split as test), PreActResNet-18, the paper's "
                 "recipe; data: <data-dir>/tiny-imagenet-200 (official layout, class = sorted wnid index)"),
    build_data=build_data, build_model=build_model,
    recipe=PAPER_RECIPE, method_defaults=METHOD_DEFAULTS, evaluation=EVALUATION, headline=(HEADLINE_PGD,),
    sweeps={"tinyimagenet_main": PAPER_ROWS},
    needs_data_dir=True,
))
