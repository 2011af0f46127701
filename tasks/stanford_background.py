"""`stanford_background`: Stanford Background (Gould et al., ICCV 2009), 8 classes, DeepLabV3-MobileNetV2.

The paper's segmentation task. Data: the official `iccv09Data/` folder in `<data-dir>` (or
`<data-dir>/stanford_background/`): images/ID.jpg (715 outdoor scenes of about 320x240) and
labels/ID.regions.txt (one integer per pixel: 0 sky, 1 tree, 2 road, 3 grass, 4 water, 5 building,
6 mountain, 7 foreground object, -1 unknown -> ignored).

The dataset has no official split. This one is fixed and documented: file names sorted, then a
numpy RandomState(0) permutation; its first 572 images (80%) train, the other 143 test (the paper's
code split by directory listing order, which differs between machines). Images (165 MB as uint8) are
kept in memory.

Recipe (the paper's): SGD lr 0.01, momentum 0.9, weight decay 1e-4, poly schedule (power 0.9),
batch 16, 30k iterations (834 epochs of 36 steps), crop 240 after a random scale 0.5-2.0 and with a
horizontal flip, image and mask together, per sample (images differ in size; torch's global RNG,
seeded and checkpointed by the trainer). Evaluated on the 143 test images at full size, one at a
time. A GPU task. `--model` as for `camvid`.
"""
from __future__ import annotations

from suite.config import DataBundle, Task, TaskOptions
from suite.data.labels import STANFORD_CLASSES
from suite.registry import TASKS
from tasks.voc import EVALUATION, METHOD_DEFAULTS, segmentation_recipe  # the paper's protocol, as on VOC

CROP = (240, 240)
SCALE = (0.5, 2.0)
TRAIN_FRACTION = 0.8
SPLIT_SEED = 0
VAL_FRACTION = 0.15  # of the training images, held out for choosing a recipe (--set eval_split=val)


def build_data(options: TaskOptions) -> DataBundle:
    from suite.data.segmentation import (
        JointAugment,
        SegmentationDataset,
        array_fingerprint,
        find_stanford,
        holdout,
        load_stanford,
        pad_collate,
        stanford_pairs,
        stanford_split,
    )

    pairs = stanford_pairs(find_stanford(options.data_dir))  # every label file present, before decoding
    images, masks = load_stanford(pairs)
    train, test = stanford_split(len(pairs), TRAIN_FRACTION, SPLIT_SEED)
    fit, val = holdout(train, VAL_FRACTION, SPLIT_SEED)
    pick = lambda seq, idx: [seq[i] for i in idx]
    augment = JointAugment(crop=(options.crop, options.crop) if options.crop else CROP, scale=SCALE, flip=True)
    return DataBundle(
        train=SegmentationDataset(pick(images, train), pick(masks, train), augment=augment),
        test=SegmentationDataset(pick(images, test), pick(masks, test)),
        val=SegmentationDataset(pick(images, val), pick(masks, val)),
        train_without_val=SegmentationDataset(pick(images, fit), pick(masks, fit), augment=augment),
        collate=pad_collate,
        fingerprint=array_fingerprint(*images, *masks, train),
    )


def build_model(options: TaskOptions):
    from suite.models.deeplab import build_deeplabv3

    return build_deeplabv3(8, options.model)


TASKS.register("stanford_background", Task(
    name="stanford_background",
    modality="segmentation",
    version="1",
    num_classes=8,
    description=("Stanford Background (572/143 seeded split, images about 320x240), DeepLabV3-MobileNetV2 (OS 16); "
                 "the default recipe is the paper's (crop 240, for a GPU), grids/stanford_cpu.toml the CPU one"),
    build_data=build_data,
    build_model=build_model,
    recipe=segmentation_recipe(834),
    method_defaults=METHOD_DEFAULTS,
    evaluation=EVALUATION,
    headline=("worst_case",),
    sweeps={
        "stanford_main": (("st", {}), ("sam", {"rho": 0.05}), ("sam", {"rho": 0.1}), ("sam", {"rho": 0.2}),
                          ("at", {"norm": "linf", "eps": 1 / 255, "steps": 5, "step_size": 0.5 / 255}),
                          ("at", {"norm": "linf", "eps": 2 / 255, "steps": 5, "step_size": 1 / 255})),
    },
    default_model="mobilenet_v2",
    needs_data_dir=True,
    class_names=STANFORD_CLASSES,
))
