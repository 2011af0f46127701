"""`voc` and `voc_aug`: PASCAL VOC 2012 semantic segmentation (21 classes), DeepLabV3-MobileNetV2.

Data: the official devkit in `<data-dir>/VOCdevkit/VOC2012/`: JPEGImages/ID.jpg, SegmentationClass/ID.png
(palette PNGs; the palette indices are the labels, 255 = object boundary, ignored) and
ImageSets/Segmentation/{train,val}.txt. `voc` trains on the 1,464 `train` images; `voc_aug` on the
10,582 images of the SBD-augmented list in its common layout (SegmentationClassAug/ID.png index PNGs
listed by ImageSets/Segmentation/train_aug.txt, which must not overlap `val`). Both evaluate on the
1,449 `val` images at full resolution, one image at a time (they differ in size; the model pads each
to a multiple of 16 inside itself).

Images are decoded on access (the augmented set decoded would take ~6 GB); set `--set num_workers=N`
to decode in parallel. Training augmentation, per sample in the dataset (images differ in size):
random scale 0.5-2.0, crop 513 (padding images with 0 and masks with ignore), horizontal flip,
applied to image and mask together, with torch's global RNG (seeded and checkpointed by the trainer).

Recipe (the paper's segmentation recipe): SGD lr 0.01, momentum 0.9, weight decay 1e-4, poly schedule
(power 0.9), batch 16, ~30k iterations (voc: 326 epochs of 92 steps; voc_aug: 45 epochs of 662).
A GPU task. `--model` as for `camvid` (mobilenet_v2, resnet50, ...:scratch, or a PATH to encoder weights).
"""
from __future__ import annotations

from suite.config import DataBundle, Task, TaskOptions, TrainConfig
from suite.data.labels import VOC_CLASSES
from suite.registry import TASKS

CROP = (513, 513)
SCALE = (0.5, 2.0)
EVALUATION = (
    "pgd:norm=linf,eps=1/255,steps=10",
    "pgd:norm=linf,eps=2/255,steps=10",
    "pgd:norm=linf,eps=4/255,steps=10",
    "pgd:norm=linf,eps=8/255,steps=10",
    "pgd:norm=l2,eps=0.25,steps=10",
    "pgd:norm=l2,eps=0.5,steps=10",
    "pgd:norm=l2,eps=1.0,steps=10",
    "segpgd:norm=linf,eps=2/255,steps=10",
)
METHOD_DEFAULTS = {
    "sam": {"rho": 0.05},
    "asam": {"rho": 0.5},
    "esam": {"rho": 0.05},
    # the authors' AT budget for linf 2/255: 5 steps of 1/255
    "at": {"norm": "linf", "eps": 2 / 255, "steps": 5, "step_size": 1 / 255},
    "fast_at": {"norm": "linf", "eps": 2 / 255},
}


def _builder(train_list: str):
    def build_data(options: TaskOptions) -> DataBundle:
        from suite.data.segmentation import (
            FilePairs,
            JointAugment,
            SegmentationDataset,
            files_fingerprint,
            find_voc,
            pad_collate,
            read_voc_pair,
            voc_ids,
            voc_pairs,
        )
        from suite.errors import UserError

        root = find_voc(options.data_dir)
        train, test = voc_pairs(root, train_list), voc_pairs(root, "val")  # every file present
        if train_list != "train":
            overlap = set(voc_ids(root, train_list)) & set(voc_ids(root, "val"))
            if overlap:
                raise UserError(f"voc: {train_list}.txt lists {len(overlap)} val images (e.g. {min(overlap)}); "
                                "the training list must not overlap val")
        augment = JointAugment(crop=(options.crop, options.crop) if options.crop else CROP, scale=SCALE, flip=True)
        return DataBundle(
            train=SegmentationDataset(load=FilePairs(train, read_voc_pair), augment=augment),
            test=SegmentationDataset(load=FilePairs(test, read_voc_pair)),
            collate=pad_collate,
            fingerprint=files_fingerprint(train + test),
        )

    return build_data


def build_model(options: TaskOptions):
    from suite.models.deeplab import build_deeplabv3

    return build_deeplabv3(21, options.model)


def segmentation_recipe(epochs: int, *, batch_size: int = 16, eval_batch_size: int = 1) -> TrainConfig:
    """The paper's segmentation recipe (DeepLab's): SGD lr 0.01, momentum 0.9, weight decay 1e-4, poly
    schedule with power 0.9; subsets drawn at random (masks, not one label per image). The segmentation
    tasks differ only in epochs and batch sizes."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=0.01, momentum=0.9,
                       weight_decay=1e-4, schedule="poly", poly_power=0.9,
                       train_subset="random", eval_subset="random", eval_batch_size=eval_batch_size)


for _name, _list, _epochs, _what in (("voc", "train", 326, "1,464 train images"),
                                     ("voc_aug", "train_aug", 45, "10,582 SBD train_aug images")):
    TASKS.register(_name, Task(
        name=_name,
        modality="segmentation",
        version="1",
        num_classes=21,
        description=f"PASCAL VOC 2012 ({_what}; val 1,449), DeepLabV3-MobileNetV2 (OS 16), crop 513; GPU",
        build_data=_builder(_list),
        build_model=build_model,
        recipe=segmentation_recipe(_epochs),
        method_defaults=METHOD_DEFAULTS,
        evaluation=EVALUATION,
        headline=("worst_case",),
        sweeps={f"{_name}_main": (("st", {}), ("sam", {"rho": 0.05}), ("sam", {"rho": 0.1}),
                                  ("at", {"norm": "linf", "eps": 2 / 255, "steps": 5, "step_size": 1 / 255}))},
        default_model="mobilenet_v2",
        needs_data_dir=True,
        class_names=VOC_CLASSES,
    ))
